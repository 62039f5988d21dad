"""The `tfaccel` argument parser: one sub-parser per command module."""

from __future__ import annotations

import argparse
import sys
import textwrap

from tfaccel.cli import bench, export, inspect
from tfaccel.cli._common import EXIT_CODES_HELP, EXIT_USAGE

MAIN_EPILOG = """\
examples:
  tfaccel demo --out-dir saved_models --epochs 3
  tfaccel export model.keras -o model.tflite
  tfaccel export model.keras -o model_int8.tflite --int8 --calibration calib.npy
  tfaccel export qat_model.keras -o model_int8.tflite --int8 --input-type int8
  tfaccel inspect model_int8.tflite --json
  tfaccel bench model_int8.tflite --threads 1 2 --runs 50

Run `tfaccel <command> --help` for the options of each command.

"""


class _Parser(argparse.ArgumentParser):
    """argparse with `tfaccel: error: ...` messages (prog may be a subcommand)."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"tfaccel: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _wrap(text: str) -> str:
    # Raw formatting keeps the epilog's examples as written; descriptions are
    # wrapped here instead.
    return textwrap.fill(text, width=79)


def _run_demo(args: argparse.Namespace) -> int:
    from tfaccel import demo

    return int(demo.main(list(args.demo_args)) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The `tfaccel` argument parser (public for docs and shell completion)."""
    from tfaccel import __version__

    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="tfaccel",
        description=_wrap(
            "Keras 3 model optimization from the shell: run the demo, export a "
            ".keras model to a verified TFLite file, inspect a .tflite file, "
            "benchmark its latency."
        ),
        epilog=MAIN_EPILOG + EXIT_CODES_HELP,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"tfaccel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="prune, quantize, distill and export a digits CNN, offline",
        description=_wrap(
            "Runs tfaccel's end-to-end demo (see `tfaccel demo --help` for its "
            "options: --out-dir D, --epochs N, --seed S)."
        ),
        add_help=False,
        formatter_class=raw,
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    demo.set_defaults(func=_run_demo)
    for command in (export, inspect, bench):
        command.add_parser(sub, raw, _wrap, EXIT_CODES_HELP)
    return parser
