"""`prune`, `strip_pruning` and `sparsity`: whole-model pruning verbs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import keras
import numpy as np

from tfaccel._warnings import TfaccelWarning
from tfaccel.pruning.allocation import allocate, check_allocation
from tfaccel.pruning.masks import parse_structure
from tfaccel.pruning.registry import is_prunable, prunable_weights, weight_key
from tfaccel.pruning.wrapper import PruneLowMagnitude
from tfaccel.schedules import (
    ConstantSparsity,
    PruningSchedule,
    ScaledSparsity,
    check_schedule,
)

__all__ = ["prune", "strip_pruning", "sparsity"]

LayerSelector = (
    Sequence[str | type] | Callable[[keras.layers.Layer], bool] | None
)


def _check_model(model, argument="model"):
    # A functional model has a graph of nodes; a subclassed one has none.
    if isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")
    ):
        return
    if isinstance(model, keras.Model):
        raise ValueError(
            f"`{argument}` must be a Sequential or functional Keras model; "
            "subclassed models cannot be cloned layer by layer. Build it as "
            "a Sequential/functional model, or wrap its layers with "
            "`tfaccel.pruning.PruneLowMagnitude` directly. Received: "
            f"{argument} of type {type(model).__name__}"
        )
    raise TypeError(
        f"`{argument}` must be a keras.Model. Received: {argument}={model!r}"
    )


def _selector(layers) -> Callable[[keras.layers.Layer], bool]:
    if layers is None:
        return lambda layer: True
    if callable(layers) and not isinstance(layers, type):
        return layers
    if isinstance(layers, (str, type)):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set)):
        raise TypeError(
            "`layers` must be None, a list of layer names and/or layer "
            f"classes, or a predicate `layer -> bool`. Received: layers={layers!r}"
        )
    names, classes = set(), []
    for item in layers:
        if isinstance(item, str):
            names.add(item)
        elif isinstance(item, type) and issubclass(item, keras.layers.Layer):
            classes.append(item)
        else:
            raise TypeError(
                "`layers` entries must be layer names (str) or "
                f"keras.layers.Layer subclasses. Received entry: {item!r}"
            )
    classes = tuple(classes)
    return lambda layer: layer.name in names or isinstance(layer, classes)


def _copy_layer(layer):
    new = layer.__class__.from_config(layer.get_config())
    build_config = layer.get_build_config() if layer.built else None
    if build_config:
        # Build before wrapping: multi-input layers (MultiHeadAttention)
        # cannot be built from the wrapper's single input shape.
        new.build_from_config(build_config)
    return new


def _copy_weights(pairs):
    for source, target in pairs:
        values = [v.numpy() for v in source.weights]
        if values:
            target.set_weights(values)


def prune(
    model: keras.Model,
    schedule: PruningSchedule | None = None,
    structure: str = "unstructured",
    layers: LayerSelector = None,
    allocation: str = "uniform",
) -> keras.Model:
    """Return a copy of `model` whose prunable layers train under masks.

    Each selected prunable layer (see `register_prunable`) is wrapped in a
    `PruneLowMagnitude` that keeps the layer's name. The new model starts
    from `model`'s weights; `model` itself is not modified. Train it with an
    ordinary `fit`: no callback is needed. Nested Sequential and functional
    models are pruned recursively.

    Example:

    >>> mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(10)])
    >>> from tfaccel.schedules import PolynomialDecay
    >>> pruned = prune(mlp, PolynomialDecay(0.0, 0.8, 0, 100, frequency=10))
    >>> [type(layer).__name__ for layer in pruned.layers]
    ['PruneLowMagnitude', 'PruneLowMagnitude']

    Args:
        model: a Sequential or functional Keras model.
        schedule: a `tfaccel.schedules.PruningSchedule`; defaults to
            `ConstantSparsity(0.5)`. Shared by all wrapped layers.
        structure: `"unstructured"`, an `"N:M"` string such as `"2:4"`
            (N of every M consecutive input-channel weights are kept), or
            `"channels"` (whole output channels, see
            `tfaccel.pruning.prune_channels`; `strip_pruning` then rebuilds a
            smaller model).
        layers: which layers to prune: None (every prunable layer), a list
            of layer names and/or layer classes, or a predicate
            `layer -> bool`.
        allocation: how the schedule's sparsity is shared among the
            selected layers (unstructured only, see
            `tfaccel.pruning.allocation`): `"uniform"` (each layer gets it)
            or `"erk"` (Erdős–Rényi-Kernel: large layers are pruned harder,
            small ones less or not at all, and all pruned weights together
            reach the schedule's sparsity). A layer's share is its schedule
            scaled (`tfaccel.schedules.ScaledSparsity`); a layer that `"erk"`
            leaves dense is not wrapped.

    Returns:
        A new Keras model.

    Raises:
        ValueError: for a subclassed model, an unknown `structure` or
            `allocation`, an allocation other than `"uniform"` with N:M or
            channels, N:M that does not divide a weight's input-channel
            axis, `layers` that match no layer or a model with no prunable
            layer.
        TypeError: for arguments of the wrong type.
    """
    _check_model(model)
    schedule = check_schedule(ConstantSparsity(0.5) if schedule is None else schedule)
    check_allocation(allocation)
    if allocation != "uniform" and structure != "unstructured":
        raise ValueError(
            f"allocation='{allocation}' shares an unstructured sparsity "
            "among layers; N:M and channel pruning set each layer's pattern "
            "themselves. Use allocation='uniform'. Received: "
            f"structure={structure!r}"
        )
    if structure == "channels":
        # `prune_channels` copies the layers it rebuilds: `model` is untouched.
        from tfaccel.pruning.channels import prune_channels

        if isinstance(layers, type) or (
            isinstance(layers, (list, tuple, set))
            and any(isinstance(item, type) for item in layers)
        ):
            # Layer classes (accepted here, not by `prune_channels`).
            layers = _selector(layers)
        return prune_channels(model, schedule=schedule, layers=layers)
    parse_structure(structure)
    selected = _selector(layers)
    schedules = _allocate(model, selected, schedule, allocation)
    matched, wrapped, pairs = [], [], []

    def clone(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer '{layer.name}' is already pruned. Call "
                "`strip_pruning(model)` first to prune it again."
            )
        chosen = bool(selected(layer))
        if chosen:
            matched.append(layer.name)
        new = _copy_layer(layer)
        pairs.append((layer, new))
        layer_schedule = schedules.get(id(layer), schedule)
        if chosen and is_prunable(layer) and layer_schedule is not None:
            wrapped.append(layer.name)
            return PruneLowMagnitude(new, layer_schedule, structure, name=layer.name)
        return new

    new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    if layers is not None and not matched:
        raise ValueError(
            f"`layers` matched no layer of model '{model.name}'. Received: "
            f"layers={layers!r}; layer names: "
            f"{[layer.name for layer in model.layers]}"
        )
    if not wrapped:
        raise ValueError(
            f"No prunable layer selected in model '{model.name}' (selected: "
            f"{matched}). Prunable layers are Dense, Conv*, EinsumDense, "
            "Embedding, MultiHeadAttention, ... and layers registered with "
            "`register_prunable` or defining `get_prunable_weights()`."
        )
    _copy_weights(pairs)
    return new_model


def _allocate(model, selected, schedule, allocation) -> dict:
    """id(layer) -> its schedule, or None for a layer left dense."""
    if allocation == "uniform" or schedule.final_sparsity == 0.0:
        return {}
    layers = [
        layer for layer in _walk(model)
        if not isinstance(layer, keras.layers.InputLayer)
        and selected(layer) and is_prunable(layer)
    ]
    unbuilt = [layer.name for layer in layers if not layer.built]
    if unbuilt:
        raise ValueError(
            f"allocation='{allocation}' needs the shapes of the weights: "
            "build the model first (give it a `keras.Input` or call it on a "
            f"batch). Received unbuilt layers: {unbuilt}"
        )
    shapes = {
        id(layer): [tuple(v.shape) for v, _ in prunable_weights(layer)]
        for layer in layers
    }
    shares = allocate(shapes, schedule.final_sparsity, allocation)
    return {
        key: None if share == 0.0
        else ScaledSparsity(schedule, share / schedule.final_sparsity)
        for key, share in shares.items()
    }


def strip_pruning(model: keras.Model) -> keras.Model:
    """Return a plain copy of `model` with `weight * mask` baked in.

    Every `PruneLowMagnitude` is replaced by its inner layer holding the
    masked weights; predictions are identical. A model pruned with
    `structure="channels"` is rebuilt smaller instead (`shrink`): pruned
    filters and the matching input channels of their consumers are removed.
    Warns (`TfaccelWarning`) when a wrapper's schedule (unstructured, N:M or
    channels) has not reached its `end_step`.

    Example:

    >>> mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(10)])
    >>> plain = strip_pruning(prune(mlp))
    >>> [type(layer).__name__ for layer in plain.layers]
    ['Dense', 'Dense']

    Args:
        model: a Sequential or functional model, usually from `prune`.

    Returns:
        A new Keras model without pruning wrappers.
    """
    _check_model(model)
    from tfaccel.pruning.channels import PruneChannels

    channel_wrappers = [x for x in _walk(model) if isinstance(x, PruneChannels)]
    if channel_wrappers:
        from tfaccel.pruning.shrink import shrink

        _warn_unfinished(channel_wrappers)
        return shrink(model)
    pairs, baked = [], []

    def clone(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if not isinstance(layer, PruneLowMagnitude):
            new = _copy_layer(layer)
            pairs.append((layer, new))
            return new
        inner = layer.layer
        new = _copy_layer(inner)
        baked.append((layer, new))
        return new

    new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    _warn_unfinished([wrapper for wrapper, _ in baked])
    _copy_weights(pairs)
    for wrapper, new in baked:
        masked = {id(v): value for v, value in wrapper.masked_weights()}
        values = [
            masked.get(id(v), v.numpy())
            for v in wrapper.layer.weights
        ]
        new.set_weights(values)
    return new_model


def _warn_unfinished(wrappers: list) -> None:
    """Warn about `PruneLowMagnitude`/`PruneChannels` stripped too early."""
    lines = []
    for wrapper in wrappers:
        schedule = wrapper.schedule
        if not isinstance(schedule, PruningSchedule):
            continue  # a channel wrapper's fixed fraction: reached at once
        if isinstance(wrapper, PruneLowMagnitude):
            step = int(wrapper.pruning_step.numpy())
        else:
            step = int(wrapper.step.numpy())
        # The last training call saw step `step - 1`.
        if schedule.end_step >= 0 and step - 1 < schedule.end_step:
            if isinstance(wrapper, PruneLowMagnitude):
                reached = ", ".join(
                    f"{k}={v:.4f}" for k, v in wrapper.get_sparsity().items()
                )
            else:
                masked = float(np.mean(wrapper.mask.numpy() == 0))
                reached = f"masked channels={masked:.4f}"
            lines.append(
                f"layer '{wrapper.name}' at step {step}, end_step="
                f"{schedule.end_step}, target sparsity "
                f"{schedule.final_sparsity:g}, reached: {reached}"
            )
    if lines:
        warnings.warn(
            "Stripped pruning wrappers before their schedule's end_step; "
            "the target sparsity is not reached (train longer or shorten "
            "the schedule): " + "; ".join(lines),
            TfaccelWarning,
            stacklevel=3,
        )


def _walk(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and not isinstance(layer, PruneLowMagnitude):
            yield from _walk(layer)
        else:
            yield layer


def sparsity(model: keras.Model) -> dict[str, float]:
    """Fraction of exact zeros of every prunable weight, by weight key.

    Works on wrapped models (counts zeros of `weight * mask`, including the
    kernels of channel-pruned layers) and plain or stripped ones; keys
    (`"layer_name/weight_name"`) are the same for both.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8,)), keras.layers.Dense(4, name="hidden"),
    ...     keras.layers.Dense(2, name="logits")])
    >>> sparsity(model)
    {'hidden/kernel': 0.0, 'logits/kernel': 0.0}

    Args:
        model: a Keras model (nested models are walked).

    Returns:
        A dict mapping weight key to sparsity in [0, 1].
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    from tfaccel.pruning.channels import PruneChannels

    result = {}
    for layer in _walk(model):
        if isinstance(layer, PruneLowMagnitude):
            result.update(layer.get_sparsity())
        elif isinstance(layer, PruneChannels):
            # Masked output channels are zeros of the kernel the layer uses.
            kernel = layer.layer.kernel
            value = kernel.numpy() * layer.mask.numpy()
            result[weight_key(layer.layer, kernel)] = float(np.mean(value == 0))
        elif layer.built and is_prunable(layer):
            for variable, _ in prunable_weights(layer):
                value = variable.numpy()
                result[weight_key(layer, variable)] = float(np.mean(value == 0))
    return result
