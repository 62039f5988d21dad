"""The model plans of pruning inside QAT (see `tfaccel.quantization.pruned`).

`carry_pruning`, `quantize_wrapper` and `carry_state` are `quantize`'s hooks:
a `PruneLowMagnitude` whose schedule is unfinished is unwrapped, its layer
becomes a `PrunedQuantizeWrapper` and its masks and step carry over.
`prune_quantized` goes the other way: a QAT model pruned afterwards.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras

from tfaccel import graph
from tfaccel._warnings import TfaccelWarning
from tfaccel.graph import Replacement, copy_layer
from tfaccel.pruning.base import PruningWrapper, pruning_wrappers
from tfaccel.pruning.masks import parse_structure
from tfaccel.pruning.prune import _warn_unfinished, strip_pruning
from tfaccel.pruning.wrapper import PruneLowMagnitude
from tfaccel.quantization.layers import QuantizeWrapper
from tfaccel.quantization.pruned import PrunedQuantizeWrapper
from tfaccel.quantization.registry import quantize_kind
from tfaccel.schedules import PruningSchedule, check_schedule, default_schedule

__all__ = ["carry_pruning", "carry_state", "prune_quantized", "quantize_wrapper"]


def quantize_wrapper(
    source: PruneLowMagnitude | None, layer: keras.layers.Layer, **kwargs: Any
) -> QuantizeWrapper:
    """The QAT wrapper of `layer`: pruned under `source`'s schedule, if any.

    `carry_state` later copies `source`'s masks and step into it.
    """
    if source is None:
        return QuantizeWrapper(layer, **kwargs)
    kwargs.pop("preserve_sparsity", None)
    kwargs.pop("preserve_clusters", None)
    wrapper = PrunedQuantizeWrapper(
        layer,
        schedule=source.schedule,
        structure=source.structure,
        calls_per_step=source.calls_per_step,
        **kwargs,
    )
    # Not a tracked attribute: the source must not become a sublayer.
    object.__setattr__(wrapper, "_carried_from", source)
    return wrapper


def carry_state(model: keras.Model) -> None:
    """Copy masks and step of each source wrapper into its new QAT wrapper."""
    for wrapper in graph.all_layers(model):
        source = getattr(wrapper, "_carried_from", None)
        if source is None:
            continue
        object.__delattr__(wrapper, "_carried_from")
        index = [id(v) for v, _ in source._pruned].index(id(source.layer.kernel))
        wrapper.masks[0].assign(keras.ops.convert_to_numpy(source.masks[index]))
        wrapper.pruning_step.assign(keras.ops.convert_to_numpy(source.pruning_step))


# Layer kinds `quantize` turns into one QuantizeWrapper around the layer.
_WRAPPED_KINDS = ("per_channel", "depthwise", "per_tensor")


def _float_warning(names: list[str]) -> None:
    warnings.warn(
        "quantize: pruning cannot continue inside QAT for these layers (kept "
        "float by `skip`, or not a Conv/DepthwiseConv/Dense that QAT wraps "
        "whole): they are stripped at their current masks and their zeros "
        f"are not kept while the QAT model trains: {names}. Quantize them, "
        "or finish their pruning and freeze them (`trainable=False`).",
        TfaccelWarning,
        stacklevel=4,
    )


def carry_pruning(
    model: keras.Model, skip: graph.Selector
) -> tuple[keras.Model, dict[int, PruneLowMagnitude]]:
    """`model` with its pruning wrappers unwrapped or stripped for `quantize`.

    A `PruneLowMagnitude` whose schedule is not finished, around a layer
    `quantize` wraps whole (Conv, DepthwiseConv, Dense) and `skip` does not
    select, is unwrapped
    to a copy of its layer holding the *unmasked* weights; the returned
    dict maps that copy's id to the wrapper, whose schedule, masks and step
    `quantize_wrapper` and `carry_state` carry into the QAT wrapper. Every
    other wrapper is stripped (`strip()`, masks baked in).

    Raises:
        ValueError: for a channel-pruning (or other non-`PruneLowMagnitude`)
            wrapper whose schedule is not finished: its pruning cannot
            continue inside QAT.
    """
    wrappers = pruning_wrappers(model)
    if not wrappers:
        return model, {}
    unfinished = [w for w in wrappers if w.unfinished() is not None]
    stuck = [w for w in unfinished if not isinstance(w, PruneLowMagnitude)]
    if stuck:
        raise ValueError(
            f"Cannot quantize before the end of {stuck[0].structure.rstrip('s')} "
            "pruning: "
            "it does not continue inside quantization-aware training. Train "
            "the pruned model to its schedule's end_step, `strip_pruning` it "
            "(which removes the pruned channels or heads), then quantize. "
            "Received: "
            + "; ".join(w.unfinished() for w in stuck)
        )

    def stays_float(w):
        return bool(skip(w) or skip(w.layer)) or (
            quantize_kind(w.layer) not in _WRAPPED_KINDS
        )

    carried = {id(w) for w in unfinished if not stays_float(w)}
    floating = [w.name for w in wrappers if stays_float(w)]  # no fixed mask
    if floating:
        _float_warning(floating)
    if not carried:
        return strip_pruning(model), {}
    shrinking = [
        w.name
        for w in wrappers
        if type(w).strip_model.__func__ is not PruningWrapper.strip_model.__func__
    ]
    if shrinking:
        raise ValueError(
            "Cannot keep pruning inside QAT while channel-pruned layers wait "
            "to be removed: `strip_pruning` the channel-pruned model first. "
            f"Received: channel-pruned layers {shrinking}"
        )
    _warn_unfinished([w for w in unfinished if id(w) not in carried])
    sources: dict[int, PruneLowMagnitude] = {}

    def plan(node, graph_):
        wrapper = node.operation
        if not isinstance(wrapper, PruningWrapper):
            return None
        if id(wrapper) not in carried:
            first, *rest = wrapper.strip()
            return Replacement(first, after=rest)
        inner = copy_layer(wrapper.layer)
        sources[id(inner)] = wrapper
        return Replacement(inner, weights=[(wrapper.layer, inner)])

    return graph.rebuild(model, plan), sources


def prune_quantized(
    model: keras.Model,
    schedule: PruningSchedule | None = None,
    structure: str = "unstructured",
    layers: graph.LayerSelector = None,
) -> keras.Model:
    """`prune` for a quantization-aware model: its kernels prune inside QAT.

    Each selected `QuantizeWrapper` becomes a `PrunedQuantizeWrapper` with
    the same weights, ranges and BatchNorm statistics, so that
    `prune(quantize(model))` trains like `quantize(prune(model))`. A
    wrapper's fixed mask (`preserve_sparsity`) seeds the pruning mask:
    those weights stay pruned.

    Args:
        model: a model from `tfaccel.quantize`.
        schedule: a `tfaccel.schedules.PruningSchedule` (default
            `ConstantSparsity(0.5, begin_step=1)`).
        structure: `"unstructured"` or `"N:M"`; channel pruning must come
            before `quantize`.
        layers: which `QuantizeWrapper`s, by the wrapper or the layer it
            wraps (see `tfaccel.graph.selector`); None for all.

    Returns:
        A new Keras model.

    Raises:
        ValueError: for `structure="channels"`, a model already pruned, or
            no selected `QuantizeWrapper` (cluster-preserving ones excluded).
    """
    if structure == "channels":
        raise ValueError(
            "Channel pruning changes shapes: prune channels before `quantize` "
            "(prune, fit, strip_pruning, then quantize). Received: "
            "structure='channels' for a quantization-aware model"
        )
    parse_structure(structure)
    schedule = check_schedule(default_schedule() if schedule is None else schedule)
    already = [w.name for w in pruning_wrappers(model)]
    if already:
        raise ValueError(
            f"Layers {already} are already pruned. Call `strip_pruning(model)` "
            "first to prune them again."
        )
    selected = graph.selector(layers, "layers")
    chosen = {
        id(w)
        for w in graph.all_layers(model)
        if type(w) is QuantizeWrapper
        and not w.preserve_clusters
        and (selected.empty or selected(w) or selected(w.layer))
    }
    if not chosen:
        raise ValueError(
            f"No quantization-aware Conv/Dense layer selected in model "
            f"'{model.name}' (QuantizeWrapper layers; cluster-preserving ones "
            f"cannot prune). Received: layers={layers!r}"
        )

    def plan(node, graph_):
        old = node.operation
        if id(old) not in chosen:
            return None
        config = old.get_config()
        fixed = config.pop("preserve_sparsity", False)
        config.pop("preserve_clusters", None)
        config.update(
            schedule=keras.saving.serialize_keras_object(schedule),
            structure=structure,
            calls_per_step=len(graph_.calls(old)),
        )
        new = PrunedQuantizeWrapper.from_config(config)
        new.build_from_config(old.get_build_config())
        new.layer.set_weights(old.layer.get_weights())
        if old.batch_norm is not None:
            new.batch_norm.set_weights(old.batch_norm.get_weights())
        new.output_quantizer.set_weights(old.output_quantizer.get_weights())
        if fixed:
            new.masks[0].assign(keras.ops.convert_to_numpy(old.mask))
        return new

    return graph.rebuild(model, plan)
