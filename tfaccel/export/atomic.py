"""Write a file all or nothing: a temporary file next to it, then a rename.

`AtomicFile(path)` checks `path` before any work is done (empty, ending with
a separator, a directory, a parent that cannot be created), creates the
missing parent directories, writes to a temporary file in the same
directory and, on `commit()`, renames it onto `path` (`os.replace`, atomic
on POSIX and Windows) with the permissions of the file it replaces. On any
error the temporary file and the directories it created are removed, and
the file already at `path` is untouched.

A process killed with `kill -9` cannot clean up: its temporary files are
named `.<name>.tfaccel-<pid>-<random>.tmp`, and the next write of the same
`path` removes those whose process is gone or which are over a day old.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time

__all__ = ["AtomicFile", "check_path", "remove_stale_temp_files"]

_TAG = ".tfaccel-"
_STALE_SECONDS = 24 * 3600


def check_path(path) -> str:
    """`path` as a str if it can name a file to write, else a clear error.

    Example:

    >>> check_path("out/model.tflite")
    'out/model.tflite'
    >>> check_path("out/")
    Traceback (most recent call last):
    ...
    ValueError: Argument `path` must name a file, not a directory (it ends with a path separator). Received: path='out/'

    Raises:
        TypeError: `path` is not a str or path-like.
        ValueError: `path` is empty, ends with a separator or is a directory.
        OSError: a parent of `path` exists and is not a directory, or the
            nearest existing one is not writable.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(
            f"Argument `path` must be a str or os.PathLike. Received: path={path!r}"
        ) from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError("Argument `path` must name a file. Received: path=''")
    if path.endswith(tuple(s for s in (os.sep, os.altsep) if s)):
        raise ValueError(
            "Argument `path` must name a file, not a directory (it ends with a "
            f"path separator). Received: path={path!r}"
        )
    if os.path.isdir(path):
        raise ValueError(
            "Argument `path` must be a file path, not a directory. "
            f"Received: path={path!r}"
        )
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        problem = "not a directory" if not os.path.isdir(ancestor) else "not writable"
        raise OSError(
            20 if problem == "not a directory" else 13,  # ENOTDIR, EACCES
            "Argument `path` must be a writable file path (its directory is "
            f"created if missing). Received: path={path!r} ({ancestor!r} is "
            f"{problem})",
        )
    return path


def _missing_parents(parent: str) -> list[str]:
    """The directories `os.makedirs(parent)` will create, outermost first."""
    missing = []
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return missing[::-1]


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it: rely on age only
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(path: str) -> list[str]:
    """Remove temp files of `path` left by dead (or day-old) writers.

    Returns:
        The names removed.
    """
    parent = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}{_TAG}"
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text = name[len(prefix) :].split("-", 1)[0]
        full = os.path.join(parent, name)
        try:
            old = time.time() - os.stat(full).st_mtime > _STALE_SECONDS
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if old or (pid != os.getpid() and not _alive(pid)):
            with contextlib.suppress(OSError):
                os.remove(full)
                removed.append(name)
    return removed


def _final_mode(path: str) -> int:
    """Keep an existing file's permissions; else the umask's default."""
    if os.path.exists(path):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A context manager that writes `path` all or nothing.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "new", "m.bin")
    >>> with AtomicFile(path) as out:
    ...     out.write(b"bytes")
    ...     out.commit()
    >>> open(path, "rb").read()
    b'bytes'

    Args:
        path: the file to write (checked by `check_path` at construction).
    """

    def __init__(self, path):
        self.path = check_path(path)
        self.tmp: str | None = None
        self._created: list[str] = []
        self._fd: int | None = None

    def __enter__(self) -> AtomicFile:
        self._mode = _final_mode(self.path)
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            self._created = _missing_parents(parent)
            os.makedirs(parent, exist_ok=True)
            remove_stale_temp_files(self.path)
            prefix = f".{os.path.basename(self.path)}{_TAG}{os.getpid()}-"
            self._fd, self.tmp = tempfile.mkstemp(
                dir=parent, prefix=prefix, suffix=".tmp"
            )
        except OSError as e:
            self._cleanup()
            # OSError(errno, ...) keeps the subclass: PermissionError, ...
            raise OSError(
                e.errno,
                "Argument `path` must be a writable file path (its directory is "
                f"created if missing). Received: path={self.path!r} "
                f"({e.strerror or e})",
            ) from e
        return self

    def write(self, data: bytes) -> None:
        """Write `data` to the temporary file and flush it to disk."""
        with os.fdopen(self._fd, "wb") as f:
            self._fd = None
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def commit(self) -> None:
        """Rename the temporary file onto `path`."""
        os.chmod(self.tmp, self._mode)
        os.replace(self.tmp, self.path)
        self.tmp = None
        self._created = []

    def _cleanup(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp)
            self.tmp = None
        for directory in reversed(self._created):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only if still empty
        self._created = []

    def __exit__(self, *exc_info) -> None:
        self._cleanup()
