"""The `tfaccel` command: demo, export, inspect and bench from a shell.

Every subcommand is a thin layer over the Python API (`tfaccel.demo`,
`tfaccel.export.export_tflite`, `tfaccel.export.inspect_tflite`,
`ai_edge_litert`), so what a script gets from the shell is exactly what a
notebook gets from Python. Model files are always loaded with
`keras.models.load_model(path, safe_mode=True)`: a file that would run
arbitrary Python code (a `Lambda` layer) is refused, never executed.

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
    2: usage error or bad input (argparse's own code).
    3: unreadable or unsafe model file (missing, not a `.keras` zip archive,
       truncated, not a TFLite file, or refused by Keras' safe mode).
    4: the conversion itself failed (a TensorFlow converter error).
  130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_MODEL_FILE = 3
EXIT_EXPORT_FAILED = 4
EXIT_INTERRUPTED = 130

_EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    verification failed: the exported file missed --min-agreement or
       --max-error (nothing is written at the output path)
  2    usage error or bad input (arguments, calibration data)
  3    unreadable or unsafe model file (missing, not a .keras zip archive,
       truncated, not a .tflite file, or refused by Keras' safe mode, e.g. a
       Lambda layer)
  4    the TFLite conversion failed
  130  interrupted
"""

_MAIN_EPILOG = (
    """\
examples:
  tfaccel demo --out-dir saved_models --epochs 3
  tfaccel export model.keras -o model.tflite
  tfaccel export model.keras -o model_int8.tflite --int8 --calibration calib.npy
  tfaccel export qat_model.keras -o model_int8.tflite --int8 --input-type int8
  tfaccel inspect model_int8.tflite --json
  tfaccel bench model_int8.tflite --threads 1 2 --runs 50

Run `tfaccel <command> --help` for the options of each command.

"""
    + _EXIT_CODES_HELP
)

_EXPORT_EPILOG = (
    """\
examples:
  # float32 file, verified against the Keras model on the calibration data
  tfaccel export model.keras -o model.tflite --verification x_test.npy

  # post-training int8 of a float model: calibration data is required
  tfaccel export model.keras -o model_int8.tflite --int8 --calibration calib.npy

  # a model trained with tfaccel.quantization.quantize() needs no calibration;
  # int8 input/output tensors for a mobile app, fail (exit 1) below 99% agreement
  tfaccel export qat.keras -o qat_int8.tflite --int8 --input-type int8 \\
      --verification x_test.npy --min-agreement 0.99 --report report.json

Calibration/verification data is a NumPy .npy file holding one float array
shaped like the model input with a leading sample axis (N, ...). It is read
with allow_pickle=False.

"""
    + _EXIT_CODES_HELP
)

_INSPECT_EPILOG = (
    """\
examples:
  tfaccel inspect model_int8.tflite
  tfaccel inspect model_int8.tflite --json | python -m json.tool

Shows the file and gzip sizes, operators by type and tensor dtype, the
fraction of zero weights, and int8 coverage (share of compute ops that run
in int8).

"""
    + _EXIT_CODES_HELP
)

_BENCH_EPILOG = (
    """\
examples:
  tfaccel bench model_int8.tflite
  tfaccel bench model_int8.tflite --threads 1 2 4 --runs 100 --json

Latency of one invoke() with ai_edge_litert (XNNPACK on), random inputs of
the model's input dtype; median and 90th percentile in milliseconds, after
--warmup untimed runs, for each thread count.

"""
    + _EXIT_CODES_HELP
)


class CliError(Exception):
    """A user-facing error: one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _quiet_tensorflow() -> None:
    # Must run before TensorFlow is imported to silence its C++ start-up logs.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------
# Loading files safely.


def _register_tfaccel_objects() -> None:
    """Imports tfaccel's subpackages so their layers deserialize by name.

    `keras.models.load_model` resolves `"tfaccel>..."` class names through
    the registry filled by `register_keras_serializable` when a module is
    imported; a QAT or pruned model fails to load unless these ran first.
    """
    for name in (
        "tfaccel.schedules",
        "tfaccel.pruning",
        "tfaccel.quantization",
        "tfaccel.distillation",
    ):
        importlib.import_module(name)


def load_model_safely(path: str) -> Any:
    """Loads a `.keras` file with safe mode on, or raises `CliError` (exit 3).

    The archive is checked before Keras sees it, because Keras reports a
    truncated or non-zip file as "File not found", which misleads users.

    Args:
        path: path of a Keras v3 `.keras` file.

    Returns:
        The loaded `keras.Model`.

    Raises:
        CliError: with code 3 when the file is missing, not a `.keras` zip
            archive, truncated, or refused by safe mode.
    """
    if not os.path.exists(path):
        raise CliError(f"model file not found: {path}", EXIT_BAD_MODEL_FILE)
    if os.path.isdir(path):
        raise CliError(
            f"expected a .keras model file, received a directory: {path} "
            "(SavedModel directories are not supported; save with "
            "model.save('model.keras'))",
            EXIT_BAD_MODEL_FILE,
        )
    if not path.endswith(".keras"):
        raise CliError(
            "expected a Keras v3 model file ending in '.keras'. "
            f"Received: {path} (re-save it with model.save('model.keras'))",
            EXIT_BAD_MODEL_FILE,
        )
    if not zipfile.is_zipfile(path):
        raise CliError(
            f"{path} is not a .keras zip archive (truncated or corrupt file?)",
            EXIT_BAD_MODEL_FILE,
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CliError(
            f"{path} is a corrupt .keras archive: {_first_line(e)}",
            EXIT_BAD_MODEL_FILE,
        ) from None
    if broken is not None:
        raise CliError(
            f"{path} is a corrupt .keras archive (bad CRC in {broken!r})",
            EXIT_BAD_MODEL_FILE,
        )
    if "config.json" not in names:
        raise CliError(
            f"{path} is a zip archive but not a .keras model (no config.json)",
            EXIT_BAD_MODEL_FILE,
        )

    _quiet_tensorflow()
    import keras

    _register_tfaccel_objects()
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - every failure is a bad file here
        message = _first_line(e)
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise CliError(
                f"refusing to load {path}: it contains a Lambda layer or other "
                "serialized Python code, which could run arbitrary code "
                "(Keras safe mode). Rebuild the model without Lambda layers, "
                "or export it from Python if you trust the file.",
                EXIT_BAD_MODEL_FILE,
            ) from None
        raise CliError(
            f"cannot load {path}: {type(e).__name__}: {message}",
            EXIT_BAD_MODEL_FILE,
        ) from None


def _load_array(path: str, option: str) -> Any:
    import numpy as np

    if not os.path.isfile(path):
        raise CliError(f"{option}: file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise CliError(
            f"{option}: expected a .npy file holding a numeric array. "
            f"Received: {path} ({_first_line(e)})"
        ) from None
    except OSError as e:
        raise CliError(f"{option}: cannot read {path}: {_first_line(e)}") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        array.close()
        raise CliError(
            f"{option}: expected a .npy file with one array. Received an .npz "
            f"archive: {path} (save with np.save('data.npy', x))"
        )
    if not np.issubdtype(array.dtype, np.number) or array.ndim < 1:
        raise CliError(
            f"{option}: expected a numeric array with a leading sample axis. "
            f"Received: dtype={array.dtype}, shape={array.shape} from {path}"
        )
    if len(array) == 0:
        raise CliError(f"{option}: expected at least one sample. Received: {path} is empty")
    return array


def _check_tflite_file(path: str) -> None:
    if not os.path.isfile(path):
        raise CliError(f"TFLite file not found: {path}", EXIT_BAD_MODEL_FILE)
    with open(path, "rb") as f:
        head = f.read(8)
    # A TFLite flatbuffer carries the file identifier "TFL3" at bytes 4..8.
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise CliError(
            f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier)",
            EXIT_BAD_MODEL_FILE,
        )


# --------------------------------------------------------------------------
# Progress bar for calibration.


class ProgressBar:
    """A plain-text progress bar on a stream (stderr by default).

    On a terminal it redraws one line; in a log file it prints a line every
    10%, so CI logs stay readable.
    """

    def __init__(
        self, total: int, label: str = "calibrating", stream: TextIO | None = None
    ):
        self.total = max(1, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count = min(self.total, self.count + n)
        fraction = self.count / self.total
        if self._tty:
            self._draw(fraction, end="\r")
        else:
            decile = int(fraction * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self._draw(fraction, end="\n")

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, fraction: float, end: str) -> None:
        width = 30
        filled = int(round(fraction * width))
        elapsed = time.perf_counter() - self._t0
        self.stream.write(
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.count}/{self.total} samples {elapsed:5.1f}s{end}"
        )
        self.stream.flush()


def calibration_dataset(
    array: Any, stream: TextIO | None = None
) -> Callable[[], Iterator[list[Any]]]:
    """A TFLite `representative_dataset` over `array` that draws a progress bar.

    The converter calls it once during calibration and pulls one sample per
    step, so the bar advances with the calibration itself.

    Args:
        array: calibration samples `(N, ...)`, already of the input dtype.
        stream: where the bar is drawn (default: stderr).

    Returns:
        A callable returning a generator of `[sample]` batches of size 1.
    """

    def representative_dataset() -> Iterator[list[Any]]:
        bar = ProgressBar(len(array), stream=stream)
        try:
            for i in range(len(array)):
                yield [array[i : i + 1]]
                bar.update()
        finally:
            bar.close()

    return representative_dataset


# --------------------------------------------------------------------------
# Subcommands.


def _cmd_demo(args: argparse.Namespace) -> int:
    from tfaccel import demo

    return int(demo.main(list(args.demo_args)) or 0)


def _cmd_export(args: argparse.Namespace) -> int:
    quantization = args.quantization
    if args.min_agreement is not None and not 0.0 <= args.min_agreement <= 1.0:
        raise CliError(
            f"--min-agreement: expected a fraction in [0, 1]. Received: {args.min_agreement}"
        )
    if args.max_samples < 1:
        raise CliError(f"--max-samples: expected an integer >= 1. Received: {args.max_samples}")
    if args.max_error is not None and args.max_error < 0:
        raise CliError(f"--max-error: expected a value >= 0. Received: {args.max_error}")
    if os.path.isdir(args.output):
        raise CliError(f"-o/--output: expected a file path. Received a directory: {args.output}")

    calibration = _load_array(args.calibration, "--calibration") if args.calibration else None
    verification = (
        _load_array(args.verification, "--verification") if args.verification else None
    )
    model = load_model_safely(args.model)
    # A quantization-aware model (tfaccel.quantization.quantize) always
    # exports as int8 from its trained ranges.
    qat = _is_quantized(model)
    int8 = quantization == "int8" or (qat and quantization is None)
    if "int8" in (args.input_type, args.output_type) and not int8:
        raise CliError(
            "--input-type/--output-type int8 needs --int8 (or a model from "
            "tfaccel.quantization.quantize). "
            f"Received: {quantization or 'no quantization (float32)'} "
            "on a float model"
        )
    if calibration is not None and not int8:
        raise CliError(
            "--calibration is only used by --int8 on a float model; use "
            "--verification to compare outputs. "
            f"Received: {quantization or 'no quantization (float32)'}"
        )

    from tfaccel.export import VerificationError, export_tflite

    kwargs: dict[str, Any] = {
        "quantization": quantization,
        "max_samples": args.max_samples,
    }
    if calibration is not None:
        kwargs["representative_data"] = calibration
        if int8 and not qat and not args.no_progress:
            # export_tflite validates `representative_data` and builds its own
            # calibration generator; replace that generator with the same
            # samples plus a progress bar (the calibration is the slow part).
            dtype = model.inputs[0].dtype
            samples = calibration[: args.max_samples].astype(dtype)
            kwargs["converter_options"] = {
                "representative_dataset": calibration_dataset(samples, sys.stderr)
            }
    if verification is not None:
        kwargs["verification_data"] = verification
    if args.input_type is not None:
        kwargs["input_type"] = args.input_type
        kwargs["output_type"] = args.output_type or args.input_type
    elif args.output_type is not None:
        kwargs["output_type"] = args.output_type
    tolerance = {}
    if args.min_agreement is not None:
        tolerance["min_agreement"] = args.min_agreement
    if args.max_error is not None:
        tolerance["max_error"] = args.max_error
    if tolerance:
        kwargs["tolerance"] = tolerance

    try:
        report = export_tflite(model, args.output, **kwargs)
    except VerificationError as e:
        raise CliError(
            f"verification failed, {args.output} not written: {_first_line(e)}",
            EXIT_VERIFICATION_FAILED,
        ) from None
    except (ValueError, TypeError) as e:
        raise CliError(_first_line(e), EXIT_USAGE) from None
    except (OSError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - converter errors have many types
        message = _first_line(e)
        if not message.startswith("TFLite conversion failed"):
            message = f"TFLite conversion failed: {type(e).__name__}: {message}"
        raise CliError(message, EXIT_EXPORT_FAILED) from None

    print(report)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(report.to_json())
            f.write("\n")
        print(f"wrote {args.report}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report.to_markdown())
            f.write("\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        from tfaccel.plots import plot_sizes

        sizes = {
            "Keras weights (float)": float(_weight_bytes(model)),
            "TFLite file": float(report.bytes),
            "TFLite gzip": float(report.gzip_bytes),
        }
        plot_sizes(sizes, args.plot, title=f"{os.path.basename(args.output)}")
        print(f"wrote {args.plot}")
    return EXIT_OK


def _is_quantized(model: Any) -> bool:
    from tfaccel.quantization import is_quantized

    return bool(is_quantized(model))


def _weight_bytes(model: Any) -> int:
    import numpy as np

    total = 0
    for v in model.weights:
        total += int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
    return total


def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return str(n)
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.2f} MB ({int(n):,} bytes)"
    if n >= 1024:
        return f"{n / 1024:.1f} KB ({int(n):,} bytes)"
    return f"{int(n)} bytes"


def _fmt_fraction(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, int | float) else str(x)


def _format_io(entries: Any) -> str:
    return ", ".join(
        f"{e.get('name')} {e.get('dtype')}{list(e.get('shape', []))}"
        for e in entries
        if isinstance(e, dict)
    )


def _format_inspection(path: str, info: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    if info.get("quantization"):
        rows.append(("quantization", str(info["quantization"])))
    for key, label in (("bytes", "size"), ("gzip_bytes", "gzip size")):
        if info.get(key) is not None:
            rows.append((label, _fmt_bytes(info[key])))
    if info.get("sparsity") is not None:
        rows.append(("zero weights", _fmt_fraction(info["sparsity"])))
    if info.get("int8_coverage") is not None:
        rows.append(("int8 coverage", f"{_fmt_fraction(info['int8_coverage'])} of compute ops"))
    if info.get("inputs"):
        rows.append(("inputs", _format_io(info["inputs"])))
    if info.get("outputs"):
        rows.append(("outputs", _format_io(info["outputs"])))
    width = max([len(k) for k, _ in rows] + [1])
    lines = [path] + [f"  {k:<{width}}  {v}" for k, v in rows]
    ops = info.get("ops") or {}
    if ops:
        lines.append("  operators (type: dtype x count)")
        op_width = max(len(str(k)) for k in ops)
        for op, counts in sorted(ops.items()):
            if isinstance(counts, dict):
                detail = ", ".join(f"{dt} x{c}" for dt, c in sorted(counts.items()))
            else:
                detail = str(counts)
            lines.append(f"    {op:<{op_width}}  {detail}")
    per_tensor = info.get("tensor_sparsity") or {}
    if isinstance(per_tensor, dict) and per_tensor:
        lines.append("  zero weights per tensor")
        name_width = max(len(str(k)) for k in per_tensor)
        for name, value in per_tensor.items():
            lines.append(f"    {name:<{name_width}}  {_fmt_fraction(value)}")
    for note in info.get("notes") or []:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _cmd_inspect(args: argparse.Namespace) -> int:
    _check_tflite_file(args.file)
    _quiet_tensorflow()
    from tfaccel.export import inspect_tflite

    try:
        info = inspect_tflite(args.file).to_dict()
    except (ValueError, RuntimeError) as e:
        raise CliError(
            f"cannot read {args.file}: {_first_line(e)}", EXIT_BAD_MODEL_FILE
        ) from None
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        print(_format_inspection(args.file, info))
    return EXIT_OK


def _random_input(detail: dict[str, Any], rng: Any) -> Any:
    import numpy as np

    shape = [d if d > 0 else 1 for d in detail.get("shape_signature", detail["shape"])]
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)


def benchmark_tflite(
    path: str, threads: Sequence[int] = (1,), runs: int = 50, warmup: int = 5
) -> list[dict[str, Any]]:
    """Measures `invoke()` latency of a TFLite file with ai_edge_litert.

    Example:

    >>> rows = benchmark_tflite("model.tflite", threads=[1, 2], runs=20)  # doctest: +SKIP
    >>> rows[0]["median_ms"]  # doctest: +SKIP

    Args:
        path: the `.tflite` file.
        threads: interpreter thread counts to measure, one row each.
        runs: timed invocations per thread count.
        warmup: untimed invocations first (XNNPACK packs weights lazily).

    Returns:
        One dict per thread count: `threads`, `runs`, `median_ms`, `p90_ms`,
        `min_ms`, `mean_ms`.
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    rows = []
    for n in threads:
        interpreter = Interpreter(model_path=path, num_threads=int(n))
        for detail in interpreter.get_input_details():
            if any(d <= 0 for d in detail.get("shape_signature", detail["shape"])):
                shape = [d if d > 0 else 1 for d in detail["shape_signature"]]
                interpreter.resize_tensor_input(detail["index"], shape)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], _random_input(detail, rng))
        for _ in range(warmup):
            interpreter.invoke()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            interpreter.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        times_sorted = sorted(times)
        rows.append(
            {
                "threads": int(n),
                "runs": runs,
                "median_ms": statistics.median(times),
                "p90_ms": float(np.percentile(times_sorted, 90)),
                "min_ms": times_sorted[0],
                "mean_ms": statistics.fmean(times),
            }
        )
    return rows


def _cmd_bench(args: argparse.Namespace) -> int:
    _check_tflite_file(args.file)
    if args.runs < 1:
        raise CliError(f"--runs: expected an integer >= 1. Received: {args.runs}")
    if args.warmup < 0:
        raise CliError(f"--warmup: expected an integer >= 0. Received: {args.warmup}")
    bad = [t for t in args.threads if t < 1]
    if bad:
        raise CliError(f"--threads: expected integers >= 1. Received: {bad[0]}")
    _quiet_tensorflow()
    try:
        rows = benchmark_tflite(args.file, args.threads, args.runs, args.warmup)
    except (ValueError, RuntimeError) as e:
        raise CliError(
            f"cannot run {args.file}: {_first_line(e)}", EXIT_BAD_MODEL_FILE
        ) from None
    if args.json:
        print(json.dumps({"file": args.file, "results": rows}, indent=2))
        return EXIT_OK
    print(f"{args.file}: latency of one invoke() over {args.runs} runs (ai_edge_litert)")
    print(f"{'threads':>7}  {'median ms':>10}  {'p90 ms':>10}  {'min ms':>10}")
    for row in rows:
        print(
            f"{row['threads']:>7}  {row['median_ms']:>10.4g}  "
            f"{row['p90_ms']:>10.4g}  {row['min_ms']:>10.4g}"
        )
    return EXIT_OK


# --------------------------------------------------------------------------
# Parser and entry point.


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
        epilog=_MAIN_EPILOG,
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
    demo.set_defaults(func=_cmd_demo)

    export = sub.add_parser(
        "export",
        help="convert a .keras model to a verified .tflite file",
        description=_wrap(
            "Load MODEL.keras (Keras safe mode: Lambda layers are refused), "
            "convert it with tfaccel.export.export_tflite, check the written "
            "file against the Keras model, and print the report."
        ),
        epilog=_EXPORT_EPILOG,
        formatter_class=raw,
    )
    export.add_argument("model", metavar="MODEL.keras", help="the Keras v3 model file")
    export.add_argument("-o", "--output", required=True, metavar="OUT.tflite",
                        help="where to write the .tflite file (written atomically)")
    mode = export.add_mutually_exclusive_group()
    mode.add_argument("--int8", dest="quantization", action="store_const", const="int8",
                      help="full-integer int8: QAT models as trained, float models "
                           "calibrated from --calibration")
    mode.add_argument("--float16", dest="quantization", action="store_const",
                      const="float16", help="float16 weights (half the size, GPU-friendly)")
    mode.add_argument("--dynamic", dest="quantization", action="store_const",
                      const="dynamic",
                      help="int8 weights, float activations (no calibration data)")
    export.add_argument("--calibration", metavar="DATA.npy",
                        help="representative samples (N, ...) for --int8 on a float model")
    export.add_argument("--verification", metavar="DATA.npy",
                        help="samples to compare the file with the Keras model "
                             "(default: the calibration data)")
    export.add_argument("--input-type", choices=["int8", "float32"], default=None,
                        help="dtype of the file's input tensor (int8 needs --int8; "
                             "default: export_tflite's default)")
    export.add_argument("--output-type", choices=["int8", "float32"], default=None,
                        help="dtype of the file's output tensor (default: as --input-type)")
    export.add_argument("--min-agreement", type=float, metavar="FRACTION",
                        help="fail with exit code 1 if top-1 agreement with the Keras "
                             "model is below this (e.g. 0.99)")
    export.add_argument("--max-error", type=float, metavar="X",
                        help="fail with exit code 1 if the max abs output error is above X")
    export.add_argument("--report", metavar="report.json", help="write the report as JSON")
    export.add_argument("--markdown", metavar="report.md",
                        help="write the report as a Markdown table")
    export.add_argument("--plot", metavar="sizes.png",
                        help="write a PNG bar chart of the Keras weight size, file "
                             "size and gzip size (needs matplotlib)")
    export.add_argument("--max-samples", type=int, default=500, metavar="N",
                        help="most samples used to calibrate and to verify "
                             "(default: %(default)s)")
    export.add_argument("--no-progress", action="store_true",
                        help="no calibration progress bar on stderr")
    export.set_defaults(func=_cmd_export, quantization=None)

    inspect = sub.add_parser(
        "inspect",
        help="ops by type and dtype, size, gzip size, sparsity, int8 coverage",
        description=_wrap("Describe a .tflite file (tfaccel.export.inspect_tflite)."),
        epilog=_INSPECT_EPILOG,
        formatter_class=raw,
    )
    inspect.add_argument("file", metavar="FILE.tflite")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(func=_cmd_inspect)

    bench = sub.add_parser(
        "bench",
        help="latency (median, p90) with ai_edge_litert per thread count",
        description="Time invoke() of a .tflite file with ai_edge_litert.",
        epilog=_BENCH_EPILOG,
        formatter_class=raw,
    )
    bench.add_argument("file", metavar="FILE.tflite")
    bench.add_argument("--threads", type=int, nargs="+", default=[1], metavar="N",
                       help="thread counts to measure (default: 1)")
    bench.add_argument("--runs", type=int, default=50,
                       help="timed runs per thread count (default: %(default)s)")
    bench.add_argument("--warmup", type=int, default=5,
                       help="untimed runs first (default: %(default)s)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of text")
    bench.set_defaults(func=_cmd_bench)
    return parser


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
        parser = build_parser()
        args = parser.parse_args(argv)
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
