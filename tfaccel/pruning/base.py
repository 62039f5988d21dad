"""`PruningWrapper`: the interface every pruning wrapper shares.

`PruneLowMagnitude` (unstructured and N:M) and `PruneChannels` (whole
output channels) differ in what they mask, not in how the rest of tfaccel
talks to them: a schedule, an int64 step counter in a layer variable,
`sparsity()`, and `strip()` to plain layers. `sparsity`, `strip_pruning`,
export and `PruningSummary` use only this interface, so a new pruning
technique is a new subclass, not a new branch in each of them.
"""

from __future__ import annotations

import keras

from tfaccel.schedules import PruningSchedule

__all__ = ["PruningWrapper", "pruning_wrappers"]


class PruningWrapper(keras.layers.Wrapper):
    """Base class of tfaccel's pruning wrappers.

    Subclasses set `schedule` (a `tfaccel.schedules.PruningSchedule`) and
    `structure` in `__init__`, create their int64 step counter in `build`
    and implement `sparsity` and `strip`. A subclass whose strip changes
    shapes across layers (channel pruning removes the consumers' input
    channels too) also implements `strip_model`.
    """

    #: "unstructured", an "N:M" pattern such as "2:4", or "channels".
    structure: str = "unstructured"
    schedule: PruningSchedule

    @property
    def step(self) -> keras.Variable:
        """The int64 count of training calls so far (a layer variable)."""
        raise NotImplementedError

    def _schedule_config(self) -> dict:
        """The pruning entries of `get_config`: schedule, structure, calls."""
        config = {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "structure": self.structure,
        }
        if getattr(self, "calls_per_step", 1) != 1:
            config["calls_per_step"] = self.calls_per_step
        return config

    @staticmethod
    def _schedule_from_config(config: dict, custom_objects=None) -> dict:
        """A copy of `config` with its schedule deserialized."""
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(
            config["schedule"], custom_objects=custom_objects
        )
        return config

    def sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros of each weight the layer computes with.

        Keys are `"layer_name/weight_name"`, the same as for the stripped
        layer, so `tfaccel.sparsity` reads alike before and after `strip`.
        """
        raise NotImplementedError

    def strip(self) -> list[keras.layers.Layer]:
        """Plain, built layers with the masks baked in, applied in order.

        Together they compute what the wrapper computes at inference.
        """
        raise NotImplementedError

    @classmethod
    def strip_model(cls, model: keras.Model) -> keras.Model | None:
        """Strip every wrapper of this class in `model` at once, or None.

        None (the default) means each wrapper's own `strip` is enough.
        """
        return None

    def steps_done(self) -> int:
        """Training steps seen so far (the step counter as a python int)."""
        return int(keras.ops.convert_to_numpy(self.step))

    def unfinished(self) -> str | None:
        """Why the target is not reached yet, or None.

        Either the schedule is before its `end_step`, or (a schedule with no
        end) it has not reached its first pruning step: the k-th training
        step sees step k, so `begin_step=0` with `frequency=100` first
        prunes at step 100, as in tfmot.
        """
        schedule = self.schedule
        step = self.steps_done()
        first = first_pruning_step(schedule)
        before_first = (
            f"its first pruning step ({first}: begin_step={schedule.begin_step}, "
            f"frequency={schedule.frequency}) is not reached: masks are all ones"
        )
        # The k-th training call sees step k: the last one saw `step`.
        if schedule.end_step < 0 or step >= schedule.end_step:
            if step < first:
                return f"layer '{self.name}' at step {step}: {before_first}"
            return None
        reached = ", ".join(f"{k}={v:.4f}" for k, v in self.sparsity().items())
        line = (
            f"layer '{self.name}' at step {step}, end_step={schedule.end_step}, "
            f"target sparsity {schedule.final_sparsity:g}, reached: {reached}"
        )
        return f"{line} ({before_first})" if step < first else line


def first_pruning_step(schedule: PruningSchedule) -> int:
    """The first step >= 1 at which `schedule` recomputes masks."""
    begin, frequency = schedule.begin_step, schedule.frequency
    first = begin if begin >= 1 else frequency
    if schedule.end_step >= 1:
        first = min(first, schedule.end_step)
    return first


def pruning_wrappers(model: keras.Model) -> list[PruningWrapper]:
    """Every `PruningWrapper` inside `model`, nested models included."""
    from tfaccel.graph import all_layers

    return [layer for layer in all_layers(model) if isinstance(layer, PruningWrapper)]
