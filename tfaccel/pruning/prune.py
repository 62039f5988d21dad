"""`prune`, `strip_pruning` and `sparsity`: whole-model pruning verbs."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from tfaccel import graph
from tfaccel._warnings import TfaccelWarning
from tfaccel.graph import LayerSelector, Replacement, copy_layer
from tfaccel.pruning.allocation import allocate, check_allocation
from tfaccel.pruning.base import PruningWrapper, pruning_wrappers
from tfaccel.pruning.head_wrapper import wrap_heads
from tfaccel.pruning.masks import parse_structure
from tfaccel.pruning.registry import (
    is_prunable,
    prunable_weights,
    unregistered_weights,
    weight_key,
)
from tfaccel.pruning.wrapper import PruneLowMagnitude, fits_pattern
from tfaccel.schedules import (
    PruningSchedule,
    ScaledSparsity,
    check_schedule,
    default_schedule,
)

__all__ = ["Sparsity", "prune", "strip_pruning", "sparsity"]

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
            `ConstantSparsity(0.5, begin_step=1)` (from the first step). Shared by all wrapped layers.
        structure: `"unstructured"`, an `"N:M"` string such as `"2:4"`
            (N of every M consecutive input-channel weights are kept), or
            `"channels"` (whole output channels, see
            `tfaccel.pruning.prune_channels`; `strip_pruning` then rebuilds a
            smaller model), or `"heads"` (whole attention heads of each
            `MultiHeadAttention`, the schedule's sparsity being the fraction
            of heads, see `tfaccel.pruning.head_wrapper.PruneHeads`;
            `strip_pruning` then slices them out into smaller layers).
        layers: which layers to prune: None (every prunable layer), a
            layer name, layer or class, a predicate `layer -> bool`, or a
            list of these (see `tfaccel.graph.selector`). With N:M, a layer
            whose input channels M does not divide (an RGB stem conv) is
            left dense with a warning unless `layers` selects it.
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

    A model from `tfaccel.quantize` is pruned inside QAT (its kernels' masks
    go on the float kernel before folding and fake quantization, see
    `tfaccel.quantization.PrunedQuantizeWrapper`), as `quantize` of a pruned
    model would; channel and head pruning must come before `quantize`.

    Raises:
        ValueError: for a subclassed model, an unknown `structure` or
            `allocation`, an allocation other than `"uniform"` with N:M or
            channels or heads, N:M that does not divide a weight's
            input-channel axis, `layers` that match no layer, a model with no
            prunable layer, or `structure="heads"` on a model with no
            (ungated, built) `MultiHeadAttention` or a quantization-aware one.
        TypeError: for arguments of the wrong type.
    """
    source = graph.read(model)
    schedule = check_schedule(default_schedule() if schedule is None else schedule)
    check_allocation(allocation)
    if allocation != "uniform" and structure != "unstructured":
        raise ValueError(
            f"allocation='{allocation}' shares an unstructured sparsity "
            "among layers; N:M and channel pruning set each layer's pattern "
            "themselves. Use allocation='uniform'. Received: "
            f"structure={structure!r}"
        )
    from tfaccel.quantization import is_quantized  # quantization imports pruning

    if structure == "heads":
        if is_quantized(model):
            raise ValueError(
                "Head pruning changes shapes: prune heads before `quantize` "
                "(prune, fit, strip_pruning, then quantize). Received: "
                "structure='heads' for a quantization-aware model"
            )
        return wrap_heads(model, schedule, layers)
    if is_quantized(model):
        # Prune inside QAT: trains like `quantize(prune(model))`.
        from tfaccel.quantization.pruned_plans import prune_quantized

        if allocation != "uniform":
            raise ValueError(
                "A quantization-aware model is pruned with allocation='uniform'; "
                "prune with ERK before `quantize`. Received: "
                f"allocation={allocation!r}"
            )
        return prune_quantized(model, schedule, structure, layers)
    if structure == "channels":
        # `prune_channels` copies the layers it rebuilds: `model` is untouched.
        from tfaccel.pruning.channels import prune_channels

        return prune_channels(model, schedule=schedule, layers=layers)
    nm = parse_structure(structure)
    selected = graph.selector(layers, "layers")
    candidates = _layers(source)
    for layer in candidates:
        if isinstance(layer, PruningWrapper):
            raise ValueError(
                f"Layer '{layer.name}' is already pruned. Call "
                "`strip_pruning(model)` first to prune it again."
            )
    selected.check_names(candidates, model.name)
    matched = [
        layer for layer in candidates if selected.empty or selected(layer)
    ]
    chosen = [layer for layer in matched if is_prunable(layer)]
    _warn_no_rule(matched)
    if nm is not None:
        chosen = _fit_pattern(chosen, nm, structure, selected)
    schedules = _allocate(chosen, schedule, allocation)
    wrapped: dict[int, PruneLowMagnitude] = {}

    def plan(node, graph_):
        layer = node.operation
        layer_schedule = schedules.get(id(layer), schedule)
        if id(layer) not in {id(x) for x in chosen} or layer_schedule is None:
            return None
        inner = copy_layer(layer)
        wrapper = PruneLowMagnitude(
            inner,
            layer_schedule,
            structure,
            calls_per_step=len(graph_.calls(layer)),
            name=layer.name,
        )
        wrapped[id(layer)] = wrapper
        return Replacement(wrapper, weights=[(layer, inner)])

    new_model = graph.rebuild(model, plan)
    if not wrapped:
        raise ValueError(
            f"No prunable layer selected in model '{model.name}' (selected: "
            f"{[layer.name for layer in matched]}). Prunable layers are Dense, "
            "Conv*, EinsumDense, Embedding, MultiHeadAttention, LSTM, GRU, "
            "SimpleRNN, Bidirectional, ... and layers "
            "registered with `register_prunable` or defining "
            "`get_prunable_weights()`."
        )
    return new_model


def _layers(source: graph.Graph) -> list:
    """Every layer called in `source` or in its nested models, once each."""
    seen, result = set(), []
    for _, node in source.walk():
        if node.is_layer and not node.is_model and id(node.operation) not in seen:
            seen.add(id(node.operation))
            result.append(node.operation)
    return result


def _warn_no_rule(layers: list) -> None:
    """Warn about layers with kernels that no prunable-weights rule covers."""
    lines = [
        f"'{layer.name}' ({type(layer).__name__}: {', '.join(paths)})"
        for layer in layers
        if (paths := unregistered_weights(layer))
    ]
    if lines:
        warnings.warn(
            "Left dense, no pruning rule for these layers' kernels: "
            f"{'; '.join(lines)}. Register one with "
            "`tfaccel.pruning.register_prunable(cls, fn)` or give the layer a "
            "`get_prunable_weights()` method.",
            TfaccelWarning,
            stacklevel=3,
        )


def _fit_pattern(layers: list, nm, structure: str, selected) -> list:
    """The layers whose weights an N:M pattern tiles; warn about the rest.

    A layer the user selected by name, object, class or predicate raises
    instead: it was asked for explicitly.
    """
    _, m = nm
    fitting, left = [], []
    for layer in layers:
        misfits = [
            f"'{variable.path}' {tuple(variable.shape)} axis {axis}"
            for variable, axis in (prunable_weights(layer) if layer.built else [])
            if not fits_pattern(variable, axis, m)
        ]
        if not misfits:
            fitting.append(layer)
        elif not selected.empty and selected(layer):
            raise ValueError(
                f"structure='{structure}' needs M={m} to divide the "
                f"input-channel axis of every weight of layer '{layer.name}'. "
                f"Received: {', '.join(misfits)}"
            )
        else:
            left.append(f"'{layer.name}' ({', '.join(misfits)})")
    if left:
        warnings.warn(
            f"structure='{structure}': left dense the layers whose input "
            f"channels M={m} does not divide: {'; '.join(left)}. Name a layer "
            "in `layers` to get an error instead.",
            TfaccelWarning,
            stacklevel=3,
        )
    return fitting


def _allocate(layers: list, schedule, allocation) -> dict:
    """id(layer) -> its schedule, or None for a layer left dense."""
    if allocation == "uniform" or schedule.final_sparsity == 0.0:
        return {}
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

    Every pruning wrapper is replaced by the plain layers its `strip()`
    gives; predictions are identical. A model pruned with
    `structure="channels"` is rebuilt smaller instead (`shrink`): pruned
    filters and the matching input channels of their consumers are removed;
    with `structure="heads"`, each `MultiHeadAttention` keeps only its
    unmasked heads (a smaller layer, same outputs).
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
    graph.read(model)  # a clear error for a subclassed model
    wrappers = pruning_wrappers(model)
    _warn_unfinished(wrappers)
    for cls in dict.fromkeys(type(wrapper) for wrapper in wrappers):
        stripped = cls.strip_model(model)
        if stripped is not None:
            model = stripped

    def plan(node, graph_):
        if not isinstance(node.operation, PruningWrapper):
            return None
        first, *rest = node.operation.strip()
        return Replacement(first, after=rest)

    return graph.rebuild(model, plan)


def _warn_unfinished(wrappers: list) -> None:
    """Warn about pruning wrappers stripped before their schedule's end."""
    lines = [line for line in (w.unfinished() for w in wrappers) if line]
    if lines:
        warnings.warn(
            "Stripped pruning wrappers before their schedule's end_step; "
            "the target sparsity is not reached (train longer or shorten "
            "the schedule): " + "; ".join(lines),
            TfaccelWarning,
            stacklevel=3,
        )


class Sparsity(dict):
    """`sparsity`'s result: weight key -> fraction of zeros, plus `dense`.

    A plain dict of `{"layer_name/weight_name": fraction}` with one more
    attribute, `dense`: for a pruned model, each prunable weight left
    outside the pruning wrappers, with why (an N:M pattern that cannot tile
    its input channels, or a layer not selected). Empty for a model with no
    pruning wrappers (nothing was asked of it).
    """

    dense: dict[str, str]

    def __init__(self, values=(), dense=None):
        super().__init__(values)
        self.dense = dict(dense or {})


def sparsity(model: keras.Model) -> Sparsity:
    """Fraction of exact zeros of every prunable weight, by weight key.

    Works on wrapped models (counts zeros of the weights the wrappers
    compute with, including the kernels of channel-pruned layers) and plain
    or stripped ones; keys (`"layer_name/weight_name"`) are the same for
    both. In a pruned model, the prunable weights that stayed dense (a layer
    whose input channels `structure="2:4"` cannot tile, a layer not
    selected) are listed with the reason in the result's `dense`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8,)), keras.layers.Dense(4, name="hidden"),
    ...     keras.layers.Dense(2, name="logits")])
    >>> sparsity(model)
    {'hidden/kernel': 0.0, 'logits/kernel': 0.0}
    >>> pruned = prune(model, structure="2:4", layers="hidden")
    >>> sparsity(pruned).dense
    {'logits/kernel': 'not pruned: not selected by `layers`'}

    Args:
        model: a Keras model (nested models are walked).

    Returns:
        A `Sparsity`: a dict mapping weight key to sparsity in [0, 1], with
        `dense` (weight key -> why it was left dense).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    result = Sparsity()
    layers = list(_outside_wrappers(model))
    structures = sorted(
        {layer.structure for layer in layers if isinstance(layer, PruningWrapper)}
    )
    for layer in layers:
        if isinstance(layer, PruningWrapper):
            result.update(layer.sparsity())
        elif layer.built and is_prunable(layer):
            for variable, axis in prunable_weights(layer):
                value = variable.numpy()
                key = weight_key(layer, variable)
                result[key] = float(np.mean(value == 0))
                if structures:
                    result.dense[key] = _why_dense(variable, axis, structures)
    return result


def _why_dense(variable, axis: int, structures: list[str]) -> str:
    for structure in structures:
        nm = (
            None if structure in ("channels", "heads") else parse_structure(structure)
        )
        if nm is not None and not fits_pattern(variable, axis, nm[1]):
            return (
                f"structure='{structure}' needs M={nm[1]} to divide its "
                f"input channels (axis {axis} of shape {tuple(variable.shape)})"
            )
    return "not pruned: not selected by `layers`"


def _outside_wrappers(model):
    """Layers of `model` and its nested models, not looking inside wrappers."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _outside_wrappers(layer)
        else:
            yield layer
