"""The TFLite converter call: settings from `export_tflite`'s arguments.

Before the converter sees a model, every weight and quantization range is
checked finite (`tfaccel.data.check_finite_weights`, and for a
quantization-aware model `tfaccel.quantization.calibration.check_ranges`):
the converter crashes the whole process (SIGSEGV) on a range of
`[0, inf]`, and turns NaN into a message that does not say NaN.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfaccel._warnings import TfaccelWarning
from tfaccel.data import check_finite_weights
from tfaccel.export.fused_lstm import has_fused_lstm, without_cell_clip
from tfaccel.export.prepare import conversion_contexts

__all__ = ["check_convertible", "convert"]


def check_convertible(model, qat: bool, notes: list[str]) -> None:
    """Raise before converting a model with NaN/inf weights or ranges.

    Ranges never set (`[0, 0]`: no calibration, no training) warn and are
    noted: such a tensor is always 0 in the file.
    """
    check_finite_weights(model)
    if not qat:
        return
    from tfaccel.quantization.calibration import check_ranges

    unset = check_ranges(model)
    if unset:
        shown = ", ".join(unset[:5]) + (" ..." if len(unset) > 5 else "")
        message = (
            f"{len(unset)} activation range(s) are [0, 0], never calibrated "
            f"or trained: {shown}. Those tensors are 0 in the file; run "
            "tfaccel.quantization.calibrate(model, data) or train first."
        )
        notes.append(message)
        warnings.warn(message, TfaccelWarning, stacklevel=3)


def _converter(tf, model):
    """`from_keras_model`, on a list-input view of a model built on a dict.

    TF 2.21's `from_keras_model` fails on a Keras 3 model whose inputs are
    a dict (KerasHub's `token_ids`/`padding_mask`): "'NoneType' object is
    not callable" inside its own tracing. It converts a model that takes
    the same inputs as a list (same names, `model.inputs` order) and calls
    `model` with the dict.
    """
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = None
    if isinstance(structure, Mapping):
        import keras

        inputs = [
            keras.Input(t.shape[1:], dtype=t.dtype, name=t.name) for t in model.inputs
        ]
        by_id = {id(t): new for t, new in zip(model.inputs, inputs)}
        outputs = model({key: by_id[id(t)] for key, t in structure.items()})
        model = keras.Model(inputs, outputs, name=model.name)
    return tf.lite.TFLiteConverter.from_keras_model(model)


def convert(
    model,
    path: str,
    quantization: str | None,
    qat: bool,
    representative: list[np.ndarray] | None,
    input_type: str | None = None,
    output_type: str | None = None,
    converter_options: Mapping[str, Any] | None = None,
) -> tuple[bytes, float]:
    """Convert `model`; returns the file's bytes and the seconds it took.

    Raises:
        ValueError: an unknown `converter_options` key.
        RuntimeError: the converter failed (nothing was written to `path`).
    """
    import tensorflow as tf

    converter = _converter(tf, model)
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8" and not qat:
        names = [t.name for t in model.inputs]

        def representative_dataset():
            # One sample per step: the calibrator sizes its inputs once.
            for i in range(len(representative[0])):
                sample = [x[i : i + 1] for x in representative]
                yield sample if len(sample) == 1 else dict(zip(names, sample))

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if input_type is not None:
        converter.inference_input_type = tf.as_dtype(input_type)
    if output_type is not None:
        converter.inference_output_type = tf.as_dtype(output_type)
    for key, value in (converter_options or {}).items():
        if not hasattr(converter, key):
            raise ValueError(
                "Argument `converter_options` must name attributes of "
                f"tf.lite.TFLiteConverter. Received: unknown key {key!r}"
            )
        setattr(converter, key, value)
    start = time.perf_counter()
    try:
        # The converter prints the SavedModel signature it exports. Two
        # converter-internal warnings the user can do nothing about: TF1
        # `quantized_input_stats` (unused by this API), and the calibrator's
        # own use of the deprecated tf.lite.Interpreter.
        # The converter traces the model here: features' conversion contexts
        # (`tfaccel.export.prepare`) apply to that trace.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
            conversion_contexts(),
        ):
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            warnings.filterwarnings(
                "ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated"
            )
            data = converter.convert()
    except Exception as e:
        raise RuntimeError(
            f"TFLite conversion failed (quantization={quantization!r}): "
            f"{e}. Nothing was written to {path!r}."
        ) from e
    if has_fused_lstm(model):
        data, _ = without_cell_clip(data)  # Keras' LSTM clips nothing
    return data, time.perf_counter() - start
