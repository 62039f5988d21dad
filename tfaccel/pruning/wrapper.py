"""`PruneLowMagnitude`: a wrapper that trains a layer under magnitude masks."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

from tfaccel._substitute import full_precision, substitute
from tfaccel.graph import copy_layer
from tfaccel.pruning.base import PruningWrapper
from tfaccel.pruning.masks import nm_mask, parse_structure, unstructured_mask
from tfaccel.pruning.registry import is_prunable, prunable_weights, weight_key
from tfaccel.schedules import PruningSchedule, check_schedule, default_schedule

__all__ = ["PruneLowMagnitude", "fits_pattern"]


def fits_pattern(variable, axis: int, m: int) -> bool:
    """Whether an N:M pattern with this M tiles `variable`'s input axis."""
    return variable.shape[axis] % m == 0


def _cond_as_one_op(pred, true_fn, false_fn):
    """`tf.cond`, run in a graph as one `If` op that calls the taken branch.

    TF lowers a traced `tf.cond` into Switch/Merge nodes inlined into the
    step, and on the steps that do not prune every op of the mask update
    (dozens per layer) is still visited to pass its "dead" input on: on
    MobileNetV2 a0.35 about 5% of a train step for nothing. Kept as one
    `If` op (TF's attribute `_lower_using_switch_merge`, which cond_v2
    sets), a step runs the untaken branch's ops not at all. Eager and XLA
    run the cond as they would anyway.
    """
    if tf.executing_eagerly():
        return tf.cond(pred, true_fn, false_fn)
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_operations())
    out = tf.cond(pred, true_fn, false_fn)
    for op in graph.get_operations()[before:]:
        if op.type in ("If", "StatelessIf") and "_lower_using_switch_merge" in op.node_def.attr:
            op._set_attr("_lower_using_switch_merge", _FALSE)
    return out


_FALSE = attr_value_pb2.AttrValue(b=False)


@keras.saving.register_keras_serializable(package="tfaccel")
class PruneLowMagnitude(PruningWrapper):
    """Train a layer with its smallest-magnitude weights masked to zero.

    The wrapped layer computes with `weight * mask` in place of each prunable
    weight; the variable itself is never assigned in the forward pass, and
    the gradient at masked positions is zero. Each training call evaluates
    the schedule at the wrapper's own step counter (the k-th training call,
    counting from 1, sees step k, exactly as tfmot's k-th step does) and, when the
    schedule says so, recomputes the masks from `|weight * old_mask|`, so
    weights pruned earlier stay pruned as sparsity rises.

    Masks and the step are layer variables with `aggregation="none"`: every
    replica computes them identically from the already-synchronized weights,
    so no cross-replica traffic is needed and `tf.cond` can skip the sort
    on steps that do not prune. They are saved with the model and restored
    by `keras.models.load_model` or `BackupAndRestore`. No callback is needed.

    With `structure="N:M"` (e.g. `"2:4"`) the schedule only decides *when*
    masks are recomputed; the pattern keeps exactly N of every M consecutive
    weights along the input-channel axis, whatever the schedule's sparsity.

    Example:

    >>> from tfaccel.schedules import ConstantSparsity
    >>> layer = PruneLowMagnitude(
    ...     keras.layers.Dense(4, name="dense"), ConstantSparsity(0.5, frequency=1))
    >>> y = layer(np.ones((2, 8), "float32"), training=True)
    >>> layer.sparsity()
    {'dense/kernel': 0.5}

    Args:
        layer: the layer to prune (a registered prunable layer, or one with
            a `get_prunable_weights()` method).
        schedule: a `tfaccel.schedules.PruningSchedule`; defaults to
            `ConstantSparsity(0.5, begin_step=1)` (from the first step).
        structure: `"unstructured"` or an `"N:M"` string such as `"2:4"`.
        calls_per_step: how many times the model calls this layer in one
            training step (2+ for a layer shared by several branches): the
            schedule then advances once per step, not once per call.
        **kwargs: base layer arguments (`name`, ...).

    Call arguments:
        *args, **kwargs: forwarded to the wrapped layer.
        training: masks are updated and the step advances only when true.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        schedule: PruningSchedule | None = None,
        structure: str = "unstructured",
        calls_per_step: int = 1,
        **kwargs,
    ):
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
        self.calls_per_step = int(calls_per_step)
        self.schedule = check_schedule(
            default_schedule() if schedule is None else schedule
        )
        self.structure = structure
        self._nm = parse_structure(structure)
        if not is_prunable(layer):
            raise ValueError(
                f"Layer '{layer.name}' ({layer.__class__.__name__}) has no "
                "prunable weights: register it with "
                "`tfaccel.pruning.register_prunable` or give it a "
                "`get_prunable_weights()` method."
            )
        self._pruned = []
        self.masks = []

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._pruned = prunable_weights(self.layer)
        if not self._pruned:
            raise ValueError(
                f"Layer '{self.layer.name}' returned no prunable weights."
            )
        if self._nm is not None:
            n, m = self._nm
            for variable, axis in self._pruned:
                if not fits_pattern(variable, axis, m):
                    raise ValueError(
                        f"structure='{self.structure}' needs M={m} to divide "
                        f"the input-channel axis ({axis}) of "
                        f"'{variable.path}'. Received: shape "
                        f"{tuple(variable.shape)}"
                    )
        # Fixed creation order (masks by weight order, then the step) so that
        # checkpoints and BackupAndRestore stay compatible.
        self.masks = [
            self.add_weight(
                name=f"{variable.name}_mask",
                shape=tuple(variable.shape),
                dtype=variable.dtype,
                initializer="ones",
                trainable=False,
                aggregation="none",
            )
            for variable, _ in self._pruned
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

    def get_build_config(self):
        # The inner layer's own build config: multi-input layers such as
        # MultiHeadAttention cannot be rebuilt from one input shape.
        if not self.built:
            return None
        return {"layer": self.layer.get_build_config()}

    def build_from_config(self, config):
        inner = (config or {}).get("layer")
        if inner and not self.layer.built:
            self.layer.build_from_config(inner)
        if self.layer.built and not self.built:
            self.build()

    def _new_masks(self, sparsity):
        masks = []
        for (variable, axis), mask in zip(self._pruned, self.masks):
            if self._nm is None:
                masks.append(unstructured_mask(variable, sparsity, keep=mask))
            else:
                masks.append(nm_mask(variable, *self._nm, axis=axis))
        return masks

    def update_masks(self):
        """Advance one training step: recompute masks if the schedule says so.

        The k-th training call (k = 1, 2, ...) evaluates the schedule at step
        k, as tfmot's k-th step does (it reads `optimizer.iterations + 1`).
        """
        self.pruning_step.assign_add(1)
        step = self.pruning_step
        if self.calls_per_step > 1:
            # A shared layer: calls 1..n are step 1, calls n+1..2n step 2, ...
            step = (step + self.calls_per_step - 1) // self.calls_per_step
        should_prune = self.schedule.should_prune(step)

        def prune():
            # The target sparsity only where masks change: a decaying
            # schedule's ops are not run by every layer at every step.
            sparsity = self.schedule.sparsity_at(step)
            # Rank the float32 weights, not their bfloat16/float16 autocast
            # (mixed precision would tie and misorder close magnitudes).
            with full_precision():
                new = self._new_masks(sparsity)
            for mask, value in zip(self.masks, new):
                mask.assign(value)
            return tf.constant(True)

        _cond_as_one_op(should_prune, prune, lambda: tf.constant(False))

    def call(self, inputs=None, *args, training=None, **kwargs):
        # `inputs=None`: layers called with keywords only (`query=`,
        # `value=`) are wrapped too; a Sequential needs a positional one.
        if inputs is not None:
            args = (inputs, *args)
        if training:
            self.update_masks()
        mapping = [
            (variable, variable * keras.ops.cast(mask, variable.dtype))
            for (variable, _), mask in zip(self._pruned, self.masks)
        ]
        with substitute(mapping, tracked=self.layer.variables, owner=self.layer):
            return self.layer(*args, training=training, **kwargs)

    @property
    def step(self) -> keras.Variable:
        """The int64 count of training calls so far (`pruning_step`)."""
        return self.pruning_step

    def steps_done(self) -> int:
        return int(self.pruning_step.numpy()) // self.calls_per_step

    def masked_weights(self) -> list[tuple[keras.Variable, np.ndarray]]:
        """`(variable, weight * mask as numpy)` for each pruned weight."""
        return [
            (variable, variable.numpy() * mask.numpy())
            for (variable, _), mask in zip(self._pruned, self.masks)
        ]

    def sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros in `weight * mask`, by weight key."""
        return {
            weight_key(self.layer, variable): float(np.mean(value == 0))
            for variable, value in self.masked_weights()
        }

    def get_sparsity(self) -> dict[str, float]:
        """Alias of `sparsity()` (the name tfaccel 0.1 used)."""
        return self.sparsity()

    def strip(self) -> list[keras.layers.Layer]:
        """The wrapped layer's plain copy holding `weight * mask`."""
        new = copy_layer(self.layer)
        masked = {id(v): value for v, value in self.masked_weights()}
        new.set_weights([masked.get(id(v), v.numpy()) for v in self.layer.weights])
        return [new]

    def get_config(self):
        return {**super().get_config(), **self._schedule_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = cls._schedule_from_config(config, custom_objects)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        return cls(layer, **config)
