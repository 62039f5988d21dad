"""Quantizers of activations: one int8 tensor, one int8 activation op.

`ActivationQuantizer` fake-quantizes one tensor with its own int8 scale
(learned, or fixed where TFLite fixes it), `QuantizedActivation` an
activation that TFLite runs as a separate int8 op (sigmoid, softmax, swish,
...). Both are re-exported by `tfaccel.quantization.layers`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfaccel.quantization.quantizers import (
    activation_scale,
    exporting,
    fake_quant_activation,
    fixed_activation_range,
)

__all__ = ["ActivationQuantizer", "QuantizedActivation", "relu_activation"]


def relu_activation(activation: str | None) -> str | None:
    """`activation` if an `ActivationQuantizer` applies it (ReLU, ReLU6)."""
    return activation if activation in ("relu", "relu6") else None


def _activate(x, relu):
    if relu == "relu":
        return tf.nn.relu(x)
    if relu == "relu6":
        return tf.nn.relu6(x)
    return x


@keras.saving.register_keras_serializable(package="tfaccel")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantize a tensor to asymmetric int8 with a learned range.

    The range is an exponential moving average of the batch min/max during
    training, a running min/max during calibration, and fixed at inference.
    A range of exactly `[0, 0]` means "not yet seen data": the first training
    batch sets it directly. The range variables use `aggregation="mean"` so
    replicas stay identical under `tf.distribute` and `.keras` files and
    `BackupAndRestore` keep them.

    Example:

    >>> import numpy as np
    >>> q = ActivationQuantizer()
    >>> y = q(np.linspace(-1.0, 3.0, 8).reshape(1, 8), training=True)
    >>> [round(float(v), 3) for v in (q.range_min, q.range_max)]
    [-1.0, 3.0]

    Args:
        ema_decay: decay of the moving average of the batch ranges.
        fixed_range: `(min, max)` for ops whose int8 output range TFLite fixes
            (sigmoid, softmax, tanh); no variables are created then.
        activation: `"relu"` or `"relu6"` to apply that activation first: the
            one TFLite fuses into the op before it (CONV_2D, ADD, ...), which
            then has this quantizer's range as its output. In training and
            calibration the activation is not computed: its output's minimum
            is 0 and its maximum `clip(max(inputs), 0, cap)`, and FakeQuant's
            clip to the range `[0, max]` *is* the activation. That saves a
            reduction and the activation's forward and backward passes; the
            output is the same, and so is the gradient except for inputs
            exactly on the range's ends.
    """

    def __init__(
        self,
        ema_decay: float = 0.99,
        fixed_range: tuple[float, float] | None = None,
        activation: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(
                f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay}"
            )
        if activation not in (None, "relu", "relu6"):
            raise ValueError(
                "`activation` must be None, 'relu' or 'relu6'. "
                f"Received: activation={activation!r}"
            )
        self.activation = activation
        self.ema_decay = float(ema_decay)
        self.fixed_range = (
            None if fixed_range is None else tuple(map(float, fixed_range))
        )
        # Set by `calibrate`; a Python flag read when the call is traced.
        self.calibrating = False

    def build(self, input_shape):
        if self.fixed_range is None:
            # Created in this order (min, then max): checkpoints depend on it.
            self.range_min = self._range_variable("range_min")
            self.range_max = self._range_variable("range_max")

    def _range_variable(self, name: str):
        return self.add_weight(
            name=name,
            shape=(),
            initializer="zeros",
            trainable=False,
            aggregation="mean",
            # Ranges stay float32 under mixed precision: FakeQuant ops take
            # float32 only.
            dtype="float32",
            autocast=False,
        )

    def call(self, inputs, training=None):
        relu = self.activation
        x = tf.cast(inputs, "float32")
        if self.fixed_range is not None:
            x = _activate(x, relu)
            y = fake_quant_activation(x, *self.fixed_range, range_gradient=False)
            return tf.cast(y, inputs.dtype)
        if not (training or self.calibrating):
            x = _activate(x, relu)
            return tf.cast(fake_quant_activation(x, *self.inference_range()), inputs.dtype)
        # After the activation the range's minimum is 0: a Python 0.0, so
        # the nudge is traced in its closed form (`range_min` stays 0).
        old_min, old_max = self.inference_range()
        seen = tf.not_equal(old_max, 0.0)
        if relu is None:
            seen = tf.logical_or(tf.not_equal(old_min, 0.0), seen)
        batch_max = tf.stop_gradient(tf.maximum(tf.reduce_max(x), 0.0))
        if relu == "relu6":
            batch_max = tf.minimum(batch_max, 6.0)
        def moving(old, batch, widen):
            """Training: the moving average; calibration: the widened range.
            The first batch seen sets it."""
            d = self.ema_decay
            new = d * old + (1.0 - d) * batch if training else widen(old, batch)
            return tf.where(seen, new, batch)

        new_max = moving(old_max, batch_max, tf.maximum)
        if relu is None:
            batch_min = tf.stop_gradient(tf.minimum(tf.reduce_min(x), 0.0))
            new_min = moving(old_min, batch_min, tf.minimum)
            # Unconditional assigns: a tf.cond around assigns of a "mean"
            # variable fails under two replicas (see STACK.md).
            self.range_min.assign(new_min)
        else:
            new_min = 0.0
            if relu == "relu6":
                # An average of maxima under 6 stays under 6 but for
                # rounding: keep it there exactly.
                new_max = tf.minimum(new_max, 6.0)
        self.range_max.assign(new_max)
        # The range is a moving average (no gradient): the cheaper gradient.
        y = fake_quant_activation(x, new_min, new_max, range_gradient=False)
        return tf.cast(y, inputs.dtype)

    def inference_range(self):
        """`(low, high)`: the range this quantizer rounds to at inference
        (before the nudge `fake_quant_activation` applies).

        In the graph traced for the converter (`exporting()`) it is read
        now, as Python floats: `fake_quant_activation` nudges them once,
        eagerly, to the float32 values the model's graph computes (the
        nudge is written so that grappler leaves it alone), and the graph
        holds two constants instead of the nudge's ~25 ops. The converter
        freezes the variables to these values anyway; the smaller graph
        traces and saves faster (EfficientNetB0: 20,533 ops, 5,826 without,
        and an export traces it three times).
        """
        if self.fixed_range is not None:
            return self.fixed_range
        if exporting():
            with tf.init_scope():
                high = float(self.range_max.numpy())
                low = 0.0 if self.activation is not None else float(self.range_min.numpy())
            return low, high
        low = 0.0 if self.activation is not None else tf.convert_to_tensor(self.range_min)
        return low, tf.convert_to_tensor(self.range_max)

    def inference_scale(self):
        """The scale of this quantizer's int8 tensor at inference (and in the
        exported file): its nudged range over 255 steps."""
        return activation_scale(*self.inference_range())

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"ema_decay": self.ema_decay, "fixed_range": self.fixed_range})
        if self.activation is not None:
            config["activation"] = self.activation
        return config


def _keep_logits(probabilities, logits) -> None:
    """Let Keras' cross-entropy losses read `logits` behind `probabilities`.

    A float softmax/sigmoid output carries its logits (`_keras_logits`) and
    Keras' cross-entropies use them. The int8 output (steps of 1/256)
    rounds small probabilities to exactly 0: with 1000 classes every one of
    them, so `categorical_crossentropy` divides 0 by 0 (NaN) and the sparse
    one clips to a constant with no gradient. The loss reads the (int8)
    logits instead, as for the float model; the output value stays the int8
    op's.
    """
    try:
        probabilities._keras_logits = logits
    except AttributeError:  # an eager tensor of a C type
        pass


def _silu_name(name: str) -> str:
    return "silu" if name in ("swish", "silu") else name


@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizedActivation(keras.layers.Layer):
    """An activation run as its own int8 TFLite op, with its output quantized.

    Sigmoid, softmax and tanh get the fixed output range TFLite's int8
    kernels require; swish is computed as `x * sigmoid(x)` with the sigmoid
    quantized too (TFLite runs LOGISTIC then MUL), hard sigmoid as
    `relu6(x + 3) * (1/6)` with `relu6(x + 3)` quantized on `[0, 6]` (an
    ADD then a MUL), and hard swish at inference takes the values of
    TFLite's int8 HARD_SWISH kernel (`tfaccel.quantization.hard_swish`;
    in training it is rounded exactly, at most a level off); other
    activations get a learned range.

    Example:

    >>> import numpy as np
    >>> layer = QuantizedActivation("sigmoid")
    >>> float(layer(np.array([[0.0]]))[0, 0])
    0.5

    Args:
        activation: the activation's name (`keras.activations.get` name).
        ema_decay: decay of the moving average of learned ranges.
    """

    def __init__(self, activation: str, ema_decay: float = 0.99, **kwargs: Any):
        super().__init__(**kwargs)
        self.supports_masking = True  # elementwise (softmax consumes it)
        if not isinstance(activation, str):
            activation = keras.activations.serialize(keras.activations.get(activation))
        self.activation = _silu_name(activation)
        self.ema_decay = float(ema_decay)
        self._fn = keras.activations.get(self.activation)
        fixed = fixed_activation_range(self.activation)
        self.output_quantizer = ActivationQuantizer(
            ema_decay=ema_decay,
            fixed_range=fixed,
            activation=relu_activation(self.activation),
            name="output_quantizer",
        )
        # Where the int8 input comes from when no functional graph says so
        # (a sublayer chain): a function, so Keras does not track the layer.
        self._input_grid = None
        self.sigmoid_quantizer = None
        if self.activation == "silu":
            self.sigmoid_quantizer = ActivationQuantizer(
                fixed_range=fixed_activation_range("sigmoid"), name="sigmoid_quantizer"
            )
        # hard sigmoid, relu6(x + 3) / 6, is two ops in TFLite (an ADD with
        # the ReLU6 fused, then a MUL): the tensor between them needs an int8
        # range of its own, or both stay float. [0, 6] is exact for it.
        self.relu6_quantizer = None
        if self.activation == "hard_sigmoid":
            self.relu6_quantizer = ActivationQuantizer(
                fixed_range=(0.0, 6.0), name="relu6_quantizer")

    def build(self, input_shape):
        self.output_quantizer.build(input_shape)
        if self.sigmoid_quantizer is not None:
            self.sigmoid_quantizer.build(input_shape)
        if self.relu6_quantizer is not None:
            self.relu6_quantizer.build(input_shape)

    def call(self, inputs, training=None, mask=None):
        if mask is not None and self.activation == "softmax":
            # As `keras.layers.Softmax`: masked positions get probability ~0.
            inputs = inputs + (1.0 - ops.cast(mask, inputs.dtype)) * -1e9
        if self.output_quantizer.activation is not None:  # ReLU/ReLU6: its own
            return self.output_quantizer(inputs, training=training)
        if self.sigmoid_quantizer is not None:
            gate = self.sigmoid_quantizer(ops.sigmoid(inputs), training=training)
            y = inputs * gate
        elif self.relu6_quantizer is not None:
            shifted = self.relu6_quantizer(tf.nn.relu6(inputs + 3.0), training=training)
            y = shifted * (1.0 / 6.0)
        else:
            y = self._fn(inputs)
        y = self.output_quantizer(y, training=training)
        if self.activation == "hard_silu" and training is not True:
            # Inference only: in training the exactly rounded value (at most
            # a level off) serves the straight-through estimate as well, and
            # the per-value lookup would cost MobileNetV3Small's QAT step a
            # fifth more.
            y = self._as_tflite_hard_swish(inputs, y)
        if self.activation in ("softmax", "sigmoid"):
            _keep_logits(y, inputs)
        return y

    def _as_tflite_hard_swish(self, inputs, y):
        """`y` with the value of TFLite's int8 HARD_SWISH of `inputs` (see
        `tfaccel.quantization.hard_swish`) and `y`'s gradient. Unchanged
        where the input is not an int8 tensor the layer can find (a float
        input, a call outside a functional model) and in the graph handed
        to the converter."""
        from tfaccel.quantization.hard_swish import tflite_hard_swish
        from tfaccel.quantization.layers import input_quantizer

        source = self._input_grid() if self._input_grid is not None else input_quantizer(self)
        if source is None or exporting():
            return y
        value = tflite_hard_swish(
            inputs, source.inference_range(), self.output_quantizer.inference_range())

        @tf.custom_gradient
        def with_value(v):
            return tf.cast(value, v.dtype), lambda dy: dy

        return with_value(y)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"activation": self.activation, "ema_decay": self.ema_decay})
        return config
