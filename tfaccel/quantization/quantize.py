"""`quantize`: turn a Keras model into its quantization-aware twin."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np

from tfaccel import _graph
from tfaccel.quantization.calibration import _check_batch_size, calibrate
from tfaccel.quantization.layers import (
    ActivationQuantizer,
    QuantizedActivation,
    QuantizeWrapper,
)
from tfaccel.quantization.registry import (
    _activation_name,
    fusable_activation,
    quantize_kind,
)

__all__ = ["calibrate", "is_quantized", "quantize"]

_KERNEL_KINDS = ("per_channel", "depthwise", "per_tensor")
SkipSpec = str | type | Callable[[keras.layers.Layer], bool] | Iterable[Any] | None


class _Fused:
    """Stands in for a layer folded into the QuantizeWrapper before it."""

    def __init__(self, layer):
        self.layer = layer


def _skip_predicate(skip: SkipSpec) -> Callable[[keras.layers.Layer], bool]:
    if skip is None:
        return lambda layer: False
    items = [skip] if isinstance(skip, (str, type)) or callable(skip) else list(skip)
    names, classes, predicates = set(), [], []
    for item in items:
        if isinstance(item, keras.layers.Layer):
            # A layer is callable too: match it by name, not as a predicate
            # (the model may be rewritten first, e.g. pruning stripped).
            names.add(item.name)
        elif isinstance(item, str):
            names.add(item)
        elif isinstance(item, type):
            classes.append(item)
        elif callable(item):
            predicates.append(item)
        else:
            raise ValueError(
                "`skip` entries must be layer names, layers, layer classes or "
                f"predicates `fn(layer) -> bool`. Received: {item!r}"
            )
    classes = tuple(classes)

    def predicate(layer):
        return (
            layer.name in names
            or (bool(classes) and isinstance(layer, classes))
            or any(p(layer) for p in predicates)
        )

    return predicate


def _strip_pruning(model):
    from tfaccel.pruning import PruneLowMagnitude, strip_pruning

    if any(isinstance(layer, PruneLowMagnitude) for layer in _graph.all_layers(model)):
        return strip_pruning(model)
    return model


class _Planner:
    """Decides, per original layer, what replaces it in the QAT graph."""

    def __init__(self, skip):
        self.skip = skip
        self.fused: dict[int, keras.layers.Layer] = {}  # follower -> kernel layer
        self.followers: dict[int, tuple] = {}  # kernel layer -> (bn, act, own act)
        self.kinds: dict[int, str] = {}
        self.errors: list[str] = []

    def plan(self, model):
        cons = _graph.consumers(model)
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if id(layer) in self.fused:
                continue
            if isinstance(layer, keras.Model) and not self.skip(layer):
                self.plan(_graph.as_functional(layer))
                continue
            if self.skip(layer):
                # Quantize a float layer's output only where a quantized op
                # reads it: that is where TFLite puts a QUANTIZE op.
                users = cons.get(id(layer), [])
                feeds_int8 = any(
                    not isinstance(u, keras.Model) and not self.skip(u) for u in users
                )
                self.kinds[id(layer)] = "skip_to_int8" if feeds_int8 else "skip"
                continue
            kind = quantize_kind(layer)
            if kind is None:
                self.errors.append(
                    f"layer {layer.name!r} of class {type(layer).__name__}"
                )
                continue
            self.kinds[id(layer)] = kind
            if kind in _KERNEL_KINDS:
                self._plan_fusion(layer, cons)

    def _single(self, layer, cons):
        users = cons.get(id(layer), [])
        if len(users) != 1 or _graph.calls(layer) != 1:
            return None
        user = users[0]
        if isinstance(user, keras.Model) or self.skip(user) or _graph.calls(user) != 1:
            return None
        return user

    def _plan_fusion(self, layer, cons):
        bn = act = act_layer = None
        own = _activation_name(getattr(layer, "activation", None) or "linear")
        tail = layer
        if own == "linear":
            user = self._single(layer, cons)
            if (
                isinstance(user, keras.layers.BatchNormalization)
                and quantize_kind(user) == "output"
                and not getattr(user, "renorm", False)
            ):
                bn = tail = user
            user = self._single(tail, cons)
            if user is not None and fusable_activation(user):
                act, act_layer = fusable_activation(user), user
        elif own in ("relu", "relu6"):
            act = own
        for follower in (bn, act_layer):
            if follower is not None:
                self.fused[id(follower)] = layer
                self.kinds.pop(id(follower), None)
        self.followers[id(layer)] = (bn, act or "linear", own)


def _clone_plain(layer):
    return layer.__class__.from_config(layer.get_config())


def quantize(
    model: keras.Model,
    calibration_data: Any = None,
    skip: SkipSpec = None,
    *,
    ema_decay: float = 0.99,
    calibration_batch_size: int = 32,
) -> keras.Model:
    """Return a new quantization-aware (QAT) copy of `model`.

    The copy computes what the int8 TFLite model computes: Conv/Depthwise/
    Dense layers with their BatchNormalization folded in and ReLU/ReLU6
    fused become `QuantizeWrapper`s (int8 weights per channel for
    convolutions, per tensor for Dense), the model inputs and every op with
    its own int8 output scale get an `ActivationQuantizer`, and activations
    TFLite runs as separate ops become `QuantizedActivation`s. Train it with
    `fit` as usual, then convert it with `Optimize.DEFAULT`: the converter
    makes int8 kernels from the fake-quant ops, no representative data set
    needed. Pruned models are stripped first, and weights that are zero stay
    exactly zero (a fixed mask per kernel).

    Example:

    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> x = keras.layers.ReLU()(x)
    >>> outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    >>> model = keras.Model(inputs, outputs)
    >>> qat = quantize(model, calibration_data=np.random.rand(16, 8, 8, 1))
    >>> is_quantized(qat), is_quantized(model)
    (True, False)

    Args:
        model: a Sequential or functional Keras model (nested functional
            models are quantized too), possibly pruned with `tfaccel`.
        calibration_data: optional inputs (numpy array, `tf.data.Dataset` or
            iterable of batches; `(x, y)` pairs are fine) run once through the
            new model to set every activation range, so that it is usable
            before training.
        skip: layers to keep float: names, layers (matched by name),
            classes, predicates `fn(layer)`, or a list of them; a skipped
            nested model stays float as a whole. Their weights are not
            fake-quantized; their output gets an activation quantizer only
            where a quantized op reads it. A skipped run of layers at the
            end of the model stays float in the TFLite file (DEQUANTIZE
            before it); a skipped layer between two quantized ops has int8
            scales on both sides, and the converter may still quantize it
            unless the export denylists it.
        ema_decay: decay of the moving average of activation ranges.
        calibration_batch_size: batch size used to split a numpy
            `calibration_data`.

    Returns:
        A new `keras.Model`; `model` is left unchanged.

    Raises:
        ValueError: if a layer cannot be quantized (its name and class are
            given, with how to skip it), or the model is subclassed.
    """
    _check_batch_size(calibration_batch_size, "calibration_batch_size")
    model = _strip_pruning(model)
    functional = _graph.as_functional(model)
    skip_fn = _skip_predicate(skip)
    planner = _Planner(skip_fn)
    planner.plan(functional)
    if planner.errors:
        listed = "; ".join(planner.errors)
        raise ValueError(
            f"Cannot quantize {listed}: no int8 TFLite rule is registered for "
            "it (or for this configuration of it). Keep it float with "
            "`quantize(model, skip=[<layer name or class>])`, or register a "
            "rule with `tfaccel.quantization.register_quantizable`."
        )

    copies: list[tuple] = []  # (new, original, bn)
    quantized_outputs: set[int] = set()
    own_activations: dict[int, str] = {}  # wrapper -> activation run after it

    def clone_function(layer):
        if isinstance(layer, keras.Model) and id(layer) not in planner.kinds:
            # Recurse by hand: clone_model(recursive=True) would clone a
            # nested Sequential without `call_function`.
            return keras.models.clone_model(
                _graph.as_functional(layer),
                clone_function=clone_function,
                call_function=call_function,
            )
        if id(layer) in planner.fused:
            return _Fused(layer)
        kind = planner.kinds.get(id(layer))
        if kind in _KERNEL_KINDS:
            bn, act, own = planner.followers[id(layer)]
            config = layer.get_config()
            config["activation"] = "linear"
            inner = layer.__class__.from_config(config)
            kernel = np.asarray(layer.get_weights()[0])
            wrapper = QuantizeWrapper(
                inner,
                batch_norm=None if bn is None else _clone_plain(bn),
                activation=act,
                weight_mode=kind,
                preserve_sparsity=bool(np.any(kernel == 0)),
                ema_decay=ema_decay,
                name=f"quant_{layer.name}",
            )
            copies.append((wrapper, layer, bn))
            if own not in ("linear", "relu", "relu6"):
                own_activations[id(wrapper)] = own
            return wrapper
        if (
            kind == "activation"
            and fusable_activation(layer) is None
            and (
                type(layer) is keras.layers.Activation
                or isinstance(layer, keras.layers.Softmax)
            )
        ):
            name = (
                "softmax"
                if isinstance(layer, keras.layers.Softmax)
                else (_activation_name(layer.activation))
            )
            return QuantizedActivation(
                name, ema_decay=ema_decay, name=f"quant_{layer.name}"
            )
        new = _clone_plain(layer)
        copies.append((new, layer, None))
        if kind in ("output", "skip_to_int8", "activation"):
            quantized_outputs.add(id(new))
        return new

    input_cache: dict[int, Any] = {}
    model_inputs: list = []

    def quantized_input(tensor):
        if id(tensor) in input_cache:
            return input_cache[id(tensor)]
        return tensor

    def call_function(op, *args, **kwargs):
        args, kwargs = keras.tree.map_structure(
            lambda t: quantized_input(t) if isinstance(t, keras.KerasTensor) else t,
            (args, kwargs),
        )
        if isinstance(op, _Fused):
            return args[0]
        out = op(*args, **kwargs)
        if id(op) in quantized_outputs:
            out = ActivationQuantizer(ema_decay=ema_decay, name=f"{op.name}_quant")(out)
        own = own_activations.get(id(op))
        if own is not None:
            out = QuantizedActivation(own, ema_decay=ema_decay, name=f"{op.name}_act")(
                out
            )
        return out

    for tensor in functional.inputs:
        new_input = keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype, name=tensor.name
        )
        model_inputs.append(new_input)
        if "float" in str(tensor.dtype):
            input_cache[id(new_input)] = ActivationQuantizer(
                ema_decay=ema_decay, name=f"{tensor.name}_quant"
            )(new_input)

    input_tensors = keras.tree.pack_sequence_as(functional._inputs_struct, model_inputs)
    new_model = keras.models.clone_model(
        functional,
        input_tensors=input_tensors,
        clone_function=clone_function,
        call_function=call_function,
    )
    for new, original, bn in copies:
        if isinstance(new, QuantizeWrapper):
            new.layer.set_weights(original.get_weights())
            if bn is not None:
                new.batch_norm.set_weights(bn.get_weights())
            if new.preserve_sparsity:
                kernel = np.asarray(original.get_weights()[0])
                new.mask.assign((kernel != 0).astype("float32"))
        elif original.weights:
            new.set_weights(original.get_weights())
    if calibration_data is not None:
        calibrate(new_model, calibration_data, batch_size=calibration_batch_size)
    return new_model


def is_quantized(model: keras.Model) -> bool:
    """Whether `model` contains tfaccel quantization-aware layers.

    Example:

    >>> is_quantized(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    False
    """
    types = (ActivationQuantizer, QuantizeWrapper, QuantizedActivation)
    return any(isinstance(layer, types) for layer in _graph.all_layers(model))
