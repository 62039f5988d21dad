"""`QuantizationSummary`: activation ranges of a QAT model, per epoch.

Reporting only: quantization-aware training keeps its ranges in layer
variables and is correct without this callback.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import keras
import numpy as np

from tfaccel._warnings import TfaccelWarning

__all__ = ["QuantizationSummary"]

# `ActivationQuantizer` (tfaccel/quantization/layers.py) keeps its range in
# two scalar variables named like this; the callback finds them by path so it
# also works on models loaded from `.keras` files and nested models.
_RANGE_PATTERN = re.compile(r"^(?P<prefix>.+)/range_(?P<end>min|max)$")


def _quantizer_ranges(model: keras.Model) -> dict[str, tuple[Any, Any]]:
    """Path prefix of each quantizer -> (min variable, max variable)."""
    found: dict[str, dict[str, Any]] = {}
    for variable in model.variables:
        match = _RANGE_PATTERN.match(variable.path)
        if match:
            found.setdefault(match["prefix"], {})[match["end"]] = variable
    return {
        prefix: (ends["min"], ends["max"])
        for prefix, ends in sorted(found.items())
        if "min" in ends and "max" in ends
    }


def _scalar_metadata():
    """The summary metadata TensorBoard's scalar plugin reads.

    `tf.summary.scalar` is implemented by the `tensorboard` package and
    raises without it; `tf.summary.write` with this metadata writes the very
    same event, so logs work whether or not TensorBoard is installed.
    """
    import tensorflow as tf

    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    metadata.data_class = tf.compat.v1.SummaryMetadata.DESCRIPTOR.fields_by_name[
        "data_class"
    ].enum_type.values_by_name["DATA_CLASS_SCALAR"].number
    return metadata


class QuantizationSummary(keras.callbacks.Callback):
    """Logs each activation quantizer's int8 range at the end of every epoch.

    For every quantizer of a model made by `tfaccel.quantization.quantize`
    it adds `qrange/<quantizer path>/min` and `.../max` to the epoch `logs`
    (so they land in `History`), keeps the latest values in `self.ranges`,
    and, when `log_dir` is given, writes TensorBoard scalars `min`, `max`
    and `scale` (the int8 step, `(max - min) / 255`) under
    `quantization/<quantizer path>/`. A quantizer whose range is still
    `[0, 0]` has not seen data yet (neither calibration nor training).

    Example:

    ```python
    qat = tfaccel.quantization.quantize(model, calibration_data=x[:256])
    qat.compile(...)
    history = qat.fit(x, y, epochs=2,
                      callbacks=[QuantizationSummary(log_dir="logs/qat")])
    history.history.keys()  # ..., 'qrange/.../output_quantizer/min', ...
    ```

    Args:
        log_dir: directory for TensorBoard event files; `None` writes none.
        add_to_logs: whether to add the ranges to the epoch `logs` (the
            progress bar then prints them too).

    Warns:
        TfaccelWarning: at `on_train_begin` when the model has no
            quantization ranges (it was not made by `quantize`).
    """

    def __init__(self, log_dir: str | None = None, add_to_logs: bool = True):
        super().__init__()
        self.log_dir = log_dir
        self.add_to_logs = bool(add_to_logs)
        self.ranges: dict[str, tuple[float, float]] = {}
        self._quantizers: dict[str, tuple[Any, Any]] = {}
        self._writer = None

    def on_train_begin(self, logs=None):
        self._quantizers = _quantizer_ranges(self.model)
        if not self._quantizers:
            warnings.warn(
                f"QuantizationSummary found no quantization ranges in model "
                f"{self.model.name!r}: pass it the model returned by "
                "tfaccel.quantization.quantize(model). Nothing will be logged.",
                TfaccelWarning,
                stacklevel=2,
            )
        if self.log_dir is not None and self._quantizers:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if not self._quantizers:
            return
        self.ranges = {
            prefix: (
                float(np.asarray(keras.ops.convert_to_numpy(low))),
                float(np.asarray(keras.ops.convert_to_numpy(high))),
            )
            for prefix, (low, high) in self._quantizers.items()
        }
        if logs is not None and self.add_to_logs:
            for prefix, (low, high) in self.ranges.items():
                logs[f"qrange/{prefix}/min"] = low
                logs[f"qrange/{prefix}/max"] = high
        if self._writer is not None:
            import tensorflow as tf

            metadata = _scalar_metadata()
            with self._writer.as_default():
                for prefix, (low, high) in self.ranges.items():
                    tag = f"quantization/{prefix}"
                    values = {"min": low, "max": high, "scale": (high - low) / 255.0}
                    for name, value in values.items():
                        if math.isfinite(value):
                            tf.summary.write(
                                f"{tag}/{name}", tf.constant(value, tf.float32),
                                step=epoch, metadata=metadata,
                            )
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
