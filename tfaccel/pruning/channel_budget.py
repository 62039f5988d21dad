"""Which layers channel pruning wraps, and how many channels each masks.

`prune_channels` asks `chosen_layers` for the layers it may wrap (the one
layer selector, `tfaccel.graph.selector`, plus what the channel graph
allows), and gives each a `PruningSchedule`: the user's schedule, a float
fraction as `ConstantSparsity`, or its share of a global budget.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from tfaccel._warnings import TfaccelWarning
from tfaccel.graph import Selector, all_layers
from tfaccel.pruning.channel_graph import ChannelGraph, is_prunable
from tfaccel.pruning.recurrent_channels import RECURRENT, is_recurrent, unit_scores
from tfaccel.schedules import (
    ConstantSparsity,
    PruningSchedule,
    ScaledSparsity,
    check_schedule,
)

__all__ = [
    "channel_schedule",
    "channel_scores",
    "check_criterion",
    "chosen_layers",
    "global_schedules",
    "maps_zero_to_zero",
]

_CRITERIA = ("l1", "l2", "bn_gamma")


def maps_zero_to_zero(activation) -> bool:
    """Whether `activation(0) == 0`: a masked channel then stays exactly 0."""
    if activation is None:
        return True
    value = ops.convert_to_numpy(activation(ops.zeros((1,), "float32")))
    return float(np.abs(value).max()) == 0.0


def check_criterion(criterion) -> str:
    """`criterion` if it is one of `"l1"`, `"l2"`, `"bn_gamma"`, else a ValueError."""
    if criterion not in _CRITERIA:
        raise ValueError(
            f"`criterion` must be one of {_CRITERIA}. Received: criterion={criterion!r}"
        )
    return criterion



def channel_schedule(schedule: Any, scale: float = 1.0) -> PruningSchedule:
    """The `PruningSchedule` of a channel wrapper from what users pass.

    A float fraction becomes `ConstantSparsity(fraction, begin_step=0,
    frequency=1)`: masks from the first training step, recomputed every
    step. `scale` (older configs' global-budget factor) scales it.
    """
    if isinstance(schedule, dict):
        schedule = keras.saving.deserialize_keras_object(schedule)
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        if not 0.0 <= float(schedule) < 1.0:
            raise ValueError(
                "`schedule` as a number must be a fraction in [0, 1). "
                f"Received: schedule={schedule!r}"
            )
        schedule = ConstantSparsity(float(schedule), begin_step=0, frequency=1)
    check_schedule(schedule)
    if float(scale) != 1.0:
        schedule = ScaledSparsity(schedule, float(scale))
    return schedule


def channel_scores(layer, norm, criterion: str):
    """Criterion score of each output channel of `layer` (float32, `(C,)`)."""
    if criterion == "bn_gamma":
        return ops.abs(ops.cast(norm.gamma, "float32"))
    if is_recurrent(layer):  # an LSTM: per unit, every gate
        return unit_scores(layer, criterion)
    kernel = ops.cast(layer.kernel, "float32")
    flat = ops.reshape(kernel, (-1, kernel.shape[-1]))
    if criterion == "l1":
        return ops.sum(ops.abs(flat), axis=0)
    return ops.sqrt(ops.sum(ops.square(flat), axis=0))


def global_schedules(layers, norms, criteria, fraction: float) -> dict:
    """id(layer) -> its share of a global budget, as a `ConstantSparsity`."""
    scores, owners = [], []
    for index, layer in enumerate(layers):
        s = ops.convert_to_numpy(channel_scores(layer, norms[index], criteria[index]))
        s = s.astype("float64")
        scores.append(s / max(float(s.mean()), 1e-12))
        owners.append(np.full(s.shape, index))
    flat, owner = np.concatenate(scores), np.concatenate(owners)
    total = int(round(fraction * flat.size))
    counts = np.zeros(len(layers), int)
    for position in np.argsort(flat, kind="stable"):
        if total == 0:
            break
        w = owner[position]
        if counts[w] < scores[w].size - 1:
            counts[w] += 1
            total -= 1
    return {
        id(layer): ConstantSparsity(float(count) / scores[i].size, 0, frequency=1)
        for i, (layer, count) in enumerate(zip(layers, counts))
    }


def chosen_layers(analysis: ChannelGraph, pick: Selector, model_name: str) -> list:
    """The layers `prune_channels` wraps; raises for a named layer it cannot."""
    graph = analysis.graph
    top = {id(layer) for layer in graph.layers()}
    every = all_layers(graph.model)
    pick.check_names(every, model_name)
    for layer in every:
        if id(layer) not in top and layer.name in pick.names:
            raise ValueError(
                f"Layer {layer.name!r} is inside a nested model: channel pruning "
                "does not reach into nested models (prune the nested model "
                f"itself). Received: layers={pick.spec!r}"
            )
    chosen, grouped, blocked, recurrent = [], [], [], []
    for layer in graph.layers():
        selected = pick(layer)
        if not pick.empty and not selected:
            continue
        if not is_prunable(layer):
            if layer.name in pick.names:
                raise ValueError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) cannot be "
                    "channel-pruned: only Conv1D/Conv2D/Conv3D/Dense layers "
                    "and LSTM layers (with a tanh-like activation, no "
                    "returned states; in a Bidirectional, joined by 'concat') "
                    "produce prunable channels."
                    + (_RECURRENT_HINT if isinstance(layer, RECURRENT) else "")
                )
            if isinstance(layer, RECURRENT):
                recurrent.append(f"{layer.name!r} ({type(layer).__name__})")
            continue
        reasons = analysis.reasons(layer)
        if reasons and selected:
            raise ValueError(
                f"Layer {layer.name!r} cannot be channel-pruned because its "
                "output channels reach a layer that cannot be shrunk: "
                + "; ".join(reasons)
            )
        others, pinned = analysis.group_members(layer) if not reasons else ((), False)
        if reasons:
            blocked.append((layer.name, reasons[0]))
            continue
        if not selected and (others or pinned):
            grouped.append(layer.name)
            continue
        chosen.append(layer)
    if recurrent:
        warnings.warn(
            f"Channel pruning keeps every unit of the recurrent layers "
            f"{', '.join(recurrent)}: it removes units of LSTM layers (and of "
            "Bidirectional LSTMs joined by 'concat') only, not of GRU, "
            "SimpleRNN or other cells." + _RECURRENT_HINT,
            TfaccelWarning,
            stacklevel=4,
        )
    if not chosen and (grouped or blocked):
        _warn_nothing_chosen(grouped, blocked)
    return chosen


_RECURRENT_HINT = (
    " Prune a recurrent layer's kernels and recurrent kernels with "
    "tfaccel.prune(model, structure='unstructured' or '2:4'), or make it "
    "smaller (fewer `units`) and train again."
)


def _count(items: list, one: str, many: str) -> str:
    return f"1 layer {one}" if len(items) == 1 else f"{len(items)} layers {many}"


def _warn_nothing_chosen(grouped: list[str], blocked: list[tuple[str, str]]) -> None:
    """No layer was wrapped although the model has prunable ones: say why."""

    def some(names):
        return ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")

    parts = []
    if grouped:
        parts.append(
            f"{_count(grouped, 'joins', 'join')} their channels with another layer's in an "
            f"elementwise merge ({some(grouped)}): name them in `layers` to "
            "prune such groups together"
        )
    if blocked:
        name, reason = blocked[0]
        parts.append(
            f"{_count(blocked, 'reaches', 'reach')} a layer or output that cannot be shrunk "
            f"({some([n for n, _ in blocked])}; {name!r}: {reason}; naming a "
            "layer in `layers` raises with all its reasons)"
        )
    warnings.warn(
        "Channel pruning left every layer dense: " + "; ".join(parts) + ".",
        TfaccelWarning,
        stacklevel=4,
    )
