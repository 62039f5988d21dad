"""A scale-and-shift layer as TFLite runs it in int8: MUL, then ADD.

A BatchNormalization that does not follow a convolution (pre-activation
ResNets, after a `Dense` with an activation), a `Normalization` and a
`Rescaling` layer are converted to `MUL` by a constant and `ADD` of a
constant; a per-channel scale without shift (ConvNeXt's `LayerScale`) to
the `MUL` alone. Each of the two ops needs an int8 output scale and each
constant an int8 scale, or the converter leaves them float. `QuantizeAffineWrapper`
computes the layer's inference form `x * scale + offset` with both
constants fake-quantized per tensor (the scheme of the int8 MUL/ADD
operands) and an `ActivationQuantizer` after each op; a ReLU/ReLU6 after it
is fused, as the converter fuses it into the ADD.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfaccel._substitute import full_precision
from tfaccel.quantization.activations import relu_activation
from tfaccel.quantization.layers import (
    _FUSABLE,
    ActivationQuantizer,
    batch_moments,
    update_moving_statistics,
)
from tfaccel.quantization.quantizers import exporting, fake_quant_activation
from tfaccel.quantization.registry import (
    quantize_kind,
    register_lazy,
    register_quantizable,
)

__all__ = ["QuantizeAffineWrapper", "affine_parts"]


def _batch_norm(bn):
    scale = ops.rsqrt(ops.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    if bn.scale:
        scale = scale * bn.gamma
    offset = -bn.moving_mean * scale
    if bn.center:
        offset = offset + bn.beta
    return scale, offset


def _normalization(layer):
    mean = ops.convert_to_tensor(layer.mean)
    std = ops.maximum(ops.sqrt(ops.convert_to_tensor(layer.variance)), 1e-7)
    if layer.invert:
        return std, mean
    return 1.0 / std, -mean / std


def _rescaling(layer):
    scale = ops.convert_to_tensor(np.asarray(layer.scale, "float32"))
    offset = ops.convert_to_tensor(np.asarray(layer.offset, "float32"))
    return scale, offset


def _layer_scale(layer):
    return ops.convert_to_tensor(layer.gamma), ops.zeros((), layer.gamma.dtype)


_PARTS = {
    keras.layers.BatchNormalization: _batch_norm,
    keras.layers.Normalization: _normalization,
    keras.layers.Rescaling: _rescaling,
}
# Classes whose layers never shift (`x * scale` only): no ADD in the file.
_SCALE_ONLY: set[type] = set()


def _register_layer_scale(cls: type) -> None:
    # keras.applications' ConvNeXt `LayerScale`: `x * gamma`, gamma per channel.
    _PARTS[cls] = _layer_scale
    _SCALE_ONLY.add(cls)
    register_quantizable(cls, "affine")


# Registered when `quantize` (or loading a saved wrapper) first meets it.
register_lazy("keras.src.applications.convnext.LayerScale", _register_layer_scale)


def affine_parts(layer):
    """`(scale, offset)` with `layer(x) == x * scale + offset` at inference.

    Example:

    >>> layer = keras.layers.Rescaling(1 / 128, offset=-1.0)
    >>> [float(v) for v in affine_parts(layer)]
    [0.0078125, -1.0]
    """
    return _parts_rule(layer)(layer)


def _parts_rule(layer):
    """The `_PARTS` function for `layer`'s class; raises if there is none."""
    for attempt in range(2):
        for cls in type(layer).__mro__:
            if cls in _PARTS:
                return _PARTS[cls]
        if attempt == 0:
            quantize_kind(layer)  # registers a lazily known class (LayerScale)
    raise ValueError(
        "`layer` must be a BatchNormalization, Normalization, Rescaling or "
        f"LayerScale layer. Received: layer={type(layer).__name__}"
    )


def _has_offset(layer) -> bool:
    if isinstance(layer, tuple(_SCALE_ONLY)):
        return False
    if isinstance(layer, keras.layers.Rescaling):
        return bool(np.any(np.asarray(layer.offset) != 0))
    return True


def _fake_quant_constants(compute):
    """The MUL/ADD constants `compute()` returns (a sequence of tensors),
    each as the int8 file holds it (per tensor, asymmetric).

    While `export_tflite` traces (`exporting()`), `compute` runs eagerly and
    the graph gets each value and its range as constants: the same numbers
    (the range's nudge computes the same eagerly as in a graph) without the
    ~30 traced ops of each range and its nudge.
    """
    if not exporting():
        values = [tf.cast(v, "float32") for v in compute()]
        return [
            fake_quant_activation(v, tf.reduce_min(v), tf.reduce_max(v)) for v in values
        ]
    with tf.init_scope():
        values = [
            np.asarray(ops.convert_to_numpy(tf.cast(v, "float32"))) for v in compute()
        ]
    return [
        fake_quant_activation(tf.constant(v), float(v.min()), float(v.max()))
        for v in values
    ]


def _fake_quant_constant(compute):
    """The one constant `compute()` returns (`_fake_quant_constants`)."""
    return _fake_quant_constants(lambda: (compute(),))[0]


@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizeAffineWrapper(keras.layers.Wrapper):
    """BatchNormalization, Normalization, Rescaling, LayerScale as int8 MUL, ADD.

    The forward pass is the layer's inference form `x * scale + offset`
    (moving statistics for a BatchNormalization), with `scale` and `offset`
    fake-quantized per tensor and each product quantized to int8: what
    TFLite's int8 MUL and ADD compute. A `Rescaling` without offset and
    ConvNeXt's `LayerScale` are one MUL. In training a BatchNormalization's
    moving statistics keep updating from the batch (unless it is frozen,
    `trainable=False`), and gradients reach its gamma and beta (a
    LayerScale's gamma too), as in `QuantizeWrapper`.

    Example:

    >>> import numpy as np
    >>> q = QuantizeAffineWrapper(keras.layers.BatchNormalization())
    >>> q(np.ones((2, 4), "float32"), training=True).shape
    TensorShape([2, 4])

    Args:
        layer: a `BatchNormalization` (last axis), `Normalization`,
            `Rescaling` or keras.applications ConvNeXt `LayerScale` layer.
        activation: `"linear"`, `"relu"` or `"relu6"`, fused as TFLite does.
        ema_decay: decay of the output ranges' moving averages.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        activation: str = "linear",
        ema_decay: float = 0.99,
        **kwargs: Any,
    ):
        super().__init__(layer, **kwargs)
        if activation not in _FUSABLE:
            raise ValueError(
                f"`activation` must be one of {_FUSABLE}. Received: activation={activation!r}"
            )
        self.activation = activation
        _parts_rule(layer)  # raises, naming the layers it takes
        self.supports_masking = True
        self.ema_decay = float(ema_decay)
        self.has_offset = _has_offset(layer)
        self.multiply_quantizer = (
            ActivationQuantizer(ema_decay=ema_decay, name="multiply_quantizer")
            if self.has_offset
            else None
        )
        # It applies ReLU/ReLU6 (in training its clip to the range is it).
        self.output_quantizer = ActivationQuantizer(
            ema_decay=ema_decay,
            activation=relu_activation(activation),
            name="output_quantizer",
        )

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.multiply_quantizer is not None:
            self.multiply_quantizer.build(input_shape)
        self.output_quantizer.build(input_shape)
        self.built = True

    def call(self, inputs, training=None, mask=None):
        # `mask`: taken (and passed on) like BatchNormalization; the moving
        # statistics count every position.
        layer = self.layer
        if (
            training
            and isinstance(layer, keras.layers.BatchNormalization)
            and layer.trainable
        ):
            self._update_moving_statistics(inputs)
        with full_precision():
            count = 2 if self.has_offset else 1
            scale, *offset = _fake_quant_constants(lambda: affine_parts(layer)[:count])
        offset = offset[0] if offset else None
        y = inputs * ops.cast(scale, inputs.dtype)
        if offset is not None:
            y = self.multiply_quantizer(y, training=training)
            y = y + ops.cast(offset, y.dtype)
        # TFLite fuses a ReLU/ReLU6 after MUL/ADD into it: one rounding.
        return self.output_quantizer(y, training=training)  # ReLU/ReLU6 too

    def _update_moving_statistics(self, inputs):
        mean, var = batch_moments(tf.stop_gradient(tf.cast(inputs, "float32")))
        update_moving_statistics(self.layer, mean, var)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"activation": self.activation, "ema_decay": self.ema_decay})
        return config
