"""The `tfaccel` command: demo, export, inspect and bench from a shell.

Every subcommand is a thin layer over the Python API (`tfaccel.demo`,
`tfaccel.export.export_tflite`, `tfaccel.export.inspect_tflite`,
`tfaccel.export.benchmark_tflite`), so what a script gets from the shell is
exactly what a notebook gets from Python; this package only parses
arguments, checks untrusted files (`tfaccel.cli.files`) and prints. Model
files are always loaded with `keras.models.load_model(path,
safe_mode=True)`: a file that would run arbitrary Python code (a `Lambda`
layer) is refused, never executed. The conversion and the latency
measurement run in a child process (`tfaccel.cli.contained`), so a crash
in TFLite's C++ becomes an error message, not a dead shell.

Example:

```
$ tfaccel export model.keras -o model_int8.tflite --int8 \\
      --calibration calib.npy --input-type int8 --report report.json
$ tfaccel inspect model_int8.tflite
$ tfaccel bench model_int8.tflite --threads 1 2 --runs 50
```

Exit codes (stable, for scripts):
    0: success.
    1: verification failed (the exported file missed `--min-agreement` /
       `--max-error`); no file is left at the output path.
    2: usage error or bad input (arguments, data files, output paths that
       are empty, directories, or one of the inputs).
    3: unreadable or unsafe model file (missing, not a `.keras` zip archive,
       truncated, a zip bomb, not a valid TFLite file, or refused by Keras'
       safe mode).
    4: the conversion itself failed or crashed (no file is left behind).
  130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tfaccel.cli._common import (
    EXIT_BAD_MODEL_FILE,
    EXIT_EXPORT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERIFICATION_FAILED,
    CliError,
    native_stderr_silenced,
)
from tfaccel.cli._parser import build_parser
from tfaccel.cli.files import load_model_safely
from tfaccel.cli.progress import ProgressBar, calibration_dataset

__all__ = [
    "EXIT_BAD_MODEL_FILE",
    "EXIT_EXPORT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_VERIFICATION_FAILED",
    "CliError",
    "ProgressBar",
    "benchmark_tflite",
    "build_parser",
    "calibration_dataset",
    "load_model_safely",
    "main",
]


def __getattr__(name: str) -> Any:
    # The old import path `tfaccel.cli.benchmark_tflite`, without importing
    # TensorFlow (through tfaccel.export) for `tfaccel --help`.
    if name == "benchmark_tflite":
        from tfaccel.export.latency import benchmark_tflite

        return benchmark_tflite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `tfaccel` command line and returns its exit code.

    Example:

    >>> from tfaccel.cli import main
    >>> main(["inspect", "model.tflite", "--json"])  # doctest: +SKIP
    0

    Args:
        argv: arguments without the program name (default: `sys.argv[1:]`).

    Returns:
        The exit code (see the module docstring); `SystemExit` raised by
        argparse (`--help`, usage errors) is turned into its code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["demo"]:
            # The demo owns its options (and its --help); forward them as-is.
            from tfaccel import demo

            return int(demo.main(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        with native_stderr_silenced():
            # TensorFlow and LiteRT log to fd 2 while they load: load them
            # now, silenced, so that a command prints only its own lines.
            import tfaccel.export  # noqa: F401
        return int(args.func(args) or 0)
    except SystemExit as e:
        code = e.code
        if code is None:
            return EXIT_OK
        if isinstance(code, int):
            return code
        sys.stderr.write(f"tfaccel: error: {code}\n")
        return EXIT_USAGE
    except CliError as e:
        sys.stderr.write(f"tfaccel: error: {e}\n")
        return e.code
    except KeyboardInterrupt:
        sys.stderr.write("tfaccel: interrupted\n")
        return EXIT_INTERRUPTED
    except OSError as e:
        # Disk full, permission denied on --report, ...: a user-level problem.
        sys.stderr.write(f"tfaccel: error: {e}\n")
        return EXIT_USAGE
