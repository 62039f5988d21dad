"""`export_tflite`: convert a Keras model to TFLite, verify it, write it.

One call accepts every model tfaccel produces: a float model, a pruned model
(its `PruneLowMagnitude` / `PruneChannels` wrappers are stripped first), a
quantization-aware model from `tfaccel.quantization.quantize` (int8 without
representative data: its fake-quant ranges are learned), a combination of
both, and a `keras.distillation.Distiller` (its student is exported).

Verification is part of export, not an afterthought: the converted bytes are
written to a temporary file next to `path`, that file is run with LiteRT's
interpreter and compared with the Keras model, and only a file that meets
the user's tolerance is renamed onto `path` (`os.replace`, atomic on POSIX
and Windows). A failing export never leaves a partial file or clobbers the
file already at `path`.

The work is split by stage: `prepare` (the chain of steps features register:
unwrap a Distiller, strip pruning, a float32 twin), `tfaccel.data` (the
data forms), `convert` (finite-number checks and the converter), `verify`
(parity, `VerificationError`), `atomic` (the all-or-nothing file) and `run`
(validated files run with LiteRT).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

from tfaccel.data import normalize_data
from tfaccel.export.atomic import AtomicFile
from tfaccel.export.convert import check_convertible, convert
from tfaccel.export.inspect import analyze
from tfaccel.export.prepare import functional_view, prepare_for_export
from tfaccel.export.report import ExportReport
from tfaccel.export.run import run_tflite
from tfaccel.export.verify import VerificationError
from tfaccel.export.verify import verify as verify_file

__all__ = ["VerificationError", "export_tflite", "run_tflite"]

_QUANTIZATIONS = (None, "int8", "float16", "dynamic")
_IO_TYPES = (None, "int8", "uint8", "float32")
_TOLERANCE_KEYS = ("min_agreement", "max_error")


def _check_choice(value: Any, choices: tuple, argname: str) -> None:
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"Argument `{argname}` must be one of {shown}. "
            f"Received: {argname}={value!r}"
        )


def _check_tolerance(tolerance: Any) -> dict[str, float]:
    if tolerance is None:
        return {}
    if not isinstance(tolerance, Mapping):
        raise TypeError(
            "Argument `tolerance` must be a dict with keys 'min_agreement' "
            "and/or 'max_error', e.g. {'min_agreement': 0.99}. "
            f"Received: tolerance={tolerance!r}"
        )
    unknown = sorted(set(tolerance) - set(_TOLERANCE_KEYS))
    if unknown or not tolerance:
        raise ValueError(
            "Argument `tolerance` accepts the keys 'min_agreement' and "
            f"'max_error'. Received: tolerance={dict(tolerance)!r}"
        )
    checked = {}
    for key, value in tolerance.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"Argument `tolerance['{key}']` must be a number. Received: {value!r}"
            )
        low, high = (0.0, 1.0) if key == "min_agreement" else (0.0, float("inf"))
        if not low <= value <= high:
            raise ValueError(
                f"Argument `tolerance['{key}']` must be in [{low}, {high}]. "
                f"Received: {value!r}"
            )
        checked[key] = float(value)
    return checked


def export_tflite(
    model,
    path: str | os.PathLike,
    quantization: str | None = None,
    representative_data: Any = None,
    *,
    input_type: str | None = None,
    output_type: str | None = None,
    verify: bool = True,
    verification_data: Any = None,
    tolerance: Mapping[str, float] | None = None,
    max_samples: int = 500,
    converter_options: Mapping[str, Any] | None = None,
    input_shape: tuple | None = None,
    fuse_lstm: bool = True,
) -> ExportReport:
    """Convert a Keras model to a TFLite file, check it, and report on it.

    The model may be a plain float model, a pruned model (its
    `PruneLowMagnitude` wrappers are stripped first, `PruneChannels` ones
    by `strip_pruning`'s rebuild of a smaller model), a model returned by
    `tfaccel.quantization.quantize` (exported as int8 from its learned
    ranges, no representative data needed), both, or a
    `keras.distillation.Distiller` (its `student` is exported).

    With `verify=True` (the default) the written file is run with LiteRT's
    interpreter on `verification_data` (else on `representative_data`) and
    compared with the Keras model: top-1 agreement and absolute error of the
    dequantized outputs. If `tolerance` is not met a `VerificationError` is
    raised and nothing is written to `path`: the bytes go to a temporary
    file in the same directory, are verified there, and only then replace
    `path` atomically. Any error leaves an existing file at `path` untouched.

    Example:

    >>> import keras, numpy as np, tempfile, os
    >>> from tfaccel.export import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.random.default_rng(0).random((64, 4), dtype="float32")
    >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
    >>> report = export_tflite(model, path, "int8", representative_data=x,
    ...                        tolerance={"min_agreement": 0.9})
    >>> report.ops["FULLY_CONNECTED"]
    {'int8': 1}

    Args:
        model: a built Keras model (or a Distiller-like model with a
            `student`). A subclassed model is exported through a functional
            view: its input shape comes from `input_shape`, else from the
            batch it was first called or built with.
        path: where to write the `.tflite` file. Missing parent directories
            are created (and removed again if the export fails); temporary
            files a killed export of the same path left are removed.
        quantization: `None` (float32), `"float16"` (float16 weights),
            `"dynamic"` (int8 weights, float activations) or `"int8"` (full
            integer). For a float model `"int8"` calibrates post-training on
            `representative_data`; a `quantize()`d model needs none, and
            `None` exports it as `"int8"` too.
        representative_data: calibration samples for `"int8"`: a NumPy array,
            a `tf.data.Dataset` (of `x` or `(x, y)` batches), an iterable of
            batches or a callable returning one. Also used for verification
            when `verification_data` is not given.
        input_type: with `"int8"`, the file's input dtype: `"int8"`,
            `"uint8"` or `"float32"` (default: float32, the file quantizes).
        output_type: the same for outputs.
        verify: run the file and compare it with the Keras model.
        verification_data: samples for verification, in the forms accepted
            for `representative_data`.
        tolerance: `{"min_agreement": float, "max_error": float}` (either
            key): limits the verification must meet.
        max_samples: the most samples used for calibration and verification.
        converter_options: extra `tf.lite.TFLiteConverter` attributes to set.
        input_shape: for a subclassed model, the shape of one input sample
            (without the batch axis), e.g. `(28, 28, 1)`.
        fuse_lstm: run each LSTM (also in `Bidirectional`) as TFLite's
            fused `UNIDIRECTIONAL_SEQUENCE_LSTM` op, one op per direction
            in float and int8. Such a file takes one sequence per
            invocation (batch size 1) and keeps each LSTM's final state
            between invocations: reset it before an independent sequence
            (`Interpreter.reset_all_variables()`; `run_tflite` does). False
            unrolls every LSTM over its timesteps instead (any batch size,
            no state kept, ops repeated per timestep). GRU and SimpleRNN
            are always unrolled. See `tfaccel.export.fused_lstm`.

    Returns:
        An `ExportReport` for the written file.

    Raises:
        ValueError: an invalid argument, raised before converting (unknown
            `quantization`, bad or non-finite data, `path` empty, ending
            with a separator or a directory, `"int8"` on a float model
            without representative data, NaN/inf weights or quantization
            ranges, ...).
        TypeError: non-numeric data, or a `tolerance` of the wrong type.
        OSError: `path` cannot be written (raised before converting).
        RuntimeError: the TFLite converter failed.
        VerificationError: the file did not meet `tolerance`, or the file
            or the Keras model outputs NaN/inf (whatever the tolerance).

    Warns:
        TfaccelWarning: without `min_agreement`, a top-1 agreement under
            90% (also noted in the report); quantization ranges never set.
    """
    import keras

    _check_choice(quantization, _QUANTIZATIONS, "quantization")
    _check_choice(input_type, _IO_TYPES, "input_type")
    _check_choice(output_type, _IO_TYPES, "output_type")
    limits = _check_tolerance(tolerance)
    if limits and not verify:
        raise ValueError(
            "Argument `tolerance` needs verify=True. Received: "
            f"tolerance={dict(tolerance)!r} with verify=False"
        )
    max_samples = _check_max_samples(max_samples)
    if not isinstance(fuse_lstm, bool):
        raise TypeError(
            f"Argument `fuse_lstm` must be True or False. Received: fuse_lstm={fuse_lstm!r}"
        )
    out = AtomicFile(path)  # checks `path` before any work
    path = out.path

    notes: list[str] = []
    model = prepare_for_export(model, notes, {"fuse_lstm": fuse_lstm})
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a keras.Model (or a Distiller with a "
            f"`student`). Received: model of type {type(model).__name__}"
        )
    model = functional_view(model, input_shape, notes)
    from tfaccel.quantization import is_quantized

    qat = bool(is_quantized(model))
    quantization = _resolve_quantization(
        quantization, qat, input_type, output_type, notes
    )
    check_convertible(model, qat, notes)
    representative, samples = _export_data(
        model,
        quantization,
        qat,
        representative_data,
        verification_data,
        verify,
        limits,
        max_samples,
        notes,
    )
    with out:
        data, seconds = convert(
            model,
            path,
            quantization,
            qat,
            representative,
            input_type,
            output_type,
            converter_options,
        )
        out.write(data)
        report = analyze(data, path, _layer_names(model))
        report.quantization = quantization or "float32"
        report.conversion_seconds = seconds
        report.notes = notes
        if samples is not None:
            calibrated = quantization == "int8" and not qat and representative is not None
            verify_file(
                out.tmp, model, samples, report, limits, path,
                calibration_samples=len(representative[0]) if calibrated else None,
            )
        out.commit()
    return report


def _layer_names(model) -> set[str]:
    """The names of the layers the graph calls (nested models walked into),
    and of the layers wrappers among them hold."""
    import keras

    from tfaccel import graph

    layers = [
        node.operation
        for _, node in graph.read(model).walk()
        if node.is_layer and not node.is_model
    ]
    inner = [layer.layer for layer in layers if isinstance(layer, keras.layers.Wrapper)]
    return {layer.name for layer in layers + inner}


def _check_max_samples(max_samples: Any) -> int:
    if (
        isinstance(max_samples, bool)
        or not isinstance(max_samples, numbers.Integral)
        or max_samples < 1
    ):
        raise ValueError(
            "Argument `max_samples` must be a positive integer. "
            f"Received: max_samples={max_samples!r}"
        )
    return int(max_samples)


def _resolve_quantization(
    quantization: str | None,
    qat: bool,
    input_type: str | None,
    output_type: str | None,
    notes: list[str],
) -> str | None:
    """The quantization to convert with: a QAT model is int8."""
    if qat:
        if quantization is None:
            quantization = "int8"
            notes.append(
                "Model is quantization-aware (quantize()): exported as int8 "
                "from its learned ranges."
            )
        elif quantization != "int8":
            raise ValueError(
                "Argument `quantization` must be 'int8' (or None) for a "
                "quantization-aware model from tfaccel.quantization.quantize. "
                f"Received: quantization={quantization!r}"
            )
    for argname, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in (None, "float32") and quantization != "int8":
            raise ValueError(
                f"Argument `{argname}`={value!r} requires quantization='int8'. "
                f"Received: quantization={quantization!r}"
            )
    return quantization


def _export_data(
    model,
    quantization: str | None,
    qat: bool,
    representative_data: Any,
    verification_data: Any,
    verify: bool,
    limits: dict,
    max_samples: int,
    notes: list[str],
):
    """Calibration samples and verification samples (each may be None)."""
    representative = normalize_data(
        representative_data, model, "representative_data", max_samples
    )
    if quantization == "int8" and not qat and representative is None:
        raise ValueError(
            "quantization='int8' on a float model needs calibration data: pass "
            "`representative_data` (e.g. a few hundred training samples), or "
            "quantize() the model and train it first (QAT needs none). "
            "Received: representative_data=None"
        )
    if qat and representative is not None and quantization == "int8":
        notes.append(
            "representative_data not used for calibration: the "
            "quantization-aware model carries its own ranges."
        )
    if not verify:
        notes.append("Verification disabled (verify=False).")
        return representative, None
    samples = normalize_data(verification_data, model, "verification_data", max_samples)
    if samples is None:
        samples = representative
    if samples is None:
        if limits:
            raise ValueError(
                "Argument `tolerance` needs samples to verify on: pass "
                "`verification_data` or `representative_data`. Received: "
                "neither."
            )
        notes.append(
            "Verification skipped: no verification_data or "
            "representative_data to run the file on."
        )
    return representative, samples
