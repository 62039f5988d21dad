"""Pruning inside quantization-aware training: one `fit` for both.

`quantize` of a model pruned with `tfaccel.prune` whose schedule still has
work to do (before its `end_step`, or before its first pruning step) keeps
the schedule running: each pruned Conv/Depthwise/Dense layer becomes a
`PrunedQuantizeWrapper`, a `QuantizeWrapper` that also is a
`tfaccel.pruning.PruningWrapper`. Its kernel is `kernel * mask` *before*
BatchNorm folding and fake quantization, the masks follow the schedule with
`PruneLowMagnitude`'s semantics and counter (the k-th training call sees
step k; unstructured or N:M; masks ranked on the float kernel, pruned
weights stay pruned), and the pruning state of the source wrapper (masks,
step) carries over. `tfaccel.sparsity`, `strip_pruning`, `PruningSummary`
and `export_tflite` see it through the `PruningWrapper` interface:
stripping gives a plain `QuantizeWrapper` whose fixed mask
(`preserve_sparsity`) keeps the zeros, and export writes the sparse int8
file.

`prune_quantized` does the same from the other side (a QAT model pruned
afterwards); `tfaccel.prune` of a QAT model does not call it yet and
raises.

A wrapper whose schedule is finished is stripped before quantization as
before (its zeros kept by the fixed mask): nothing is left to run. What
cannot continue inside QAT is never dropped silently: channel pruning
before its end raises (finish it and `strip_pruning`, which shrinks the
model, then quantize), and a pruned layer that stays float (`skip`, or a
layer QAT does not fuse) warns, naming the layers.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from tfaccel import graph
from tfaccel._warnings import TfaccelWarning
from tfaccel.graph import Replacement, copy_layer
from tfaccel.pruning.base import PruningWrapper, pruning_wrappers
from tfaccel.pruning.masks import parse_structure
from tfaccel.pruning.prune import _warn_unfinished, strip_pruning
from tfaccel.pruning.registry import prunable_weights
from tfaccel.pruning.wrapper import PruneLowMagnitude, fits_pattern
from tfaccel.quantization.layers import QuantizeWrapper
from tfaccel.quantization.registry import quantize_kind
from tfaccel.schedules import PruningSchedule, check_schedule, default_schedule

__all__ = [
    "PrunedQuantizeWrapper",
    "carry_pruning",
    "carry_state",
    "prune_quantized",
    "quantize_wrapper",
]


@keras.saving.register_keras_serializable(package="tfaccel")
class PrunedQuantizeWrapper(QuantizeWrapper, PruningWrapper):
    """A `QuantizeWrapper` whose kernel is also pruned under a schedule.

    The kernel the fused int8 op computes with is
    `fake_quant(fold(kernel * mask, batch_norm))`. Each training call first
    advances the pruning step and, when the schedule says so, recomputes the
    mask from `|kernel * old_mask|` exactly as `PruneLowMagnitude` does
    (same step counter semantics, N:M patterns, `calls_per_step`). The mask
    and the step are layer variables with `aggregation="none"`, computed
    identically on every replica from the synchronized kernel, created after
    the `QuantizeWrapper`'s own variables. `quantize` creates these wrappers
    for pruned layers whose schedule is not finished; `strip()` returns a
    `QuantizeWrapper` holding `kernel * mask` with that fixed mask
    (`preserve_sparsity=True`).

    Example:

    >>> from tfaccel.schedules import ConstantSparsity
    >>> layer = PrunedQuantizeWrapper(
    ...     keras.layers.Dense(4, name="dense"),
    ...     schedule=ConstantSparsity(0.5, begin_step=1, frequency=1))
    >>> _ = layer(np.ones((2, 8), "float32"), training=True)
    >>> layer.sparsity(), layer.steps_done()
    ({'dense/kernel': 0.5}, 1)
    >>> type(layer.strip()[0]).__name__
    'QuantizeWrapper'

    Args:
        layer: a `Conv1D`, `Conv2D`, `DepthwiseConv2D` or `Dense` layer
            without its own activation.
        schedule: a `tfaccel.schedules.PruningSchedule`.
        structure: `"unstructured"` or an `"N:M"` string such as `"2:4"`.
        calls_per_step: training calls per step (a shared layer).
        **kwargs: the other `QuantizeWrapper` arguments (`batch_norm`,
            `activation`, `weight_mode`, `ema_decay`, `name`, ...);
            `preserve_sparsity` and `preserve_clusters` must stay off (the
            pruning mask replaces the fixed one).
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        schedule: PruningSchedule,
        structure: str = "unstructured",
        calls_per_step: int = 1,
        **kwargs: Any,
    ):
        for name in ("preserve_sparsity", "preserve_clusters"):
            if kwargs.get(name):
                raise ValueError(
                    f"`{name}` cannot be combined with a pruning schedule (the "
                    "schedule's mask keeps the zeros). Received: "
                    f"{name}={kwargs[name]!r}"
                )
        kwargs.pop("preserve_sparsity", None)
        kwargs.pop("preserve_clusters", None)
        super().__init__(layer, **kwargs)
        if (
            isinstance(calls_per_step, bool)
            or not isinstance(calls_per_step, (int, np.integer))
            or calls_per_step < 1
        ):
            raise ValueError(
                "`calls_per_step` must be a positive integer. Received: "
                f"calls_per_step={calls_per_step!r}"
            )
        self.schedule = check_schedule(schedule)
        self.structure = structure
        self._nm = parse_structure(structure)
        self.calls_per_step = int(calls_per_step)
        self._pruned: list = []
        self.masks: list = []

    def build(self, input_shape):
        super().build(input_shape)
        # The kernel QuantizeWrapper folds (the registry's axis for N:M).
        self._pruned = [
            (v, axis) for v, axis in prunable_weights(self.layer)
            if v is self.layer.kernel
        ] or [(self.layer.kernel, -2)]
        if self._nm is not None:
            variable, axis = self._pruned[0]
            if not fits_pattern(variable, axis, self._nm[1]):
                raise ValueError(
                    f"structure='{self.structure}' needs M={self._nm[1]} to "
                    f"divide the input-channel axis ({axis}) of "
                    f"'{variable.path}'. Received: shape {tuple(variable.shape)}"
                )
        # After the QuantizeWrapper's variables, in this order (mask, step):
        # checkpoints and BackupAndRestore depend on it.
        variable = self._pruned[0][0]
        self.masks = [
            self.add_weight(
                name=f"{variable.name}_mask",
                shape=tuple(variable.shape),
                dtype=variable.dtype,
                initializer="ones",
                trainable=False,
                aggregation="none",
            )
        ]
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="none",
        )
        self.built = True

    # The pruning state machine of `PruneLowMagnitude`, shared, not copied.
    update_masks = PruneLowMagnitude.update_masks
    _new_masks = PruneLowMagnitude._new_masks
    masked_weights = PruneLowMagnitude.masked_weights
    sparsity = PruneLowMagnitude.sparsity
    steps_done = PruneLowMagnitude.steps_done
    step = PruneLowMagnitude.step

    def _kernel(self):
        # The mask goes on the float kernel, before folding and fake-quant.
        kernel = super()._kernel()
        return kernel * keras.ops.cast(self.masks[0], kernel.dtype)

    def call(self, inputs, training=None):
        if training:
            self.update_masks()
        return super().call(inputs, training=training)

    def strip(self) -> list[keras.layers.Layer]:
        """A `QuantizeWrapper` holding `kernel * mask`, with that fixed mask."""
        config = self.get_config()
        for key in ("schedule", "structure", "calls_per_step"):
            config.pop(key, None)
        config["preserve_sparsity"] = True
        new = QuantizeWrapper.from_config(config)
        new.build_from_config(self.get_build_config())
        (_, masked), = self.masked_weights()
        mask = keras.ops.convert_to_numpy(self.masks[0])
        kernel = self.layer.kernel
        new.layer.set_weights(
            [masked if v is kernel else v.numpy() for v in self.layer.weights]
        )
        if self.batch_norm is not None:
            new.batch_norm.set_weights(self.batch_norm.get_weights())
        new.output_quantizer.set_weights(self.output_quantizer.get_weights())
        new.mask.assign(mask)
        return [new]

    def get_config(self):
        config = super().get_config()
        config["schedule"] = keras.saving.serialize_keras_object(self.schedule)
        config["structure"] = self.structure
        if self.calls_per_step != 1:
            config["calls_per_step"] = self.calls_per_step
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(
            config["schedule"], custom_objects=custom_objects
        )
        return super().from_config(config)


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
            "Cannot quantize before the end of channel pruning: it does not "
            "continue inside quantization-aware training. Train the pruned "
            "model to its schedule's end_step, `strip_pruning` it (which "
            "removes the channels), then quantize. Received: "
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
