"""Custom layers quantized from the inside: their known sublayers, swapped.

A transformer block written as one custom layer (KerasHub's
`TransformerEncoder`, `ViTEncoder`, ...) computes with sublayers `quantize`
already knows (`MultiHeadAttention`, `Dense`, `Conv2D`, `Embedding`,
`LayerNormalization`, `Dropout`) plus a few tensor ops in its own `call`.
`QuantizedSublayers` keeps that `call` and swaps each known sublayer for
its quantization-aware twin, by the same registry `quantize` reads
(`tfaccel.quantization.registry`): a kernel layer becomes a per-tensor or
per-channel `QuantizeWrapper` (its activation fused or a
`QuantizedActivation` after it), a `"layer"`-kind layer its registered twin
(`QuantizedMultiHeadAttention`, `QuantizedEmbedding`), an `"output"`-kind
layer is followed by an `ActivationQuantizer`; custom sublayers are swapped
the same way, recursively; anything else stays float. The swap is
deterministic, so it is redone when a saved model is loaded, and the
variables line up. Ops in the custom `call` itself (a residual `x + y`)
get no range of their own: TFLite runs them in float between the int8
sublayers.

KerasHub's layers are registered lazily, by class path, the first time
`quantize` meets one (`tfaccel` never imports `keras_hub`).
"""

from __future__ import annotations

import copy
from typing import Any

import keras

from tfaccel.graph import Replacement, copy_layer, copy_weights
from tfaccel.graph.rebuild import _construct, loadable_config
from tfaccel.quantization.layers import (
    ActivationQuantizer,
    QuantizedActivation,
    QuantizeWrapper,
)
from tfaccel.quantization.registry import (
    _FACTORIES,
    _activation_name,
    qat_layer,
    quantize_kind,
    register_lazy,
    register_qat_layer,
    register_quantizable,
)

__all__ = ["QuantizedSublayers", "quantize_sublayers"]

_KERNELS = ("per_tensor", "per_channel", "depthwise")


class _Chain(keras.layers.Layer):
    """A sublayer followed by its quantizers, called like the sublayer.

    Made again by every swap (never serialized on its own), so the parent's
    `call` may pass the sublayer its own keywords (`start_index=`).
    """

    def __init__(self, layers: list, **kwargs: Any):
        super().__init__(**kwargs)
        self.chain = list(layers)

    def call(self, inputs, *args, **kwargs):
        first, *rest = self.chain
        outputs = first(inputs, *args, **kwargs)
        for layer in rest:
            outputs = layer(outputs)
        return outputs


def _chain(layers: list) -> Any:
    for before, layer in zip(layers, layers[1:]):
        source = getattr(before, "output_quantizer", None)
        if isinstance(layer, QuantizedActivation) and isinstance(source, ActivationQuantizer):
            layer._input_grid = lambda source=source: source  # noqa: SLF001
    return layers[0] if len(layers) == 1 else _Chain(layers, name=f"{layers[0].name}_chain")


def _kernel_twin(layer, kind: str, ema_decay: float) -> Any:
    function, own = layer.activation, _activation_name(layer.activation)
    fused = own if own in ("linear", "relu", "relu6") else "linear"
    layer.activation = keras.activations.get("linear")
    wrapper = QuantizeWrapper(
        layer, activation=fused, weight_mode=kind, ema_decay=ema_decay,
        name=f"quant_{layer.name}",
    )
    if fused == own:
        return wrapper
    try:
        return _chain([wrapper, QuantizedActivation(own, ema_decay=ema_decay)])
    except ValueError:  # a library's own activation ("keras_hub>gelu_approximate")
        after = [keras.layers.Activation(function), ActivationQuantizer(ema_decay=ema_decay)]
        return _chain([wrapper, *after])


def _twin(layer, ema_decay: float) -> Any:
    """The quantization-aware form of one sublayer (itself if float)."""
    kind = quantize_kind(layer)
    if kind is None or _is_sublayer_rule(layer):
        _swap(layer, ema_decay)  # a custom layer: quantized from the inside
        return layer
    if kind in _KERNELS and hasattr(layer, "activation"):
        return _kernel_twin(layer, kind, ema_decay)
    if kind == "layer":
        twin = qat_layer(layer, ema_decay)
        if not isinstance(twin, Replacement):
            return twin
        for source, target in twin.weights:
            copy_weights(source, target)
        return _chain([twin.operation, *twin.after])
    if kind == "activation" and type(layer) is keras.layers.Activation:
        return QuantizedActivation(_activation_name(layer.activation), ema_decay=ema_decay)
    if kind in ("output", "activation"):
        return _chain([layer, ActivationQuantizer(ema_decay=ema_decay)])
    return layer  # passthrough, or a kind not lowered inside custom layers


def _swap(layer, ema_decay: float) -> None:
    """Replace `layer`'s sublayers by their twins, in place.

    The parent is built (its tracker locked), so attributes are set
    without tracking and the twin takes the sublayer's place in
    `layer._layers`: weights keep their order and saving walks the twins.
    """
    tracked = layer._layers
    replaced = {}
    for name, value in list(vars(layer).items()):
        if name == "_layers":
            continue
        if isinstance(value, keras.layers.Layer) and any(value is t for t in tracked):
            replaced[id(value)] = new = replaced.get(id(value)) or _twin(value, ema_decay)
            object.__setattr__(layer, name, new)
        elif isinstance(value, list) and value and all(
            isinstance(v, keras.layers.Layer) for v in value
        ):
            for i, v in enumerate(value):
                replaced[id(v)] = new = replaced.get(id(v)) or _twin(v, ema_decay)
                list.__setitem__(value, i, new)
    for i, v in enumerate(tracked):
        if id(v) in replaced:
            list.__setitem__(tracked, i, replaced[id(v)])


@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizedSublayers(keras.layers.Wrapper):
    """A custom layer whose known sublayers are quantization-aware.

    Calls the wrapped layer as it is (its own `call`, keywords and masks
    included) after swapping each sublayer `quantize` knows for its twin
    (see the module docstring). Register a custom layer class for it with
    `register_qat_layer(cls, quantize_sublayers)`.

    Example:

    >>> import numpy as np
    >>> class Block(keras.layers.Layer):
    ...     def build(self, shape):
    ...         self.dense = keras.layers.Dense(shape[-1], activation="relu")
    ...         self.dense.build(shape)
    ...     def call(self, x):
    ...         return x + self.dense(x)
    >>> layer = QuantizedSublayers(Block())
    >>> layer(np.ones((2, 4), "float32")).shape
    TensorShape([2, 4])
    >>> type(layer.layer.dense).__name__
    'QuantizeWrapper'

    Args:
        layer: the custom layer (built or not).
        ema_decay: decay of the moving average of the activation ranges.
    """

    def __init__(self, layer: keras.layers.Layer, ema_decay: float = 0.99, **kwargs: Any):
        super().__init__(layer, **kwargs)
        self.ema_decay = float(ema_decay)
        self._swapped = False
        # Serialized before the swap: a layer's get_config may read its
        # sublayers (TokenAndPositionEmbedding's `tie_weights`).
        spec = keras.saving.serialize_keras_object(self.layer)
        spec["config"] = loadable_config(self.layer)
        # Not tracked (a tracked dict refers back to this layer).
        object.__setattr__(self, "_layer_spec", spec)
        if self.layer.built:
            self._swap()

    def _swap(self) -> None:
        _swap(self.layer, self.ema_decay)
        self._swapped = True

    def build(self, inputs_shape):
        if not self.layer.built:
            self.layer.build(inputs_shape)
        if not self._swapped:
            self._swap()
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)  # the wrapped layer as it was
        config["layer"] = copy.deepcopy(self._layer_spec)
        config["ema_decay"] = self.ema_decay
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        spec = config.pop("layer")
        inner_cls = keras.saving.get_registered_object(
            spec.get("registered_name") or spec["class_name"], custom_objects
        )
        if inner_cls is None:
            inner = keras.saving.deserialize_keras_object(spec, custom_objects)
        else:
            inner = _construct(inner_cls, spec["config"])
        return cls(inner, **config)


def quantize_sublayers(
    layer: keras.layers.Layer, ema_decay: float, output_range: bool = False
) -> Replacement:
    """`register_qat_layer` factory: `layer`'s copy, quantized from the inside.

    With `output_range=True` an `ActivationQuantizer` follows the layer: for
    a layer that ends in an op of its own `call` (an embedding's sum of
    token and position tables) read by int8 layers, such as attention.

    Example:

    >>> class Block(keras.layers.Layer):
    ...     def build(self, shape):
    ...         self.dense = keras.layers.Dense(shape[-1])
    ...         self.dense.build(shape)
    ...     def call(self, x):
    ...         return x + self.dense(x)
    >>> register_qat_layer(Block, quantize_sublayers)
    >>> quantize_kind(Block())
    'layer'
    """
    inner = copy_layer(layer)
    copy_weights(layer, inner)  # before the swap: same layout as `layer`
    wrapper = QuantizedSublayers(inner, ema_decay=ema_decay, name=f"quant_{layer.name}")
    if not output_range:
        return Replacement(wrapper)
    quantizer = ActivationQuantizer(ema_decay=ema_decay, name=f"{layer.name}_quant")
    return Replacement(wrapper, after=[quantizer])


def _quantize_embedding_sublayers(layer, ema_decay: float) -> Replacement:
    return quantize_sublayers(layer, ema_decay, output_range=True)


_SUBLAYER_FACTORIES = (quantize_sublayers, _quantize_embedding_sublayers)


def _is_sublayer_rule(layer) -> bool:
    return any(
        _FACTORIES.get(cls) in _SUBLAYER_FACTORIES for cls in type(layer).__mro__
    )


def _register_sublayers(cls: type) -> None:
    register_qat_layer(cls, quantize_sublayers, supported=lambda layer: layer.built)


def _register_embedding_sublayers(cls: type) -> None:
    register_qat_layer(
        cls, _quantize_embedding_sublayers, supported=lambda layer: layer.built
    )


def _register_output(cls: type) -> None:
    # A learned table added to the embeddings: one int8 constant.
    register_quantizable(cls, "output")


_HUB = "keras_hub.src."
for _path in (
    "layers.modeling.token_and_position_embedding.TokenAndPositionEmbedding",
    "models.vit.vit_layers.ViTPatchingAndEmbedding",
):
    register_lazy(_HUB + _path, _register_embedding_sublayers)
for _path in (
    "layers.modeling.transformer_encoder.TransformerEncoder",
    "models.vit.vit_layers.ViTEncoder",
    "models.vit.vit_layers.ViTEncoderBlock",
    "models.vit.vit_layers.MLP",
):
    register_lazy(_HUB + _path, _register_sublayers)
register_lazy(_HUB + "layers.modeling.position_embedding.PositionEmbedding", _register_output)
del _path
