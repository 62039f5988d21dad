"""Fake-quantization functions for the TFLite int8 scheme.

Weights: symmetric int8 with zero point 0 and the narrow range [-127, 127],
per output channel for convolutions and per tensor for `Dense` (TFLite's
FULLY_CONNECTED wants per-tensor weights). Activations: asymmetric per-tensor
int8 whose range always contains zero.

The TFLite converter reads TF's `FakeQuantWithMinMaxVars*` ops as
quantization parameters, so the converted file gets int8 kernels without a
representative data set. Per-channel weights train through elementwise ops
equal to the op bit for bit (the op walks one channel at a time); while
`export_tflite` converts (`for_export`, a conversion context of
`tfaccel.export.prepare`) they are traced as the op itself, without a
custom gradient: SavedModel would otherwise trace and store one gradient
function per quantized kernel (a third of MobileNetV2's QAT export time),
which conversion never runs.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import tensorflow as tf

from tfaccel.export.prepare import register_conversion_context

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


def _div(x, y):
    """`x / y` for `y != 0`, which grappler's constant folding leaves alone:
    inside a graph it rewrites `x / c` and `(x / c) * c` with constant `c`
    into other float32 arithmetic (a reciprocal multiply, `x * 1`), so the
    same nudge gave other last bits in a `tf.function` than eagerly. (A
    zero `y` gives 0, not inf: the callers pass an empty range's width as
    1 and mask the result.)"""
    return tf.math.divide_no_nan(x, y)


def _mul(x, y):
    """`x * y` for finite `y`, out of grappler's constant folding (`_div`)."""
    return tf.math.multiply_no_nan(x, y)


def _nudge(low, high, quant_min: float = 1.0, quant_max: float = 255.0):
    """TF's FakeQuant `Nudge` in TF ops: `(nudged_min, nudged_max, scale, inv)`.

    Defaults are 8 bits with `narrow_range=True`. The same float32
    arithmetic as the kernel (including its separately computed inverse
    scale), so what is computed from them below is the op's, bit for bit.
    """
    scale = _div(high - low, quant_max - quant_min)
    inv_scale = _div(quant_max - quant_min, high - low)
    zero_from_min = quant_min - low / scale
    # std::round (half away from zero) of a value >= quant_min > 0;
    # `v - floor(v)` is exact, `floor(v + 0.5)` is not.
    floor = tf.floor(zero_from_min)
    rounded = tf.where(zero_from_min - floor >= 0.5, floor + 1.0, floor)
    zero = tf.clip_by_value(rounded, quant_min, quant_max)
    return (quant_min - zero) * scale, (quant_max - zero) * scale, scale, inv_scale


def _fake_quant_per_channel(x, bound):
    """`fake_quant_with_min_max_vars_per_channel(x, -bound, bound)` (8 bits,
    narrow range) in elementwise TF ops, equal to the op bit for bit (tested)
    for the bound `fake_quant_weight` gives it, `bound >= max|x|` per channel.

    TF's per-channel kernel walks the tensor one channel (a strided column)
    at a time: on ResNet50 it was the largest op of a QAT train step. This
    is the kernel's own float32 arithmetic, `floor((clip(x) - nudged_min) *
    inv_scale - zero + 0.5) * scale`, as broadcasts that run vectorized (no
    gradient of its own: `fake_quant_weight` defines it). Weight bounds are
    never `[0, 0]` (`_weight_bound`), the op's one special case.

    A symmetric range on the narrow 254 steps nudges in closed form: the
    kernel's `1 - min / scale = 1 + bound / (2 * bound / 254)` lies within
    float32 rounding of 128, so its zero point is 128, the nudged range
    `127 * scale * [-1, 1]`, and `zero = floor(-nudged_min * inv_scale +
    0.5)` in the formula above is 127. The same float32 values as the
    general nudge, in 4 ops instead of 20 (every kernel, every step, and
    every op traced).

    Two of the kernel's passes over the weights are left out, with the same
    result (each pass over ResNet50's 23 M conv weights costs a few ms):

    - The clip. The nudged range is `[-bound, bound]` up to float32
      rounding, so a weight at `+-max|x|` lies at most a few ulps outside
      it: `t = (x - nudged_min) * inv_scale` is then within 1e-4 of 0 or
      254 and floors to the end level, as the clipped value does.
    - `- 127 + 0.5`, two roundings, is `- 126.5`, one: equal after the
      floor for every float32 `t` in [-1, 255] (checked exhaustively; for
      `t >= 63.5` both subtractions are exact, and the test checks every
      float near the half-integers, the only places where the floor of
      the two can differ).
    """
    width = bound + bound  # `max - min`, exact
    scale = width / 254.0
    inv_scale = 254.0 / width
    nudged_min = -(127.0 * scale)
    return tf.floor((x - nudged_min) * inv_scale - 126.5) * scale


def _per_channel_op(x, bound):
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, -bound, bound, num_bits=8, narrow_range=True
    )


_FOR_EXPORT = contextvars.ContextVar("tfaccel_fake_quant_for_export", default=False)


@contextlib.contextmanager
def for_export():
    """Trace fake-quant ops as the converter reads them (no training gradient)."""
    token = _FOR_EXPORT.set(True)
    try:
        yield
    finally:
        _FOR_EXPORT.reset(token)


register_conversion_context("fake_quant", for_export)


def exporting() -> bool:
    """Whether the graph being traced is the one handed to the converter."""
    return _FOR_EXPORT.get()


_WEIGHT_MODES = ("per_tensor", "per_channel", "depthwise", "transpose")


def _channel_view(weight, mode: str):
    """`weight` with its output channels on the last axis: a depthwise
    kernel `(kh, kw, in, multiplier)` has `in * multiplier` of them."""
    if mode != "depthwise":
        return weight
    kh, kw, cin, mult = weight.shape
    return tf.reshape(weight, [kh, kw, cin * mult])


def _bound(view, mode: str):
    """The int8 bound of `_channel_view(weight, mode)`: one, or per channel."""
    if mode in ("per_tensor", "transpose"):
        return _weight_bound(tf.reduce_max(tf.abs(view)))
    axes = list(range(len(view.shape) - 1))
    return _weight_bound(tf.reduce_max(tf.abs(view), axis=axes))


def _quantize_weight(weight, mode: str, bound, per_channel):
    """The forward of `fake_quant_weight` on the bound `_bound` gives,
    per-channel by `per_channel`."""
    if mode in ("per_tensor", "transpose"):
        # Conv2DTranspose per tensor: per-channel FakeQuant takes the last
        # axis only, and the converter rejects a transpose around it
        # ("'tfl.transpose' op has mismatched quantized axes");
        # TRANSPOSE_CONV takes per-tensor int8.
        return tf.quantization.fake_quant_with_min_max_vars(
            weight, -bound, bound, num_bits=8, narrow_range=True
        )
    if mode == "per_channel":
        return per_channel(weight, bound)
    return tf.reshape(per_channel(_channel_view(weight, mode), bound), tf.shape(weight))


def fake_quant_weight(weight, mode: str):
    """Fake-quantize a kernel as TFLite stores int8 weights.

    The gradient is straight-through (the identity). That is the FakeQuant
    ops' gradient here: every weight lies inside its bound `max|w|`, where
    the op passes the gradient through; a largest weight that float
    rounding puts just outside the nudged range sends its gradient to the
    bound, which `max|w|` hands straight back to it. The identity skips
    those masks and the backward pass through `max|w|` (on ResNet50 a
    sixth of the step); it differs only for exact ties of the largest
    magnitude in one channel (the op's path splits their gradients evenly).

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
            the code).

    Returns:
        A tensor of `weight`'s shape whose values lie on the int8 grid
        `scale * [-127, 127]` with `scale = max|w| / 127` per channel or per
        tensor. Zeros stay exactly zero.
    """
    return fake_quant_weight_and_scale(weight, mode)[0]


def _check_mode(mode: str) -> None:
    if mode not in _WEIGHT_MODES:
        raise ValueError(
            "`mode` must be one of 'per_tensor', 'per_channel', 'depthwise', "
            "'transpose'. "
            f"Received: mode={mode!r}"
        )


def weight_bound(weight, mode: str):
    """The int8 bound `fake_quant_weight(weight, mode)` quantizes to:
    `max|w|` per output channel or per tensor (1 for an all-zero one)."""
    _check_mode(mode)
    return _bound(_channel_view(tf.convert_to_tensor(weight), mode), mode)


def bound_scale(bound):
    """The int8 scale of weights quantized with `bound`: `2 * bound / 254`,
    the step of the symmetric narrow range, as the converter derives it."""
    return (bound + bound) / 254.0


def fake_quant_weight_and_scale(weight, mode: str, bound=None):
    """`fake_quant_weight(weight, mode)` and its int8 scale (per output
    channel, or one, `bound_scale`). A QAT layer whose bias goes on the
    int32 grid needs both; the bound `max|w|` is computed once (a second
    computation is a second pass over the kernel), or given as `bound`
    when known (`weight_bound`)."""
    _check_mode(mode)
    weight = tf.convert_to_tensor(weight)
    if bound is None:
        bound = weight_bound(weight, mode)
    scale = bound_scale(bound)
    if _FOR_EXPORT.get():
        return _quantize_weight(weight, mode, bound, _per_channel_op), scale

    # The bound gets no gradient (see above): only `w` is an input.
    @tf.custom_gradient
    def straight_through(w):
        quantized = _quantize_weight(w, mode, bound, _fake_quant_per_channel)
        return quantized, lambda dy: dy

    return straight_through(weight), scale


def range_with_zero(low, high):
    """Widen `[low, high]` so that it contains 0 (int8 must represent 0)."""
    return tf.minimum(low, 0.0), tf.maximum(high, 0.0)


def fake_quant_activation(x, low, high, range_gradient: bool = True):
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
        low: lower end of the range (widened to contain 0). A Python
            number 0 (the range after a ReLU) nudges `[0, high]` in its
            closed form; Python numbers for both ends (a fixed range) are
            nudged once, while tracing. Same values as tensors would give.
        high: upper end of the range (widened to contain 0).
        range_gradient: `False` where the range takes no gradient (moving
            averages, fixed ranges): `x`'s gradient is then passed
            strictly inside the nudged range by a boolean mask computed in
            the forward pass (kept instead of `x`: a quarter of its memory
            until the backward pass), instead of the op's gradient, which
            keeps `x` and also sums the gradients outside the range for
            `low` and `high` (a quarter of the op's cost, on every
            activation of a train step). It differs from the op's only for
            inputs exactly on the range's ends (the op passes those) and for
            an empty range (constant output: nothing passes; the op passes
            everything).

    Returns:
        `x` clipped to the nudged range and rounded to its 256 levels.
    """
    low, high = _op_range(low, high)
    if range_gradient or _FOR_EXPORT.get():
        return _fake_quant_op(x, low, high)

    @tf.custom_gradient
    def inside_range(v):
        # The gradient passes strictly inside the range. Only this boolean
        # mask (a byte per value) is kept for the backward pass, not `v`
        # itself: `v` (a convolution's output) is then freed once quantized.
        # An empty range's output is the constant 0, so nothing passes (the
        # op passes everything).
        lo = tf.cast(low, v.dtype)
        hi = tf.cast(high, v.dtype)
        inside = tf.logical_and(v > lo, v < hi)

        def grad(dy):
            # `where(inside, dy, 0)` as one multiply that, like the select,
            # gives 0 outside even for an infinite `dy`; no zero tensor is
            # filled for it (twice as fast as `where` with `zeros_like`).
            return tf.math.multiply_no_nan(dy, tf.cast(inside, dy.dtype))

        return _fake_quant_op(v, low, high), grad

    return inside_range(x)


def _op_range(low, high):
    """The nudged `[low, high]` that `fake_quant_activation` hands the op
    (and the converter reads): Python floats for a fixed range."""
    fixed = _is_number(low) and _is_number(high)
    after_relu = _is_number(low) and not fixed and float(low) == 0.0
    if fixed:
        # A fixed range: the same nudge, computed once while tracing.
        with tf.init_scope():
            return tuple(float(v) for v in _nudged_range(float(low), float(high)))
    if after_relu:
        # After a ReLU: the nudge of `[0, high]` keeps zero point 0 and is
        # `[0, 255 * (high / 255)]`, the general nudge's float32 values.
        high = tf.maximum(high, 0.0)
        return 0.0, tf.where(high > 0.0, _mul(_div(high, 255.0), 255.0), high)
    return _nudged_range(low, high)


def round_mean(x, low, high):
    """Means of int8 values, rounded as TFLite's int8 AVERAGE_POOL_2D
    rounds them: to the grid of `fake_quant_activation(., low, high)`,
    halves away from zero of the stored int8 value (zero point included).

    TFLite's reference and XNNPACK kernels both round a tie (a mean of 4 or
    6 values at an image's corner or edge, exactly between two levels)
    this way; FakeQuant would round it up. The gradient is the identity.

    Example:

    >>> import numpy as np
    >>> # [0, 2.55]: steps of 0.01, zero point -128, so the stored values
    >>> # of these means (-127.5, -125.5, -124.4) are negative.
    >>> x = np.array([0.005, 0.025, 0.036], "float32")
    >>> np.asarray(round_mean(x, 0.0, 2.55), "float64").round(4).tolist()
    [0.0, 0.02, 0.04]
    """
    low, scale, safe = activation_grid(low, high)

    @tf.custom_gradient
    def rounded(v):
        stored = (v - low) / safe - 128.0
        # A tie is exact in integers; in float32 it lies within ~1e-5 of
        # one, and a mean of n values that is not a tie lies 1/(2n) away.
        level = tf.sign(stored) * tf.floor(tf.abs(stored) + (0.5 + 1e-3))
        y = (level + 128.0) * safe + low
        return tf.where(scale > 0.0, y, tf.zeros_like(y)), lambda dy: dy

    return rounded(tf.cast(x, tf.float32))


def activation_grid(low, high):
    """`(low, scale, safe_scale)` of the int8 grid `fake_quant_activation(.,
    low, high)` rounds to: its nudged lower end and its step (float32), and
    the step with an empty range's 0 replaced by 1, to divide by."""
    low, high = _op_range(low, high)
    low = tf.cast(low, tf.float32)
    scale = _div(tf.cast(high, tf.float32) - low, 255.0)
    return low, scale, tf.where(scale > 0.0, scale, tf.ones_like(scale))


def activation_scale(low, high):
    """The int8 scale of the tensor `fake_quant_activation(x, low, high)`
    makes: its nudged range over 255 steps (0 for an empty range)."""
    return activation_grid(low, high)[1]


def quantize_bias(bias, input_scale, weight_scale):
    """`bias` rounded to the int32 grid TFLite stores it on, `input_scale *
    weight_scale` (per output channel), with a straight-through gradient.

    The int8 kernel adds the bias in its integer accumulator; a float bias
    between two grid points moves every output of its channel by up to half
    a grid step, which flips the rounding of outputs near a level boundary
    (on MobileNet about 3 in 10,000 values of the first convolution). A
    zero scale (an input range not yet seen) leaves the bias as it is.
    """
    step = tf.cast(input_scale, tf.float32) * tf.cast(weight_scale, tf.float32)
    safe = tf.where(step > 0.0, step, tf.ones_like(step))
    rounded = tf.where(step > 0.0, tf.round(bias / safe) * safe, bias)
    return bias + tf.stop_gradient(rounded - bias)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer))


def _nudged_range(low, high):
    """`[low, high]` widened to contain 0 and nudged as FakeQuant nudges it."""
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
    nudged_low, nudged_high, _, _ = _nudge(low, low + safe, 0.0, 255.0)
    return tf.where(width > 0, nudged_low, low), tf.where(width > 0, nudged_high, high)


def _fake_quant_op(x, low, high):
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
