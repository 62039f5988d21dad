"""Run a step that may crash the process (converter, XNNPACK) in a child.

The TFLite converter and LiteRT's delegates are C++ that can abort or
segfault on inputs no check foresaw. `run_contained` runs such a step in a
spawned child process: a signal there becomes a `CliError` with the exit
code the caller chose, and the user's shell (or notebook) survives. The
child's Python `sys.stderr` (progress bar, warnings) is forwarded to the
parent's; its native stderr (TensorFlow logs) goes to a file whose last
line is quoted when the child dies.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import tempfile
import traceback
from typing import Any

from tfaccel.cli._common import CliError, first_line


class _PipeStream:
    """A write-only text stream that sends what it gets to the parent."""

    def __init__(self, conn: Any):
        self._conn = conn

    def write(self, text: str) -> int:
        self._conn.send(("stderr", text))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _child(target: str, args: tuple, conn: Any) -> None:
    sys.stderr = _PipeStream(conn)
    try:
        module, name = target.split(":")
        result = getattr(importlib.import_module(module), name)(*args)
        conn.send(("result", result))
    except CliError as e:
        conn.send(("error", e))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        conn.send(("exception", f"{type(e).__name__}: {first_line(e)}\n{detail}"))
    finally:
        conn.close()


def _start_logging_to(process: Any, log_path: str) -> None:
    """Starts `process` with its file descriptor 2 on `log_path`.

    The child inherits fd 2 when it starts, before it imports anything, so
    TensorFlow's start-up logs land in the file from its first line.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    log = os.open(log_path, os.O_WRONLY)
    try:
        os.dup2(log, 2)
        process.start()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)


def _last_native_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return f" (last native message: {lines[-1][:300]})" if lines else ""


def run_contained(target: str, *args: Any, what: str, code: int) -> Any:
    """Calls `module:function(*args)` in a child process; returns its result.

    Args:
        target: `"package.module:function"`, importable in a fresh process.
        *args: picklable arguments.
        what: what the child does, for messages ("the conversion").
        code: the exit code of the `CliError` raised when the child dies or
            raises something other than `CliError`.

    Returns:
        The function's (picklable) return value.

    Raises:
        CliError: the child's own `CliError`, or one with `code` when the
            child raised another exception or was killed by a signal.
        KeyboardInterrupt: the user interrupted (the child is stopped).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    fd, log_path = tempfile.mkstemp(prefix="tfaccel-child-", suffix=".log")
    os.close(fd)
    process = context.Process(target=_child, args=(target, args, sender))
    outcome: tuple[str, Any] | None = None
    try:
        _start_logging_to(process, log_path)
        sender.close()
        while True:
            try:
                kind, payload = receiver.recv()
            except EOFError:
                break
            if kind == "stderr":
                sys.stderr.write(payload)
                sys.stderr.flush()
            else:
                outcome = (kind, payload)
        process.join()
        if outcome is None:
            status = process.exitcode or 0
            how = (f"was killed by {signal.Signals(-status).name}" if status < 0
                   else f"exited with status {status}")
            raise CliError(f"{what} crashed: its process {how}"
                           f"{_last_native_line(log_path)}", code)
    except KeyboardInterrupt:
        if process.is_alive():
            process.terminate()
        process.join()
        raise
    finally:
        receiver.close()
        os.unlink(log_path)
    kind, payload = outcome
    if kind == "error":
        raise payload
    if kind == "exception":
        raise CliError(f"{what} failed: {payload.splitlines()[0]}", code)
    return payload
