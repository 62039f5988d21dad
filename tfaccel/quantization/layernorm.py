"""`LayerNormalization` as int8 TFLite runs it: element-wise int8 ops.

TFLite has no LayerNorm kernel; the converter keeps the layer's
decomposition, and every op of it has an int8 kernel (MEAN, SUB, MUL,
ADD, RSQRT). The converter quantizes such an op only where the QAT graph
says the tensor's int8 range, so `QuantizedLayerNormalization` puts an
`ActivationQuantizer` on each tensor of its decomposition:

    mean      = MEAN(x)                          (per token, last axis)
    centered  = SUB(x, mean)
    squared   = MUL(centered, centered)
    variance  = MEAN(squared)
    shifted   = ADD(variance, epsilon)
    inv_std   = RSQRT(shifted)
    scale     = MUL(inv_std, gamma)              (scale=True; else inv_std)
    normalized = MUL(centered, scale)           (x * scale: rms_scaling)
    output    = ADD(normalized, beta)            (center=True)

This is not Keras' own order (`x * (gamma * inv) + (beta - mean * gamma *
inv)`, what the converter's post-training int8 keeps): in int8 that form
subtracts two large products whose difference is the small normalized
value, and a NEG stays float; centering first keeps every int8 tensor on
the scale of the values it carries. `gamma`, `beta` and `epsilon` are
fake-quantized per tensor, as the file holds them. `gamma` multiplies the
per-token `inv_std` (a broadcast, which the converter cannot drop), not the
normalized tensor: a fresh layer's `x * 1` and `x + 0` would both vanish in
the converter and leave three ranges in a row on one tensor, which it
rejects before a RESHAPE ("same scale constraint").

TFLite's int8 RSQRT returns its largest value for an input of exactly 0 (a
variance below half a step): the QAT layer does the same, and leaves those
tokens out of the range statistics so that one flat token cannot stretch
the range of all the others.

Post-training int8 (a plain `LayerNormalization` given to `export_tflite`)
gets the same centered order: while the converter traces, Keras'
`LayerNormalization.call` computes `(x - mean) * (gamma * inv_std) + beta`
(`centered_for_export`, a conversion context), equal to Keras' form in
float and with no NEG left float in the int8 file.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import tensorflow as tf

from tfaccel.export.prepare import register_conversion_context
from tfaccel.graph import Replacement
from tfaccel.quantization.activations import ActivationQuantizer
from tfaccel.quantization.affine import _fake_quant_constant as _constant
from tfaccel.quantization.quantizers import exporting, fake_quant_activation
from tfaccel.quantization.registry import register_qat_layer

__all__ = ["QuantizedLayerNormalization"]


def _last_axis(axis, rank: int | None) -> bool:
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if axes == [-1]:
        return True
    return rank is not None and [a % rank for a in axes] == [rank - 1]


@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizedLayerNormalization(keras.layers.LayerNormalization):
    """`LayerNormalization` whose every op runs in int8 TFLite.

    The same layer (same config and variables, so weights copy over one to
    one) computing the normalization as the int8 ops listed in
    `tfaccel.quantization.layernorm`, each output fake-quantized by its own
    `ActivationQuantizer` (asymmetric per-tensor int8, moving-average range,
    `aggregation="mean"`). Converted with `tf.lite.Optimize.DEFAULT`, no op
    of the normalization stays float.

    Example:

    >>> import numpy as np
    >>> layer = QuantizedLayerNormalization()
    >>> x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")
    >>> y = layer(x, training=True)
    >>> y.shape, float(abs(np.mean(y))) < 0.1
    (TensorShape([2, 4, 8]), True)

    Args:
        ema_decay: decay of the moving averages of the int8 ranges.
        **kwargs: `keras.layers.LayerNormalization`'s arguments; the
            normalization must be over the last axis only.

    Raises:
        ValueError: when built over any other axis (names the layer).
    """

    def __init__(self, *args: Any, ema_decay: float = 0.99, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ema_decay = float(ema_decay)

    def _stages(self) -> list[str]:
        stages = ["mean", "centered", "squared", "variance", "shifted", "inv_std"]
        if self.gamma is not None:
            stages.append("scale")
        stages.append("normalized")
        if self.beta is not None:
            stages.append("output")
        return stages

    def build(self, input_shape):
        if not _last_axis(self.axis, len(input_shape)):
            raise ValueError(
                f"QuantizedLayerNormalization {self.name!r} normalizes over the "
                "last axis only (int8 TFLite runs that form); keep the layer "
                f"float with `quantize(skip=[{self.name!r}])`. "
                f"Received: axis={self.axis!r} for inputs of rank {len(input_shape)}"
            )
        super().build(input_shape)
        # Created in this order: checkpoints depend on it.
        for stage in self._stages():
            # float32 like the normalization itself (no autocast to float16
            # under mixed precision).
            quantizer = ActivationQuantizer(
                ema_decay=self.ema_decay, name=stage, dtype="float32"
            )
            quantizer.build(None)
            setattr(self, f"{stage}_quantizer", quantizer)

    def call(self, inputs, training=None):
        def q(stage):
            quantizer = getattr(self, f"{stage}_quantizer")
            return lambda x: quantizer(x, training=training)

        x = tf.cast(inputs, "float32")
        mean = q("mean")(tf.reduce_mean(x, axis=-1, keepdims=True))
        centered = q("centered")(x - mean)
        squared = q("squared")(centered * centered)
        variance = q("variance")(tf.reduce_mean(squared, axis=-1, keepdims=True))
        epsilon = _constant(lambda: tf.constant(self.epsilon, "float32"))
        shifted = q("shifted")(variance + epsilon)
        scale = self._inverse_std(shifted, training)
        if self.gamma is not None:
            # gamma joins the per-token (B, T, 1) factor: a broadcasting MUL
            # the converter keeps even for gamma = 1 (see the module doc).
            scale = q("scale")(scale * _constant(lambda: self.gamma))
        y = (x if self.rms_scaling else centered) * scale
        if self.beta is not None and exporting() and self._beta_is_zero():
            # An untrained layer's beta is 0: the converter drops ADD(y, 0)
            # and keeps both ranges on one tensor, which it rejects before a
            # RESHAPE (BERT's next projection): the file gets the output's.
            return tf.cast(q("output")(y), self.compute_dtype)
        y = q("normalized")(y)
        if self.beta is not None:
            y = q("output")(y + _constant(lambda: self.beta))
        return tf.cast(y, self.compute_dtype)

    def _beta_is_zero(self) -> bool:
        with tf.init_scope():
            return not bool(tf.reduce_any(tf.not_equal(self.beta, 0.0)))

    def _inverse_std(self, shifted, training):
        """RSQRT as TFLite's int8 kernel: an input of 0 gives the range's top."""
        quantizer = self.inv_std_quantizer
        if not (training or quantizer.calibrating):
            # rsqrt(0) = inf, which the fake-quant clips to the top: the
            # graph the converter reads is one RSQRT.
            return quantizer(tf.math.rsqrt(shifted), training=training)
        positive = shifted > 0.0
        inv_std = tf.math.rsqrt(tf.where(positive, shifted, tf.ones_like(shifted)))
        # Zero (not the top) for the statistics: the range always holds 0.
        y = quantizer(
            tf.where(positive, inv_std, tf.zeros_like(inv_std)), training=training
        )
        top = fake_quant_activation(
            tf.constant(float("inf")), quantizer.range_min, quantizer.range_max
        )
        return tf.where(positive, y, top)

    def get_config(self):
        config = super().get_config()
        config["ema_decay"] = self.ema_decay
        return config


def _quantized_layer_normalization(layer, ema_decay: float) -> Replacement:
    new = QuantizedLayerNormalization.from_config(
        {**layer.get_config(), "ema_decay": ema_decay, "name": f"quant_{layer.name}"}
    )
    new.build_from_config(layer.get_build_config())
    # gamma and beta only (the twin has range variables besides them).
    for name in ("gamma", "beta"):
        if getattr(layer, name) is not None:
            getattr(new, name).assign(getattr(layer, name))
    return Replacement(new)


def _supported(layer) -> bool:
    build = layer.get_build_config() if layer.built else None
    rank = len(build["input_shape"]) if build else None
    return _last_axis(layer.axis, rank)


register_qat_layer(
    keras.layers.LayerNormalization, _quantized_layer_normalization, supported=_supported
)


def _centered_call(self, inputs):
    """`LayerNormalization.call`, centering first (see the module doc)."""
    if self.rms_scaling:
        return _KERAS_CALL(self, inputs)
    x = tf.cast(inputs, "float32")
    rank = len(x.shape)
    axes = sorted(a % rank for a in (self.axis if isinstance(self.axis, (list, tuple))
                                     else [self.axis]))
    shape = [x.shape[a] if a in axes else 1 for a in range(rank)]
    centered = x - tf.reduce_mean(x, axis=axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(centered), axis=axes, keepdims=True)
    scale = tf.math.rsqrt(variance + self.epsilon)
    if self.gamma is not None:
        scale = scale * tf.reshape(tf.cast(self.gamma, "float32"), shape)
    y = centered * scale
    if self.beta is not None:
        y = y + tf.reshape(tf.cast(self.beta, "float32"), shape)
    return tf.cast(y, self.compute_dtype)


_KERAS_CALL = keras.layers.LayerNormalization.call


@contextlib.contextmanager
def centered_for_export():
    """Keras' `LayerNormalization` traces its centered form (int8-friendly).

    Entered by `export_tflite` while the converter traces: Keras computes
    `x * inv + (beta - mean * inv)`, whose `-mean` the converter's
    post-training int8 keeps as a float NEG; centering first is the same
    function with every op integer. Layers that define their own `call`
    (`QuantizedLayerNormalization`, user subclasses) are unchanged.

    Example:

    >>> import numpy as np
    >>> layer = keras.layers.LayerNormalization()
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 8)).astype("float32")
    >>> with centered_for_export():
    ...     centered = layer(x)
    >>> float(np.max(np.abs(centered - layer(x)))) < 1e-5
    True
    """
    cls = keras.layers.LayerNormalization
    cls.call = _centered_call
    try:
        yield
    finally:
        cls.call = _KERAS_CALL


register_conversion_context("layer_norm_centered", centered_for_export)
