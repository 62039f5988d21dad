"""Fake-quantization functions for the TFLite int8 scheme.

Weights: symmetric int8 with zero point 0 and the narrow range [-127, 127],
per output channel for convolutions and per tensor for `Dense` (TFLite's
FULLY_CONNECTED wants per-tensor weights). Activations: asymmetric per-tensor
int8 whose range always contains zero.

All of them call TF's `FakeQuantWithMinMaxVars*` ops, which the TFLite
converter reads as quantization parameters: the converted file gets int8
kernels without a representative data set.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = [
    "fake_quant_activation",
    "fake_quant_weight",
    "fixed_activation_range",
    "range_with_zero",
]

# A channel whose weights are all zero still needs a positive scale.
_MIN_WEIGHT_RANGE = 1e-8


def _weight_bound(absmax):
    """The int8 bound of weights whose largest magnitude is `absmax`.

    An all-zero channel (a filter pruned away) gets 1, not a tiny bound:
    TFLite stores its bias in units of `input_scale * weight_scale`, and a
    tiny weight scale overflows int32 (the file then disagrees with the
    model). Its weights are zero on any grid.
    """
    return tf.where(
        absmax > 0, tf.maximum(absmax, _MIN_WEIGHT_RANGE), tf.ones_like(absmax)
    )


def _nudged_range(low, high, quant_min: float = 1.0, quant_max: float = 255.0):
    """The range TF's FakeQuant ops round to (their `Nudge`), in TF ops.

    Defaults are 8 bits with `narrow_range=True`. Same float32 arithmetic
    as the kernel, so the masks below are the op gradient's, bit for bit.
    """
    scale = (high - low) / (quant_max - quant_min)
    zero_from_min = quant_min - low / scale
    # std::round (half away from zero) of a value >= quant_min > 0;
    # `v - floor(v)` is exact, `floor(v + 0.5)` is not.
    floor = tf.floor(zero_from_min)
    rounded = tf.where(zero_from_min - floor >= 0.5, floor + 1.0, floor)
    zero = tf.clip_by_value(rounded, quant_min, quant_max)
    return (quant_min - zero) * scale, (quant_max - zero) * scale


@tf.custom_gradient
def _fake_quant_per_channel(x, low, high):
    """`fake_quant_with_min_max_vars_per_channel` (8 bits, narrow range) with
    its gradient in elementwise ops.

    TF's `FakeQuantWithMinMaxVarsPerChannelGradient` walks the tensor one
    channel (a strided column) at a time: on ResNet50 it was half of a QAT
    train step. The gradient here is the same (straight-through inside the
    nudged range, bit for bit; the rest to `low`/`high` summed per channel,
    equal up to the order of the sums), as masks and selects that run
    vectorized; the forward op is unchanged, so the converter reads the
    same graph.
    """
    y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, low, high, num_bits=8, narrow_range=True
    )

    def grad(upstream):
        nudged_min, nudged_max = _nudged_range(low, high)
        axes = list(range(len(x.shape) - 1))
        zeros = tf.zeros_like(upstream)
        inside = tf.logical_and(x >= nudged_min, x <= nudged_max)
        return (
            tf.where(inside, upstream, zeros),
            tf.reduce_sum(tf.where(x < nudged_min, upstream, zeros), axes),
            tf.reduce_sum(tf.where(x > nudged_max, upstream, zeros), axes),
        )

    return y, grad


def fake_quant_weight(weight, mode: str):
    """Fake-quantize a kernel as TFLite stores int8 weights.

    Example:

    >>> import numpy as np
    >>> w = np.array([[0.5, -1.27], [0.004, 0.3]], "float32")
    >>> np.asarray(fake_quant_weight(w, "per_tensor"), "float64").round(2).tolist()
    [[0.5, -1.27], [0.0, 0.3]]

    Args:
        weight: the (already folded) kernel.
        mode: `"per_tensor"` (Dense), `"per_channel"` (Conv1D/Conv2D, the
            last axis holds the output channels) or `"depthwise"`
            (DepthwiseConv2D kernel `(kh, kw, in, multiplier)`, whose output
            channels are `in * multiplier`) or `"transpose"`
            (Conv2DTranspose kernel `(kh, kw, out, in)`: per tensor, see
            below).

    Returns:
        A tensor of `weight`'s shape whose values lie on the int8 grid
        `scale * [-127, 127]` with `scale = max|w| / 127` per channel or per
        tensor. Zeros stay exactly zero.
    """
    weight = tf.convert_to_tensor(weight)
    if mode == "per_tensor":
        bound = _weight_bound(tf.reduce_max(tf.abs(weight)))
        return tf.quantization.fake_quant_with_min_max_vars(
            weight, -bound, bound, num_bits=8, narrow_range=True
        )
    if mode == "per_channel":
        axes = list(range(len(weight.shape) - 1))
        bound = _weight_bound(tf.reduce_max(tf.abs(weight), axis=axes))
        return _fake_quant_per_channel(weight, -bound, bound)
    if mode == "depthwise":
        shape = tf.shape(weight)
        kh, kw, cin, mult = weight.shape
        flat = tf.reshape(weight, [kh, kw, cin * mult])
        bound = _weight_bound(tf.reduce_max(tf.abs(flat), axis=[0, 1]))
        flat = _fake_quant_per_channel(flat, -bound, bound)
        return tf.reshape(flat, shape)
    if mode == "transpose":
        # Per tensor: per-channel FakeQuant takes the last axis only, and the
        # converter rejects a transpose around it ("'tfl.transpose' op has
        # mismatched quantized axes"); TRANSPOSE_CONV takes per-tensor int8.
        return fake_quant_weight(weight, "per_tensor")
    raise ValueError(
        "`mode` must be one of 'per_tensor', 'per_channel', 'depthwise', "
        "'transpose'. "
        f"Received: mode={mode!r}"
    )


def range_with_zero(low, high):
    """Widen `[low, high]` so that it contains 0 (int8 must represent 0)."""
    return tf.minimum(low, 0.0), tf.maximum(high, 0.0)


def fake_quant_activation(x, low, high):
    """Fake-quantize `x` asymmetrically to 8 bits over `[low, high]`.

    The op nudges the range so that 0 is exactly representable, as TFLite
    does when it derives a zero point.

    Example:

    >>> import numpy as np
    >>> x = np.array([-1.0, 0.0, 0.4, 9.0], "float32")
    >>> np.asarray(fake_quant_activation(x, -1.0, 1.55), "float64").round(2).tolist()
    [-1.0, 0.0, 0.4, 1.55]

    Args:
        x: the tensor to quantize (float32).
        low: lower end of the range (widened to contain 0).
        high: upper end of the range (widened to contain 0).

    Returns:
        `x` clipped to the nudged range and rounded to its 256 levels.
    """
    low, high = range_with_zero(low, high)
    # A symmetric range [-a, a] on 255 steps puts zero half a step from the
    # middle: the op and the converter round that half step differently
    # (the op [-0.996, 1.0039], TFLite [-1.0039, 0.996] for [-1, 1]), and an
    # 8-bit image scaled to [-1, 1] (p / 127.5 - 1) then lies exactly half
    # way between two levels, every pixel, where the op rounds up and TFLite
    # away from zero. Such a range gets the scale a / 127 instead: -a, 0
    # and a are levels, and no pixel value is a tie.
    symmetric = tf.abs(low + high) <= 1e-6 * (high - low)
    low = tf.where(symmetric, -high * (128.0 / 127.0), low)
    # Nudge here and hand the op the nudged range: the converter reads these
    # bounds and derives its own zero point, the same integer as the op's.
    width = high - low
    safe = tf.where(width > 0, width, tf.ones_like(width))
    nudged_low, nudged_high = _nudged_range(low, low + safe, 0.0, 255.0)
    low = tf.where(width > 0, nudged_low, low)
    high = tf.where(width > 0, nudged_high, high)
    return tf.quantization.fake_quant_with_min_max_vars(
        x, low, high, num_bits=8, narrow_range=False
    )


def fixed_activation_range(activation: str) -> tuple[float, float] | None:
    """The output range TFLite fixes for int8 `activation`, or None.

    TFLite's int8 LOGISTIC and SOFTMAX always output scale 1/256 with zero
    point -128, TANH scale 1/128 with zero point 0.
    """
    return _FIXED_RANGES.get(activation)


_FIXED_RANGES = {
    "sigmoid": (0.0, 255.0 / 256.0),
    "softmax": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}
