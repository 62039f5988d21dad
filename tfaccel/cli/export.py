"""`tfaccel export`: a `.keras` model to a verified `.tflite` file."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Any

from tfaccel.cli._common import (
    EXIT_EXPORT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VERIFICATION_FAILED,
    CliError,
    first_line,
)
from tfaccel.cli.contained import run_contained
from tfaccel.cli.files import (
    check_keras_archive,
    check_outputs,
    existing_ancestor,
    load_array,
    load_model_safely,
    write_text_atomic,
)

EPILOG = """\
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
shaped like the model input with a leading sample axis (N, ...); for a model
with several inputs, an .npz archive of one array per input, saved by input
name (np.savez(f, a=xa, b=xb)) or in the order of model.inputs
(np.savez(f, xa, xb)). Files are read with allow_pickle=False. The conversion runs in a child process: a converter
crash is reported (exit 4) and leaves no file behind. No output path may be
one of the input files.

"""


def add_parser(sub: Any, formatter: type, wrap: Any, epilog: str) -> None:
    export = sub.add_parser(
        "export",
        help="convert a .keras model to a verified .tflite file",
        description=wrap(
            "Load MODEL.keras (Keras safe mode: Lambda layers are refused), "
            "convert it with tfaccel.export.export_tflite, check the written "
            "file against the Keras model, and print the report."
        ),
        epilog=EPILOG + epilog,
        formatter_class=formatter,
    )
    add = export.add_argument
    add("model", metavar="MODEL.keras", help="the Keras v3 model file")
    add("-o", "--output", required=True, metavar="OUT.tflite",
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
    add("--calibration", metavar="DATA.npy|.npz",
        help="representative samples (N, ...) for --int8 on a float model")
    add("--verification", metavar="DATA.npy|.npz",
        help="samples to compare the file with the Keras model "
             "(default: the calibration data)")
    add("--input-type", choices=["int8", "float32"], default=None,
        help="dtype of the file's input tensor (int8 needs --int8; "
             "default: export_tflite's default)")
    add("--output-type", choices=["int8", "float32"], default=None,
        help="dtype of the file's output tensor (default: as --input-type)")
    add("--min-agreement", type=float, metavar="FRACTION",
        help="fail with exit code 1 if top-1 agreement with the Keras "
             "model is below this (e.g. 0.99)")
    add("--max-error", type=float, metavar="X",
        help="fail with exit code 1 if the max abs output error is above X")
    add("--report", metavar="report.json", help="write the report as JSON")
    add("--markdown", metavar="report.md", help="write the report as a Markdown table")
    add("--plot", metavar="sizes.png",
        help="write a PNG bar chart of the Keras weight size, file "
             "size and gzip size (needs matplotlib)")
    add("--unroll-lstm", action="store_true",
        help="unroll each LSTM over its timesteps (any batch size, no state "
             "kept between invocations) instead of TFLite's fused "
             "UNIDIRECTIONAL_SEQUENCE_LSTM (batch size 1)")
    add("--max-samples", type=int, default=500, metavar="N",
        help="most samples used to calibrate and to verify (default: %(default)s)")
    add("--no-progress", action="store_true",
        help="no calibration progress bar on stderr")
    export.set_defaults(func=run, quantization=None)


def _check_numbers(args: argparse.Namespace) -> None:
    if args.min_agreement is not None and not 0.0 <= args.min_agreement <= 1.0:
        raise CliError("--min-agreement: expected a fraction in [0, 1]. "
                       f"Received: {args.min_agreement}")
    if args.max_samples < 1:
        raise CliError("--max-samples: expected an integer >= 1. "
                       f"Received: {args.max_samples}")
    if args.max_error is not None and not args.max_error >= 0:  # NaN too
        raise CliError(f"--max-error: expected a value >= 0. Received: {args.max_error}")


def _check_paths(args: argparse.Namespace) -> None:
    inputs = [("MODEL.keras", args.model)]
    inputs += [(f"--{name}", getattr(args, name))
               for name in ("calibration", "verification") if getattr(args, name)]
    outputs = [("-o/--output", args.output)]
    outputs += [(f"--{name}", getattr(args, name))
                for name in ("report", "markdown", "plot") if getattr(args, name)]
    check_outputs(outputs, inputs)


def _check_modes(args: argparse.Namespace, qat: bool, has_calibration: bool) -> bool:
    """Whether the file will be int8; refuses contradictory options."""
    quantization = args.quantization
    int8 = quantization == "int8" or (qat and quantization is None)
    received = quantization or "no quantization (float32)"
    if "int8" in (args.input_type, args.output_type) and not int8:
        raise CliError(
            "--input-type/--output-type int8 needs --int8 (or a model from "
            f"tfaccel.quantization.quantize). Received: {received} on a float model"
        )
    if has_calibration and not int8:
        raise CliError(
            "--calibration is only used by --int8 on a float model; use "
            f"--verification to compare outputs. Received: {received}"
        )
    return int8


def _uses_tfaccel(config: Any) -> bool:
    """Whether a `.keras` config names any class registered by tfaccel."""
    if isinstance(config, dict):
        name = config.get("registered_name")
        if isinstance(name, str) and name.startswith("tfaccel>"):
            return True
        return any(_uses_tfaccel(value) for value in config.values())
    if isinstance(config, list):
        return any(_uses_tfaccel(value) for value in config)
    return False


def _check_plain_model(args: argparse.Namespace, config: dict) -> None:
    """Refuses options a plain Keras model cannot take, from its config alone.

    A model whose config names no tfaccel class is a float model: its
    contradictory options are reported at once, before the conversion's
    child process starts (seconds of TensorFlow start-up). A model with
    tfaccel layers is checked in the child, once loaded.
    """
    if _uses_tfaccel(config):
        return
    if _check_modes(args, qat=False, has_calibration=bool(args.calibration)) and (
        not args.calibration
    ):
        raise CliError(
            "--int8 on a float model needs calibration data: pass --calibration "
            "DATA.npy (a few hundred representative inputs), or export a model "
            "trained with tfaccel.quantization.quantize. Received: no --calibration"
        )


def _export_kwargs(args: argparse.Namespace, calibration, verification) -> dict:
    kwargs: dict[str, Any] = {"quantization": args.quantization,
                              "max_samples": args.max_samples,
                              "fuse_lstm": not args.unroll_lstm}
    if calibration is not None:
        kwargs["representative_data"] = calibration
    if verification is not None:
        kwargs["verification_data"] = verification
    if args.input_type is not None:
        kwargs["input_type"] = args.input_type
        kwargs["output_type"] = args.output_type or args.input_type
    elif args.output_type is not None:
        kwargs["output_type"] = args.output_type
    tolerance = {key: value for key, value in (("min_agreement", args.min_agreement),
                                               ("max_error", args.max_error))
                 if value is not None}
    if tolerance:
        kwargs["tolerance"] = tolerance
    return kwargs


def convert(args: argparse.Namespace, path: str, progress: bool) -> tuple:
    """The child-process half of `export`: load, convert, verify, write `path`.

    Returns:
        `(report, keras_weight_bytes)`.
    """
    import numpy as np

    from tfaccel.cli.progress import calibration_dataset
    from tfaccel.data import normalize_data
    from tfaccel.export import VerificationError, export_tflite
    from tfaccel.quantization import is_quantized

    model = load_model_safely(args.model)
    calibration = load_array(args.calibration, "--calibration") if args.calibration else None
    verification = (load_array(args.verification, "--verification")
                    if args.verification else None)
    qat = bool(is_quantized(model))
    int8 = _check_modes(args, qat, calibration is not None)
    kwargs = _export_kwargs(args, calibration, verification)
    try:
        if int8 and not qat and calibration is not None and progress:
            # The converter pulls the calibration samples one by one: the
            # same samples as export_tflite's own generator, plus a bar.
            samples = normalize_data(calibration, model, "representative_data",
                                     args.max_samples)
            names = [t.name for t in model.inputs]
            kwargs["converter_options"] = {
                "representative_dataset": calibration_dataset(samples, sys.stderr, names)
            }
        report = export_tflite(model, path, **kwargs)
    except VerificationError as e:
        raise CliError(f"verification failed, {args.output} not written: "
                       f"{first_line(e)}", EXIT_VERIFICATION_FAILED) from None
    except (ValueError, TypeError) as e:
        raise CliError(first_line(e), EXIT_USAGE) from None
    except Exception as e:  # noqa: BLE001 - converter errors have many types
        message = first_line(e)
        if not message.startswith("TFLite conversion failed"):
            message = f"TFLite conversion failed: {type(e).__name__}: {message}"
        raise CliError(message, EXIT_EXPORT_FAILED) from None
    weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                       for v in model.weights)
    return report, weight_bytes


def run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    _check_paths(args)
    if args.calibration:
        load_array(args.calibration, "--calibration")
    if args.verification:
        load_array(args.verification, "--verification")
    _check_plain_model(args, check_keras_archive(args.model))
    # The file is written in a private directory on the output's file system
    # and moved into place once verified: a crash leaves nothing at the
    # output path nor beside it (missing parent directories are created
    # only then).
    staging = tempfile.mkdtemp(prefix=".tfaccel-export-",
                               dir=existing_ancestor(args.output))
    try:
        staged = os.path.join(staging, os.path.basename(args.output))
        report, weight_bytes = run_contained(
            "tfaccel.cli.export:convert", args, staged, not args.no_progress,
            what="the TFLite conversion", code=EXIT_EXPORT_FAILED,
        )
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        os.replace(staged, args.output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = dataclasses.replace(report, path=args.output)
    print(report)
    for option, text in ((args.report, report.to_json() + "\n"),
                         (args.markdown, report.to_markdown() + "\n")):
        if option:
            write_text_atomic(option, text)
            print(f"wrote {option}")
    if args.plot:
        from tfaccel.plots import plot_sizes

        sizes = {
            "Keras weights (float)": float(weight_bytes),
            "TFLite file": float(report.bytes),
            "TFLite gzip": float(report.gzip_bytes),
        }
        plot_sizes(sizes, args.plot, title=os.path.basename(args.output))
        print(f"wrote {args.plot}")
    return EXIT_OK
