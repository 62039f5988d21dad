"""`calibrate`: set a QAT model's activation ranges from data, all or nothing.

Calibration runs the data through the model with every `ActivationQuantizer`
widening its range to the batch min/max. The ranges are computed aside:
the old ranges are kept until every batch has run and every new range is
finite, so an error (empty data, a bad batch, NaN) leaves the model as it
was.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfaccel import graph
from tfaccel.data import iter_batches, model_input
from tfaccel.quantization.layers import ActivationQuantizer

__all__ = ["calibrate"]


def _check_batch_size(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


def _range(q: ActivationQuantizer) -> tuple[float, float]:
    # `.numpy()`: `float()` of a MirroredVariable fails under tf.distribute.
    return float(q.range_min.numpy()), float(q.range_max.numpy())


def _learned(model) -> list[ActivationQuantizer]:
    return [
        layer
        for layer in graph.all_layers(model)
        if isinstance(layer, ActivationQuantizer) and layer.fixed_range is None
    ]


def calibrate(model: keras.Model, data: Any, batch_size: int = 32) -> keras.Model:
    """Set every activation range of a QAT model from `data` (min/max).

    Runs `data` through `model` in inference mode with each
    `ActivationQuantizer` widening its range to the batch min/max; BatchNorm
    statistics and weights are left untouched. The data is read like
    `export_tflite`'s `representative_data` (`tfaccel.data.iter_batches`):
    arrays, `tf.data` of `x` or `(x, y)`, iterables, callables, and a list
    or dict for a model with several inputs. The update is all or nothing:
    on any error the previous ranges stay.

    Example:

    >>> from tfaccel.quantization import quantize
    >>> qat = quantize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    >>> _ = calibrate(qat, np.random.rand(8, 4).astype("float32"))

    Args:
        model: a model returned by `quantize`.
        data: samples in any form `tfaccel.data.iter_batches` reads.
        batch_size: batch size used to split arrays.

    Returns:
        `model`, calibrated in place.

    Raises:
        ValueError: `model` has no activation quantizers; `data` is empty,
            malformed or holds NaN/inf (the batch and count are named); a
            range came out non-finite (the layer is named).
    """
    _check_batch_size(batch_size, "batch_size")
    quantizers = [
        layer for layer in graph.all_layers(model) if isinstance(layer, ActivationQuantizer)
    ]
    if not quantizers:
        raise ValueError(
            "`model` has no activation quantizers; pass a model returned by "
            f"`quantize`. Received: model={model.name!r}"
        )
    learned = _learned(model)
    previous = [_range(q) for q in learned]
    for q in learned:
        q.range_min.assign(0.0)
        q.range_max.assign(0.0)
    for q in quantizers:
        q.calibrating = True
    done = False
    try:
        for batch in iter_batches(data, model, "calibration_data", batch_size):
            model(model_input(model, batch), training=False)
        ranges = [(q, *_range(q)) for q in learned]
        bad = [
            f"{q.range_min.path.rsplit('/', 1)[0]} [{low}, {high}]"
            for q, low, high in ranges
            if not np.isfinite([low, high]).all()
        ]
        if bad:
            raise ValueError(
                "Calibration gave non-finite (NaN/inf) ranges: "
                f"{'; '.join(bad[:5])}. The model computes NaN/inf on "
                "`calibration_data`: check its weights (training diverged?). "
                "The previous ranges were kept."
            )
        done = True
    finally:
        for q in quantizers:
            q.calibrating = False
        if not done:
            for q, (low, high) in zip(learned, previous):
                q.range_min.assign(low)
                q.range_max.assign(high)
    return model


def check_ranges(model: keras.Model) -> list[str]:
    """Check every learned activation range before conversion.

    A range must be finite and hold zero (`range_min <= 0 <= range_max`):
    the TFLite converter crashes the process on `[0, inf]` and writes
    garbage for NaN. A range of exactly `[0, 0]` was never set (no
    calibration, no training): it is returned, not raised, since an output
    that is always zero has it too.

    Args:
        model: a model returned by `quantize` (possibly loaded from a file).

    Returns:
        The paths of the quantizers whose range is `[0, 0]`.

    Raises:
        ValueError: a range is NaN/inf or does not contain zero; the layer
            is named, with what to do.
    """
    bad, unset = [], []
    for q in _learned(model):
        low, high = _range(q)
        name = q.range_min.path.rsplit("/", 1)[0]
        if not (np.isfinite([low, high]).all() and low <= 0.0 <= high):
            bad.append(f"{name} [{low}, {high}]")
        elif low == high:
            unset.append(name)
    if bad:
        raise ValueError(
            "Argument `model` has invalid activation ranges (each must be "
            "finite and contain 0): "
            f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Recalibrate "
            "with tfaccel.quantization.calibrate(model, data) on finite data, "
            "or restore the model from before training diverged (NaN)."
        )
    return unset
