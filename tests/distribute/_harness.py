"""Launch the `_worker` subprocesses with free ports and timeouts."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_ports(n):
    """`n` distinct free TCP ports on 127.0.0.1 (bind port 0, read, close)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def env(**extra):
    e = dict(os.environ)
    e.pop("TF_CONFIG", None)
    e["TF_CPP_MIN_LOG_LEVEL"] = "2"
    e["CUDA_VISIBLE_DEVICES"] = ""
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def spawn(args, log_path, **extra_env):
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller via proc
    return subprocess.Popen(
        [PYTHON, "-m", "tests.distribute._worker", *args],
        cwd=ROOT,
        env=env(**extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_multiworker(out, workarounds, timeout=150):
    """Run 2 workers; return their exit codes (workers write into `out`)."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        procs.append(
            spawn(
                ["multiworker", str(out), str(index), workarounds],
                out / f"worker{index}.log",
                TF_CONFIG=json.dumps(tf_config),
            )
        )
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


def logs(out):
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.log"))
    ) + "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.err"))
    )


def kill_at_marker(proc, out, marker, timeout):
    """SIGKILL `proc` once `out / marker` exists; fail if it exits first."""
    deadline = time.monotonic() + timeout
    try:
        while not (out / marker).exists():
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}\n" + logs(out))
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker} after {timeout}s\n" + logs(out))
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc, out, timeout):
    """Wait for `proc` to exit 0 (its logs on failure); never leave it running."""
    try:
        assert proc.wait(timeout=timeout) == 0, logs(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
