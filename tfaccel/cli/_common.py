"""Exit codes, the user-facing error type, and TensorFlow's start-up noise."""

from __future__ import annotations

from tfaccel_command import native_stderr_silenced  # noqa: F401  (one copy)

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


