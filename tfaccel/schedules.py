"""Pruning schedules: pure `step -> (should_prune, sparsity)` functions.

A schedule says, for a training step, whether masks are recomputed at that
step and which sparsity they are recomputed to. Schedules hold no state: the
step comes from the pruning wrapper's own counter, so they are exact with
`steps_per_execution > 1`, under `jit_compile=True` and across restarts.

`ConstantSparsity` and `PolynomialDecay` give the same sparsity as the
schedules of the same name in tensorflow-model-optimization at every step,
and prune at the same steps, plus one: they also prune at `end_step`, so the
final target is always reached at `end_step` even when `frequency` does not
divide `end_step - begin_step` (tfmot issues #973 and #975).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

__all__ = ["PruningSchedule", "ConstantSparsity", "PolynomialDecay", "ScaledSparsity"]


def _check_sparsity(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"`{name}` must be a float in [0, 1). Received: {name}={value!r}"
        )
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def default_schedule() -> ConstantSparsity:
    """50% sparsity from the first training step, masks recomputed every 100.

    `begin_step=1`: the k-th training step sees step k (as in tfmot), so a
    schedule beginning at 0 would first prune at step `frequency`.
    """
    return ConstantSparsity(0.5, begin_step=1)


def check_schedule(schedule) -> PruningSchedule:
    """`schedule` if it is a `PruningSchedule`, else a TypeError naming it."""
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(
            "`schedule` must be a tfaccel.schedules.PruningSchedule. "
            f"Received: schedule={schedule!r}"
        )
    return schedule


# Steps are int64 tensors: a larger step fails at the first training step
# with a TensorFlow conversion message.
_MAX_STEP = 2**63 - 1


def _check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(
            f"`{name}` must be >= {minimum}. Received: {name}={value!r}"
        )
    if value > _MAX_STEP:
        raise ValueError(
            f"`{name}` must fit in int64 (<= 2**63 - 1). Received: {name}={value!r}"
        )
    return int(value)


class PruningSchedule:
    """Base class of pruning schedules.

    A schedule maps a training step to `(should_prune, sparsity)`. Subclasses
    implement `sparsity_at(step)`; the base class decides *when* to prune from
    `begin_step`, `end_step` and `frequency`: at `begin_step` and every
    `frequency` steps after it, and always at `end_step` (when
    `end_step >= 0`). `end_step=-1` means "never stop".

    Example:

    >>> schedule = ConstantSparsity(0.5, begin_step=0, end_step=250)
    >>> should_prune, sparsity = schedule(250)
    >>> bool(should_prune), float(sparsity)
    (True, 0.5)

    Args:
        begin_step: first step at which masks are computed (>= 0).
        end_step: last step at which masks are computed, or -1 for no end.
        frequency: masks are recomputed every `frequency` steps (>= 1).
    """

    def __init__(self, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        self.begin_step = _check_int("begin_step", begin_step, minimum=0)
        self.end_step = _check_int("end_step", end_step, minimum=-1)
        self.frequency = _check_int("frequency", frequency, minimum=1)
        if self.end_step >= 0 and self.end_step < self.begin_step:
            raise ValueError(
                "`end_step` must be at least `begin_step` (equal: prune once, "
                f"or -1 for no end). Received: end_step={end_step}, "
                f"begin_step={begin_step}"
            )

    @property
    def final_sparsity(self) -> float:
        """The sparsity the schedule reaches at `end_step` (python float)."""
        raise NotImplementedError

    def sparsity_at(self, step: tf.Tensor) -> tf.Tensor:
        """The target sparsity at `step` (an int64 tensor), as float32."""
        raise NotImplementedError

    def should_prune(self, step) -> tf.Tensor:
        """Whether masks are recomputed at `step` (a bool tensor)."""
        # Evaluated by every pruned layer at every step: the bounds are
        # Python ints, so only the comparisons that can matter are traced.
        step = tf.cast(step, tf.int64)
        in_range = step >= self.begin_step
        offset = step - self.begin_step if self.begin_step else step
        turn = (
            tf.equal(tf.math.floormod(offset, self.frequency), 0)
            if self.frequency > 1
            else tf.ones_like(in_range)
        )
        if self.end_step >= 0:
            in_range = tf.logical_and(in_range, step <= self.end_step)
            turn = tf.logical_or(turn, tf.equal(step, self.end_step))
        return tf.logical_and(in_range, turn)

    def __call__(self, step) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns `(should_prune, sparsity)` at `step`.

        Args:
            step: the training step (python int or integer tensor).

        Returns:
            A bool scalar tensor and a float32 scalar tensor.
        """
        step = tf.cast(step, tf.int64)
        return self.should_prune(step), self.sparsity_at(step)

    def get_config(self) -> dict:
        return {
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.get_config().items()))))


@keras.saving.register_keras_serializable(package="tfaccel")
class ConstantSparsity(PruningSchedule):
    """Prune to a constant sparsity every `frequency` steps.

    Same as tfmot's `ConstantSparsity`, plus a prune at `end_step`.

    Example:

    >>> schedule = ConstantSparsity(0.8, begin_step=10, end_step=95, frequency=20)
    >>> [int(s) for s in range(100) if bool(schedule(s)[0])]
    [10, 30, 50, 70, 90, 95]

    Args:
        target_sparsity: fraction of weights set to zero, in [0, 1).
        begin_step: first step at which masks are computed (>= 0).
        end_step: last step at which masks are computed, or -1 for no end;
            `end_step == begin_step` prunes once, at that step (one-shot).
        frequency: masks are recomputed every `frequency` steps (>= 1).
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int = 0,
        end_step: int = -1,
        frequency: int = 100,
    ):
        super().__init__(begin_step, end_step, frequency)
        self.target_sparsity = _check_sparsity("target_sparsity", target_sparsity)

    @property
    def final_sparsity(self) -> float:
        return self.target_sparsity

    def sparsity_at(self, step) -> tf.Tensor:
        del step
        return tf.constant(self.target_sparsity, tf.float32)

    def get_config(self) -> dict:
        return {"target_sparsity": self.target_sparsity, **super().get_config()}


@keras.saving.register_keras_serializable(package="tfaccel")
class PolynomialDecay(PruningSchedule):
    """Raise sparsity from `initial_sparsity` to `final_sparsity` polynomially.

    `sparsity = final + (initial - final) * (1 - p) ** power` with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`, as in
    tfmot's `PolynomialDecay`. Masks are recomputed every `frequency` steps
    from `begin_step` and always at `end_step`, where the sparsity is exactly
    `final_sparsity`.

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=130)
    >>> bool(schedule(130)[0]), round(float(schedule(130)[1]), 6)
    (True, 0.8)

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity at and after `end_step`, in [0, 1).
        begin_step: first step at which masks are computed (>= 0).
        end_step: step at which `final_sparsity` is reached (> begin_step).
        power: exponent of the polynomial (> 0).
        frequency: masks are recomputed every `frequency` steps (>= 1).
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        _check_int("end_step", end_step, minimum=0)
        super().__init__(begin_step, end_step, frequency)
        if self.end_step == self.begin_step:
            raise ValueError(
                "PolynomialDecay needs `end_step` greater than `begin_step` (a "
                "one-shot schedule is ConstantSparsity(target, begin_step=s, "
                f"end_step=s)). Received: end_step={end_step}, begin_step={begin_step}"
            )
        self.initial_sparsity = _check_sparsity("initial_sparsity", initial_sparsity)
        self._final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        if (
            isinstance(power, bool)
            or not isinstance(power, (int, float))
            or not math.isfinite(power)
            or power <= 0
        ):
            raise ValueError(
                f"`power` must be a finite number > 0. Received: power={power!r}"
            )
        self.power = power

    @property
    def final_sparsity(self) -> float:
        return self._final_sparsity

    def sparsity_at(self, step) -> tf.Tensor:
        # Same float32 arithmetic as tfmot, so both agree to ~1e-7.
        step = tf.cast(step, tf.int64)
        p = tf.cast(step - self.begin_step, tf.float32) / tf.cast(
            self.end_step - self.begin_step, tf.float32
        )
        p = tf.clip_by_value(p, 0.0, 1.0)
        initial = tf.constant(self.initial_sparsity, tf.float32)
        final = tf.constant(self._final_sparsity, tf.float32)
        return final + (initial - final) * tf.pow(1.0 - p, float(self.power))

    def get_config(self) -> dict:
        config = super().get_config()
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self._final_sparsity,
            "begin_step": config["begin_step"],
            "end_step": config["end_step"],
            "power": self.power,
            "frequency": config["frequency"],
        }


@keras.saving.register_keras_serializable(package="tfaccel")
class ScaledSparsity(PruningSchedule):
    """Another schedule's sparsity times a fixed factor, at the same steps.

    `prune(..., allocation="erk")` gives each layer the model's schedule
    scaled to that layer's share of the target: at every step the layers
    together hold the schedule's sparsity, and each reaches its own final
    sparsity at `end_step`. The result is clipped to [0, 1).

    Example:

    >>> schedule = ScaledSparsity(ConstantSparsity(0.5, frequency=10), factor=1.5)
    >>> schedule.final_sparsity, bool(schedule(20)[0]), float(schedule(20)[1])
    (0.75, True, 0.75)

    Args:
        schedule: the `PruningSchedule` to follow (its steps and shape).
        factor: multiplier of its sparsity (>= 0); `factor *
            schedule.final_sparsity` must be < 1.
    """

    def __init__(self, schedule: PruningSchedule, factor: float):
        check_schedule(schedule)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise TypeError(f"`factor` must be a float. Received: factor={factor!r}")
        if not 0.0 <= factor or not factor * schedule.final_sparsity < 1.0:
            raise ValueError(
                "`factor` must be >= 0 and `factor * schedule.final_sparsity` "
                f"< 1. Received: factor={factor!r} with final_sparsity="
                f"{schedule.final_sparsity!r}"
            )
        super().__init__(schedule.begin_step, schedule.end_step, schedule.frequency)
        self.schedule = schedule
        self.factor = float(factor)

    @property
    def final_sparsity(self) -> float:
        return self.factor * self.schedule.final_sparsity

    def should_prune(self, step) -> tf.Tensor:
        return self.schedule.should_prune(step)

    def sparsity_at(self, step) -> tf.Tensor:
        value = self.factor * self.schedule.sparsity_at(step)
        # The largest float32 below 1: a mask never zeroes a whole weight.
        return tf.clip_by_value(value, 0.0, 1.0 - 2.0**-24)

    def get_config(self) -> dict:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "factor": self.factor,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)

    def __repr__(self) -> str:
        return f"ScaledSparsity({self.schedule!r}, factor={self.factor:.6g})"

    def __hash__(self) -> int:
        return hash((type(self), self.schedule, self.factor))
