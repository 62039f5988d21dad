"""Which Keras layer is quantized how: a small registry, not an if/elif chain.

Each layer class maps to a rule, a callable `rule(layer) -> kind` or a kind:

- `"per_channel"`, `"depthwise"`, `"per_tensor"`, `"transpose"`: the layer
  has a kernel and becomes a `QuantizeWrapper` (BatchNorm and ReLU/ReLU6
  after it are folded in when the graph allows) with that weight scheme
  (`"transpose"`: Conv2DTranspose, BatchNorm folded per output channel,
  int8 weights per tensor).
- `"separable"`, `"conv1d"`: a layer with a kernel that TFLite runs as other
  kernels (DEPTHWISE_CONV_2D then CONV_2D; RESHAPE, CONV_2D, RESHAPE):
  one `QuantizeWrapper` per int8 kernel (see `tfaccel.quantization.lowering`).
- `"affine"`: a scale and shift (BatchNormalization that no kernel absorbs,
  Normalization, Rescaling) that TFLite runs as int8 MUL and ADD; becomes a
  `QuantizeAffineWrapper`.
- `"output"`: the int8 op has its own output scale; an `ActivationQuantizer`
  follows the layer.
- `"activation"`: an activation TFLite runs as its own op; replaced by a
  `QuantizedActivation`.
- `"passthrough"`: the int8 op keeps its input's scale (reshapes, max and
  average pooling, padding, dropout): nothing is added.
- `"layer"`: the layer is replaced by its own quantization-aware twin, built
  by the factory given to `register_qat_layer` (`MultiHeadAttention`,
  `Embedding`: see `tfaccel.quantization.attention`).
- `None`: not supported (quantize raises an error naming the layer).

Example:

>>> register_quantizable(keras.layers.Permute, "passthrough")
>>> quantize_kind(keras.layers.Permute((2, 1)))
'passthrough'
"""

from __future__ import annotations

from collections.abc import Callable

import keras

__all__ = [
    "KINDS",
    "fusable_activation",
    "qat_layer",
    "quantize_kind",
    "register_lazy",
    "register_qat_layer",
    "register_quantizable",
]

KINDS = (
    "per_channel",
    "depthwise",
    "per_tensor",
    "transpose",
    "separable",
    "conv1d",
    "affine",
    "output",
    "activation",
    "passthrough",
    "layer",
)

Rule = str | Callable[[keras.layers.Layer], "str | None"]
_REGISTRY: dict[type, Rule] = {}


def register_quantizable(layer_cls: type, rule: Rule) -> None:
    """Declare how `quantize` handles layers of class `layer_cls`.

    Example:

    >>> class Scale(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2.0 * x
    >>> register_quantizable(Scale, "output")
    >>> quantize_kind(Scale())
    'output'

    Args:
        layer_cls: a `keras.layers.Layer` subclass (subclasses inherit it),
            or a `keras.Operation` subclass for `keras.ops` calls between
            layers.
        rule: one of `KINDS`, or a callable `rule(layer)` returning one of
            them or None (unsupported configuration).
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, keras.Operation)):
        raise TypeError(
            "`layer_cls` must be a keras.layers.Layer (or keras.Operation) "
            f"subclass. Received: layer_cls={layer_cls!r}"
        )
    if not callable(rule) and rule not in KINDS:
        raise ValueError(
            f"`rule` must be one of {KINDS} or a callable. Received: rule={rule!r}"
        )
    _REGISTRY[layer_cls] = rule


# Rules for classes of optional libraries, registered when first seen:
# "module.QualName" -> fn(cls) (see `register_lazy`).
_LAZY: dict[str, Callable[[type], None]] = {}


def register_lazy(path: str, register: Callable[[type], None]) -> None:
    """Register a rule for the class at `path` when `quantize` first meets it.

    For layers of optional libraries (KerasHub): `register(cls)` runs with
    the class itself, so tfaccel never imports the library.

    Args:
        path: the class's `"module.QualifiedName"` (its defining module).
        register: `fn(cls)` that calls `register_quantizable` or
            `register_qat_layer` for it.
    """
    if not callable(register):
        raise TypeError(
            f"`register` must be callable. Received: register={register!r}"
        )
    _LAZY[path] = register


def quantize_kind(layer: keras.layers.Layer) -> str | None:
    """How `layer` is quantized (one of `KINDS`), or None if unsupported.

    Example:

    >>> quantize_kind(keras.layers.Conv2D(8, 3)), quantize_kind(keras.layers.Dense(2))
    ('per_channel', 'per_tensor')
    >>> quantize_kind(keras.layers.LSTM(4)) is None
    True
    """
    for cls in type(layer).__mro__:
        rule = _REGISTRY.get(cls)
        if rule is None and _LAZY:
            register = _LAZY.pop(f"{cls.__module__}.{cls.__qualname__}", None)
            if register is not None:
                register(cls)
                rule = _REGISTRY.get(cls)
        if rule is None and not issubclass(cls, keras.layers.Layer):
            # Keras' own operations (`x + y`, `keras.ops.*`): their classes
            # are not public, so they are known by name.
            rule = _OPERATIONS.get(cls.__name__)
        if rule is not None:
            return rule(layer) if callable(rule) else rule
    return None


def _activation_name(activation) -> str:
    name = keras.activations.serialize(activation)
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    return {"swish": "silu"}.get(name, name)


def fusable_activation(layer: keras.layers.Layer) -> str | None:
    """`"relu"`/`"relu6"` if TFLite fuses `layer` into the op before it."""
    if isinstance(layer, keras.layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    if type(layer) is keras.layers.Activation:
        name = _activation_name(layer.activation)
        return name if name in ("relu", "relu6") else None
    return None


def _channels_last(kind):
    # Grouped convolutions (`groups > 1`) are int8 CONV_2D ops too.
    def rule(layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None
        return kind

    return rule


def _upsampling(layer):
    return "passthrough" if layer.interpolation == "nearest" else "output"


def _softmax(layer):
    return "activation" if layer.axis in (-1, [-1], (-1,)) else "output"


def _last_axis(layer) -> bool:
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return axis == -1 or axis == len(layer.output.shape) - 1


def _batch_norm(layer):
    return "affine" if _last_axis(layer) else None


L = keras.layers
register_quantizable(L.Conv2D, _channels_last("per_channel"))
register_quantizable(L.Conv1D, _channels_last("conv1d"))
register_quantizable(L.SeparableConv2D, _channels_last("separable"))
register_quantizable(L.Conv2DTranspose, _channels_last("transpose"))
register_quantizable(L.DepthwiseConv2D, _channels_last("depthwise"))
register_quantizable(L.Dense, "per_tensor")
for _cls in (
    L.Add,
    L.Subtract,
    L.Multiply,
    L.Concatenate,
    L.Average,
    L.Maximum,
    L.Minimum,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.LeakyReLU,
    L.ELU,
    L.PReLU,
):
    register_quantizable(_cls, "output")
register_quantizable(L.BatchNormalization, _batch_norm)
# A broadcast constant on any axis: one int8 MUL and ADD.
for _cls in (L.Normalization, L.Rescaling):
    register_quantizable(_cls, "affine")
register_quantizable(L.UpSampling1D, "passthrough")
register_quantizable(L.UpSampling2D, _upsampling)
register_quantizable(L.Activation, "activation")
register_quantizable(L.ReLU, "activation")
register_quantizable(L.Softmax, _softmax)
for _cls in (
    L.InputLayer,
    L.Reshape,
    L.Flatten,
    L.Permute,
    L.MaxPooling1D,
    L.MaxPooling2D,
    # TFLite's int8 AVERAGE_POOL_2D requires its input's scale on its output.
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.Cropping1D,
    L.Cropping2D,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Identity,
):
    register_quantizable(_cls, "passthrough")
del L, _cls

# Operations on symbolic tensors between layers (`x + y`, `x * 0.5`,
# `keras.ops.reshape(...)`), by class name: what TFLite runs them as.
_OPERATIONS: dict[str, Rule] = {
    **dict.fromkeys(
        ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Concatenate",
         "Mean", "Sigmoid", "HardSigmoid", "Tanh", "Silu", "HardSilu",
         "Relu", "Relu6", "Gelu", "Softmax", "Divide", "TrueDivide"),
        "output",
    ),
    **dict.fromkeys(
        ("Reshape", "Transpose", "ExpandDims", "Squeeze", "GetItem", "Identity"),
        "passthrough",
    ),
}


# `keras.ops` activations between layers, by class name, and the activation
# each is: TFLite runs them as their own int8 ops with their own arithmetic
# (LOGISTIC and TANH on fixed output scales, silu as LOGISTIC then MUL, hard
# sigmoid as ADD then MUL), so `quantize` gives them the `QuantizedActivation`
# an `Activation` layer of that name gets, not a learned output range.
_ACTIVATION_OPERATIONS = {
    "Sigmoid": "sigmoid", "HardSigmoid": "hard_sigmoid", "Tanh": "tanh",
    "Silu": "silu", "HardSilu": "hard_silu", "Softmax": "softmax",
}


def activation_operation(op) -> str | None:
    """The activation a `keras.ops` call between layers is, if `quantize`
    quantizes it as that activation (softmax: over the last axis only)."""
    if isinstance(op, keras.layers.Layer):
        return None
    name = _ACTIVATION_OPERATIONS.get(type(op).__name__)
    if name == "softmax" and getattr(op, "axis", -1) not in (-1, (-1,), [-1]):
        return None
    return name


# Layers quantized as a whole ("layer" kind): class -> factory(layer, ema_decay).
_FACTORIES: dict[type, Callable] = {}


def register_qat_layer(
    layer_cls: type,
    factory: Callable[[keras.layers.Layer, float], object],
    supported: Callable[[keras.layers.Layer], bool] | None = None,
) -> None:
    """Quantize layers of class `layer_cls` by replacing them with a twin.

    Args:
        layer_cls: a `keras.layers.Layer` subclass (subclasses inherit it).
        factory: `factory(layer, ema_decay)` returning the quantization-aware
            layer, or a `tfaccel.graph.Replacement` (with the weight pairs to
            copy once the new model is built).
        supported: optional `fn(layer) -> bool`; a layer for which it is False
            is unsupported (`quantize` names it).
    """
    if not callable(factory):
        raise TypeError(f"`factory` must be callable. Received: factory={factory!r}")
    _FACTORIES[layer_cls] = factory

    def rule(layer):
        return "layer" if supported is None or supported(layer) else None

    register_quantizable(layer_cls, rule)


def qat_layer(layer: keras.layers.Layer, ema_decay: float):
    """The quantization-aware twin of a `"layer"`-kind layer (its factory's)."""
    for cls in type(layer).__mro__:
        if cls in _FACTORIES:
            return _FACTORIES[cls](layer, ema_decay)
    raise ValueError(
        "`layer` has no quantization-aware twin registered with "
        f"`register_qat_layer`. Received: layer={layer.name!r} of class "
        f"{type(layer).__name__}"
    )
