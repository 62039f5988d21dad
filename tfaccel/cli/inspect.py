"""`tfaccel inspect`: what a `.tflite` file holds."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from tfaccel.cli._common import (
    EXIT_BAD_MODEL_FILE,
    EXIT_OK,
    CliError,
    first_line,
    native_stderr_silenced,
)
from tfaccel.cli.files import check_tflite_file

EPILOG = """\
examples:
  tfaccel inspect model_int8.tflite
  tfaccel inspect model_int8.tflite --json | python -m json.tool

Shows the file and gzip sizes, operators by type and tensor dtype, the
fraction of zero weights, int8 coverage (share of compute ops that run in
int8) and, for an integer file, every float op between the input's QUANTIZE
and the output's DEQUANTIZE with the Keras layer it came from: a float
island, or an op TFLite has no int8 kernel for (JSON: "float_ops"). The file is validated (tfaccel.export.validate_tflite) before the
interpreter reads it.

"""


def add_parser(sub: Any, formatter: type, wrap: Any, epilog: str) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="ops by type and dtype, size, gzip size, sparsity, int8 coverage, "
             "float ops by layer",
        description=wrap("Describe a .tflite file (tfaccel.export.inspect_tflite)."),
        epilog=EPILOG + epilog,
        formatter_class=formatter,
    )
    inspect.add_argument("file", metavar="FILE.tflite")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = check_tflite_file(args.file)
    from tfaccel.export import inspect_tflite

    try:
        with native_stderr_silenced():
            report = inspect_tflite(data)
    except (ValueError, RuntimeError) as e:
        raise CliError(f"cannot read {args.file}: {first_line(e)}",
                       EXIT_BAD_MODEL_FILE) from None
    report = dataclasses.replace(report, path=args.file)
    print(report.to_json() if args.json else report)
    return EXIT_OK
