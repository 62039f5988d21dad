"""Exit codes, the user-facing error type, and TensorFlow's start-up noise."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_MODEL_FILE = 3
EXIT_EXPORT_FAILED = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    verification failed: the exported file missed --min-agreement or
       --max-error (nothing is written at the output path)
  2    usage error or bad input (arguments, calibration data, output paths)
  3    unreadable or unsafe model file (missing, not a .keras zip archive,
       truncated, a zip bomb, not a valid .tflite file, or refused by Keras'
       safe mode, e.g. a Lambda layer)
  4    the TFLite conversion failed (or crashed: nothing is left behind)
  130  interrupted
"""


class CliError(Exception):
    """A user-facing error: one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # crosses the process boundary of `contained`
        return (type(self), (str(self), self.code))


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null while TensorFlow or LiteRT load.

    TF 2.21 logs its oneDNN, CUDA and CPU-feature lines through absl before
    `absl::InitializeLog()`, which ignores `TF_CPP_MIN_LOG_LEVEL`; LiteRT
    prints "Created TensorFlow Lite XNNPACK delegate". Python-level errors
    still surface as exceptions.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
