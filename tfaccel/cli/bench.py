"""`tfaccel bench`: invoke() latency of a `.tflite` file per thread count."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from tfaccel.cli._common import (
    EXIT_BAD_MODEL_FILE,
    EXIT_OK,
    CliError,
    first_line,
    native_stderr_silenced,
)
from tfaccel.cli.contained import run_contained
from tfaccel.cli.files import check_tflite_file

EPILOG = """\
examples:
  tfaccel bench model_int8.tflite
  tfaccel bench model_int8.tflite --threads 1 2 4 --runs 100 --json

Latency of one invoke() with ai_edge_litert (XNNPACK on), random inputs of
the model's input dtype; median and 90th percentile in milliseconds, after
--warmup untimed runs, for each thread count. The file is validated first,
and runs in a child process: a crash of the runtime is reported (exit 3).

"""


def add_parser(sub: Any, formatter: type, wrap: Any, epilog: str) -> None:
    bench = sub.add_parser(
        "bench",
        help="latency (median, p90) with ai_edge_litert per thread count",
        description="Time invoke() of a .tflite file with ai_edge_litert.",
        epilog=EPILOG + epilog,
        formatter_class=formatter,
    )
    bench.add_argument("file", metavar="FILE.tflite")
    bench.add_argument("--threads", type=int, nargs="+", default=[1], metavar="N",
                       help="thread counts to measure (default: 1)")
    bench.add_argument("--runs", type=int, default=50,
                       help="timed runs per thread count (default: %(default)s)")
    bench.add_argument("--warmup", type=int, default=5,
                       help="untimed runs first (default: %(default)s)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of text")
    bench.set_defaults(func=run)


def measure(data: bytes, path: str, threads: Sequence[int], runs: int,
            warmup: int) -> list[dict[str, Any]]:
    """The child-process half of `bench`."""
    from tfaccel.export.latency import benchmark_tflite

    try:
        with native_stderr_silenced():
            return benchmark_tflite(data, threads, runs, warmup)
    except (ValueError, RuntimeError) as e:
        raise CliError(f"cannot run {path}: {first_line(e)}",
                       EXIT_BAD_MODEL_FILE) from None


def run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise CliError(f"--runs: expected an integer >= 1. Received: {args.runs}")
    if args.warmup < 0:
        raise CliError(f"--warmup: expected an integer >= 0. Received: {args.warmup}")
    bad = [t for t in args.threads if t < 1]
    if bad:
        raise CliError(f"--threads: expected integers >= 1. Received: {bad[0]}")
    data = check_tflite_file(args.file)
    rows = run_contained(
        "tfaccel.cli.bench:measure", data, args.file, args.threads, args.runs,
        args.warmup, what=f"running {args.file}", code=EXIT_BAD_MODEL_FILE,
    )
    if args.json:
        print(json.dumps({"file": args.file, "results": rows}, indent=2))
        return EXIT_OK
    print(f"{args.file}: latency of one invoke() over {args.runs} runs (ai_edge_litert)")
    print(f"{'threads':>7}  {'median ms':>10}  {'p90 ms':>10}  {'min ms':>10}")
    for row in rows:
        print(f"{row['threads']:>7}  {row['median_ms']:>10.4g}  "
              f"{row['p90_ms']:>10.4g}  {row['min_ms']:>10.4g}")
    return EXIT_OK
