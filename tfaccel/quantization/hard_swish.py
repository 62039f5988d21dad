"""`tflite_hard_swish`: TFLite's int8 HARD_SWISH, integer for integer.

TFLite does not round `x * relu6(x + 3) / 6` once: its int8 kernel works
in 16-bit fixed point (two multipliers cut to 16 bits, a doubling high
multiply that truncates), and a value close to half way between two levels
can land on the other one. On six random ranges 0-1.5% of the values of a
quantized hard swish were a level off the exactly rounded result, and the
reference kernel, the builtin kernel and XNNPACK all agreed with each other
there. One level off in an early layer of MobileNetV3 is carried and grown
by every layer after it (at the file's output, a top-1 flip on 2 images
of 128).

`QuantizedActivation("hard_silu")` therefore outputs this function's
levels at inference (`predict`, `evaluate`, a call without
`training=True`), computed on the int8 grid of the tensor it reads: 256
possible inputs, so the kernel runs once over a 256-entry table, and each
value is looked up. Its gradient is that of the float hard swish (the
layer's straight-through estimate): only the value changes. Training keeps
the exactly rounded value, at most a level off and as good an estimate:
the lookup (a gather per value) cost MobileNetV3Small's QAT train step
about a fifth (1.51x plain against 1.27x, 96x96, batch 16).
"""

from __future__ import annotations

import tensorflow as tf

from tfaccel.quantization.quantizers import activation_grid, fake_quant_activation

__all__ = ["tflite_hard_swish"]

_INT16_MIN, _INT16_MAX = -32768, 32767


def _multiplier_int16(real):
    """TFLite's `QuantizeMultiplier` then `DownScaleInt32ToInt16Multiplier`
    of a positive float32 `real`: `(multiplier, exponent)`, int64 scalars.

    `frexp` of a float32 has a 24-bit fraction `k / 2**24`, so the 31-bit
    fixed-point multiplier `k * 2**7` is exact and never rounds up to
    `2**31`; cutting it to 16 bits rounds half up.
    """
    bits = tf.cast(tf.bitcast(tf.cast(real, tf.float32), tf.int32), tf.int64)
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF) - 126
    fraction = tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(bits, 0x7FFFFF), 0x800000)
    q31 = fraction * 128
    q16 = tf.where(
        q31 >= 2**31 - 1 - 2**15, tf.constant(_INT16_MAX, tf.int64),
        tf.bitwise.right_shift(q31 + 2**15, 16),
    )
    return q16, exponent


def _rounding_doubling_high_mul(a, b):
    """gemmlowp's int16 `SaturatingRoundingDoublingHighMul`."""
    ab = a * b
    nudge = tf.where(ab >= 0, tf.constant(1 << 14, tf.int64), tf.constant(1 - (1 << 14), tf.int64))
    high = tf.truncatediv(ab + nudge, tf.constant(1 << 15, tf.int64))
    overflow = tf.logical_and(tf.equal(a, b), tf.equal(a, _INT16_MIN))
    return tf.where(overflow, tf.constant(_INT16_MAX, tf.int64), high)


def _doubling_high_mul(a, b):
    """TFLite's int16 `SaturatingDoublingHighMul` (truncating, no rounding)."""
    high = tf.truncatediv(a * b, tf.constant(1 << 15, tf.int64))
    overflow = tf.logical_and(tf.equal(a, b), tf.equal(a, _INT16_MIN))
    return tf.where(overflow, tf.constant(_INT16_MAX, tf.int64), high)


def _rounding_divide_by_pot(x, exponent):
    """gemmlowp's `RoundingDivideByPOT`: `x / 2**exponent`, halves away from 0."""
    exponent = tf.maximum(exponent, 0)
    mask = tf.bitwise.left_shift(tf.ones_like(exponent), exponent) - 1
    remainder = tf.bitwise.bitwise_and(x, mask)
    threshold = tf.bitwise.right_shift(mask, 1) + tf.cast(x < 0, tf.int64)
    return tf.bitwise.right_shift(x, exponent) + tf.cast(remainder > threshold, tf.int64)


def _saturating_left_shift(x, amount):
    shifted = x * tf.bitwise.left_shift(tf.ones_like(amount), tf.clip_by_value(amount, 0, 30))
    return tf.clip_by_value(shifted, _INT16_MIN, _INT16_MAX)


def _grid(low, high):
    """Scale (float32) and zero point (int64) of the int8 tensor that
    `fake_quant_activation(., low, high)` makes."""
    low, scale, safe = activation_grid(low, high)
    zero_point = tf.cast(tf.round(-128.0 - low / safe), tf.int64)
    return scale, safe, zero_point


def hard_swish_table(input_scale, input_zero_point, output_scale, output_zero_point):
    """The int8 outputs of TFLite's HARD_SWISH for the inputs -128..127.

    The arithmetic of TFLite's reference kernel (`reference_ops::HardSwish`
    with the parameters `HardSwishPrepare` derives from the two scales), in
    int64 TF ops. Returns an int64 tensor of 256 values.
    """
    hires_scale = tf.cast(input_scale, tf.float32) * (1.0 / 128.0)
    output_multiplier, output_exponent = _multiplier_int16(
        hires_scale / tf.cast(output_scale, tf.float32))
    reluish_multiplier, reluish_exponent = _multiplier_int16(hires_scale / (3.0 / 32768.0))

    value = tf.range(-128, 128, dtype=tf.int64) - input_zero_point
    hires = tf.clip_by_value(value * 128, _INT16_MIN, _INT16_MAX)
    preshift = _rounding_doubling_high_mul(hires, output_multiplier)
    # "relu-ish": the input rescaled from [-3, 3] to [-1, 1] in Q15, saturating.
    left = reluish_exponent > 0
    reluish = tf.where(left, _saturating_left_shift(hires, reluish_exponent - 1), hires)
    reluish = _rounding_doubling_high_mul(reluish, reluish_multiplier)
    reluish = tf.where(left, _saturating_left_shift(reluish, tf.ones_like(reluish_exponent)),
                       reluish)
    reluish = tf.where(reluish_exponent < 0,
                       _rounding_divide_by_pot(reluish, -reluish_exponent), reluish)
    reluish = tf.bitwise.right_shift(reluish + (1 << 15), 1)  # to [0, 1]
    output = _doubling_high_mul(reluish, preshift)
    output = _rounding_divide_by_pot(output, -output_exponent) + output_zero_point
    return tf.clip_by_value(output, -128, 127)


def tflite_hard_swish(x, input_range, output_range):
    """Hard swish of `x` as TFLite's int8 HARD_SWISH computes it.

    Args:
        x: values on the int8 grid of `input_range` (a quantizer's output).
        input_range: `(low, high)` of the quantizer that made `x`.
        output_range: `(low, high)` of the output's quantizer.

    Returns:
        The kernel's int8 outputs as the values `fake_quant_activation(.,
        *output_range)` holds for them (float32, no gradient). An empty
        range on either side gives `hard_silu(x)` quantized to the output
        range, as before the first training step.

    Example:

    >>> import numpy as np
    >>> # Steps of 0.01 on both sides. Exactly, hard swish of -0.9 and 0.9
    >>> # is -0.315 and 0.585, half way: TFLite's kernel gives -0.32 and 0.58.
    >>> x = np.array([-0.9, 0.9, 1.2], "float32")
    >>> y = tflite_hard_swish(x, (-1.28, 1.27), (-0.38, 2.17))
    >>> np.asarray(y, "float64").round(2).tolist()
    [-0.32, 0.58, 0.84]
    """
    x = tf.stop_gradient(tf.convert_to_tensor(x, tf.float32))
    in_scale, in_safe, in_zero = _grid(*input_range)
    out_scale, out_safe, out_zero = _grid(*output_range)
    table = hard_swish_table(in_scale, in_zero, out_scale, out_zero)
    # The 256 outputs as floats, through the output's own fake quant: the
    # very float of each level. Then one lookup per value, in float32 and
    # int32 (with the lookup in training, an int64 form of it made
    # MobileNetV3Small's QAT step 1.64x plain, this one 1.51x).
    outputs = tf.cast(table - out_zero, tf.float32) * out_safe
    outputs = fake_quant_activation(outputs, *output_range, range_gradient=False)
    # `x / scale + zero point` of a value on the grid is within float error
    # of its level; clipped like the int8 tensor that holds it.
    offset = tf.cast(in_zero, tf.float32) + 128.0
    index = tf.clip_by_value(tf.round(x / in_safe) + offset, 0.0, 255.0)
    # A NaN has no level: it looks up level 0 and stays NaN (a bad index
    # would stop `predict` with a gather error instead).
    nan = tf.math.is_nan(x)
    values = tf.gather(outputs, tf.cast(tf.where(nan, 0.0, index), tf.int32))
    values = tf.where(nan, x, values)
    valid = tf.logical_and(in_scale > 0.0, out_scale > 0.0)
    return tf.stop_gradient(tf.cond(
        valid, lambda: values,
        lambda: fake_quant_activation(tf.nn.relu6(x + 3.0) * x / 6.0, *output_range,
                                      range_gradient=False)))
