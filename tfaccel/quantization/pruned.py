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

`pruned_plans.prune_quantized` does the same from the other side (a QAT model pruned
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

from typing import Any

import keras
import numpy as np

from tfaccel.pruning.base import PruningWrapper
from tfaccel.pruning.masks import parse_structure
from tfaccel.pruning.registry import prunable_weights
from tfaccel.pruning.wrapper import PruneLowMagnitude, fits_pattern
from tfaccel.quantization.layers import QuantizeWrapper
from tfaccel.schedules import PruningSchedule, check_schedule

__all__ = ["PrunedQuantizeWrapper"]


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
        if hasattr(self, "bn_folding_step"):  # batch-statistics folding's count
            new.bn_folding_step.assign(self.bn_folding_step)
        return [new]

    def get_config(self):
        return {**super().get_config(), **self._schedule_config()}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(cls._schedule_from_config(config, custom_objects))
