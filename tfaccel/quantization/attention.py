"""Quantization-aware transformer layers: what int8 TFLite runs, in float.

The TFLite converter lowers a Keras transformer block to these int8 ops
(seen in converted files, TF 2.21):

- `EinsumDense` (and `MultiHeadAttention`'s four projections): RESHAPE +
  FULLY_CONNECTED with per-tensor int8 weights and the bias fused
  (`QuantizedEinsumDense`, a per-tensor `QuantizeWrapper` like `Dense`'s).
- The two attention products: BATCH_MATMUL on int8 tensors (query scaled by
  `1/sqrt(key_dim)`: a MUL), SOFTMAX with the fixed int8 output scale 1/256.
  `QuantizedMultiHeadAttention` puts an `ActivationQuantizer` on each of
  those tensors.
- `Embedding`: GATHER from an int8 table; the output keeps the table's scale
  (`QuantizedEmbedding`: symmetric per-tensor int8 table, no output range).
- GELU: its own int8 op (a `QuantizedActivation`); residual `x + y`: ADD.
- `LayerNormalization`: MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD,
  all int8 (`QuantizedLayerNormalization`, in
  `tfaccel.quantization.layernorm`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from tfaccel._substitute import full_precision, substitute
from tfaccel.graph import Replacement, copy_layer
from tfaccel.quantization.layers import (
    ActivationQuantizer,
    QuantizedActivation,
    QuantizeWrapper,
)
from tfaccel.quantization.quantizers import fake_quant_weight, fixed_activation_range
from tfaccel.quantization.registry import (
    _activation_name,
    register_qat_layer,
)

__all__ = ["QuantizedEinsumDense", "QuantizedEmbedding", "QuantizedMultiHeadAttention"]

_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")


def _matmul_form(layer, input_shape) -> tuple[int, tuple, tuple] | None:
    """How an `EinsumDense` is one matrix product, or None.

    `(k, kernel_out, inner)`: the input's last `k` axes are contracted with
    the kernel's first `k` (same order), the kernel's other axes
    (`kernel_out`) end the output, after the input's free axes (`inner`,
    without the batch). Covers `Dense`-like and all four
    `MultiHeadAttention` projections.
    """
    equation = layer.equation.replace(" ", "")
    lhs, out = equation.split("->")
    x, w = lhs.split(",")
    ellipsis = x.startswith("...")
    if ellipsis != out.startswith("...") or "." in w:
        return None
    x, out = x.replace("...", ""), out.replace("...", "")
    for k in range(1, min(len(x), len(w)) + 1):
        free_x, free_w = x[: len(x) - k], w[k:]
        if x[len(x) - k :] == w[:k] and out == free_x + free_w:
            # The free input axes, without the batch.
            inner = tuple(input_shape[1 : len(input_shape) - k])
            return k, tuple(layer.kernel.shape[k:]), inner
    return None


@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizedEinsumDense(QuantizeWrapper):
    """An `EinsumDense` as int8 TFLite runs it: one FULLY_CONNECTED.

    A `QuantizeWrapper` (per-tensor int8 kernel, output range) whose forward
    pass computes the einsum as reshape, matrix product plus bias, reshape:
    the converter then fuses the bias into an int8 FULLY_CONNECTED (an
    einsum whose bias is added after a reshape would stay float).

    Example:

    >>> import numpy as np
    >>> dense = keras.layers.EinsumDense("abc,cde->abde", (6, 2, 4), bias_axes="de")
    >>> layer = QuantizedEinsumDense(dense, weight_mode="per_tensor")
    >>> layer(np.ones((1, 6, 8), "float32"), training=True).shape
    TensorShape([1, 6, 2, 4])

    Args:
        layer: an `EinsumDense` whose equation is one matrix product (see
            `QuantizeWrapper` for the other arguments).
    """

    def _form(self, input_shape):
        form = _matmul_form(self.layer, input_shape)
        return None if form is None or None in form[2] else form

    def _forward(self, inputs):
        form = self._form(inputs.shape)
        if form is None:
            return self.layer(inputs)
        k, kernel_out, inner = form
        # The substituted (float32) kernel, in the compute dtype.
        kernel = ops.cast(self.layer.kernel, inputs.dtype)
        rows = int(np.prod(kernel.shape[:k]))
        x = ops.reshape(inputs, (-1, rows))
        y = ops.matmul(x, ops.reshape(kernel, (rows, -1)))
        if self.layer.bias is not None:
            bias = ops.broadcast_to(ops.cast(self.layer.bias, y.dtype), kernel_out)
            y = y + ops.reshape(bias, (-1,))
        # Output heads are split after the output range: the converter
        # moves a bias add past a reshape that splits them, and the
        # FULLY_CONNECTED would stay float.
        return ops.reshape(y, (-1, *inner, y.shape[-1]))

    def call(self, inputs, training=None):
        y = super().call(inputs, training=training)
        form = self._form(inputs.shape)
        if form is None:
            return y
        return ops.reshape(y, (-1, *form[2], *form[1]))


@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizedMultiHeadAttention(keras.layers.MultiHeadAttention):
    """`MultiHeadAttention` as int8 TFLite runs it, for quantization-aware training.

    The same layer (same config, same variables, so weights copy over one to
    one) with the query, key, value and output projections wrapped in
    per-tensor `QuantizedEinsumDense`s (int8 FULLY_CONNECTED, each with its
    output range) and an `ActivationQuantizer` on every tensor TFLite holds
    between them: the scaled query (MUL), the attention logits (first
    BATCH_MATMUL), the attention probabilities (SOFTMAX, fixed range
    `[0, 255/256]`) and the attention context (second BATCH_MATMUL). The
    attention is always computed explicitly (no fused dot-product kernel),
    since that is what the file computes.

    Example:

    >>> import numpy as np
    >>> layer = QuantizedMultiHeadAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(1, 6, 8).astype("float32")
    >>> layer(x, x, training=True).shape
    TensorShape([1, 6, 8])

    Args:
        ema_decay: decay of the moving average of the activation ranges.
        **kwargs: `keras.layers.MultiHeadAttention`'s arguments; `use_gate`
            is not supported.
    """

    def __init__(self, *args: Any, ema_decay: float = 0.99, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self._use_gate:
            raise ValueError(
                "QuantizedMultiHeadAttention does not support gated attention. "
                "Received: use_gate=True"
            )
        self.ema_decay = float(ema_decay)

    def build(self, query_shape, value_shape, key_shape=None):
        super().build(query_shape, value_shape, key_shape)
        for attr in _PROJECTIONS:
            dense = getattr(self, attr)
            wrapper = QuantizedEinsumDense(
                dense,
                weight_mode="per_tensor",
                ema_decay=self.ema_decay,
                name=dense.name,
            )
            setattr(self, attr, wrapper)
        shape = list(self._query_dense.layer.compute_output_shape(query_shape))
        self._query_dense.build(query_shape)
        self._key_dense.build(value_shape if key_shape is None else key_shape)
        self._value_dense.build(value_shape)
        shape[-1] = self._value_dim
        self._output_dense.build(tuple(shape))
        quantizer = self._quantizer
        # Created in this order: checkpoints depend on it.
        self.query_scale_quantizer = quantizer("scaled_query")
        self.logits_quantizer = quantizer("attention_logits")
        self.probabilities_quantizer = ActivationQuantizer(
            fixed_range=fixed_activation_range("softmax"), name="attention_probs"
        )
        self.context_quantizer = quantizer("attention_context")
        for layer in (
            self.query_scale_quantizer,
            self.logits_quantizer,
            self.probabilities_quantizer,
            self.context_quantizer,
        ):
            # Element-wise: a masked softmax's Keras mask passes through
            # (else Keras warns that the quantizer drops it).
            layer.supports_masking = True
            layer.build(None)

    def _quantizer(self, name: str) -> ActivationQuantizer:
        return ActivationQuantizer(ema_decay=self.ema_decay, name=name)

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        if use_causal_mask:
            causal = self._compute_causal_mask(query, value)
            attention_mask = (
                causal
                if attention_mask is None
                else ops.logical_and(ops.cast(attention_mask, "bool"), causal)
            )
        scale = ops.cast(self._inverse_sqrt_key_dim, query.dtype)
        query = self.query_scale_quantizer(
            ops.multiply(query, scale), training=training
        )
        logits = ops.einsum(self._dot_product_equation, key, query)
        logits = self.logits_quantizer(logits, training=training)
        probabilities = self._masked_softmax(logits, attention_mask)
        probabilities = self.probabilities_quantizer(probabilities, training=training)
        dropped = probabilities
        if self._dropout > 0.0:
            dropped = self._dropout_layer(probabilities, training=training)
        context = ops.einsum(self._combine_equation, dropped, value)
        context = self.context_quantizer(context, training=training)
        return context, probabilities

    def get_config(self):
        config = super().get_config()
        config["ema_decay"] = self.ema_decay
        return config


@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizedEmbedding(keras.layers.Wrapper):
    """An `Embedding` whose table is int8, as TFLite's GATHER reads it.

    The table is fake-quantized to symmetric per-tensor int8 (narrow range,
    zero point 0); a lookup returns rows of that table, so the output keeps
    the table's scale and needs no range of its own.

    Example:

    >>> import numpy as np
    >>> layer = QuantizedEmbedding(keras.layers.Embedding(10, 4))
    >>> layer(np.array([[1, 2, 3]])).shape
    TensorShape([1, 3, 4])

    Args:
        layer: a `keras.layers.Embedding`.
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any):
        super().__init__(layer, **kwargs)
        if not isinstance(self.layer, keras.layers.Embedding):
            raise TypeError(
                f"`layer` must be a keras.layers.Embedding. Received: layer={layer!r}"
            )
        self.supports_masking = True

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def quantized_table(self):
        """The embedding table the int8 file holds (fake-quantized)."""
        with full_precision():
            return fake_quant_weight(self.layer.embeddings, "per_tensor")

    def call(self, inputs):
        with substitute([(self.layer.embeddings, self.quantized_table())], owner=self):
            return self.layer(inputs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def _quantized_attention(layer, ema_decay: float) -> Replacement:
    new = QuantizedMultiHeadAttention.from_config(
        {**layer.get_config(), "ema_decay": ema_decay, "name": f"quant_{layer.name}"}
    )
    new.build_from_config(layer.get_build_config())
    pairs = [(getattr(layer, a), getattr(new, a).layer) for a in _PROJECTIONS]
    return Replacement(new, weights=pairs)


def _quantized_embedding(layer, ema_decay: float) -> Replacement:
    inner = copy_layer(layer)
    return Replacement(
        QuantizedEmbedding(inner, name=f"quant_{layer.name}"), weights=[(layer, inner)]
    )


def _quantized_einsum_dense(layer, ema_decay: float) -> Replacement:
    config = layer.get_config()
    own = _activation_name(layer.activation)
    config["activation"] = "linear"
    inner = layer.__class__.from_config(config)
    inner.build_from_config(layer.get_build_config())
    fused = own if own in ("linear", "relu", "relu6") else "linear"
    wrapper = QuantizedEinsumDense(
        inner,
        activation=fused,
        weight_mode="per_tensor",
        ema_decay=ema_decay,
        name=f"quant_{layer.name}",
    )
    after = []
    if fused != own:
        after.append(
            QuantizedActivation(own, ema_decay=ema_decay, name=f"{wrapper.name}_act")
        )
    return Replacement(wrapper, after=after, weights=[(layer, inner)])


register_qat_layer(
    keras.layers.MultiHeadAttention,
    _quantized_attention,
    supported=lambda layer: not layer._use_gate and layer.built,
)
register_qat_layer(keras.layers.Embedding, _quantized_embedding)
register_qat_layer(keras.layers.EinsumDense, _quantized_einsum_dense)
