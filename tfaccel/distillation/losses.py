"""Distillation losses: soft targets (Hinton) and hints, per sample.

`keras.distillation.LogitsDistillation` applies the softmax and the `T**2`
factor only when its `loss` is a `keras.losses.KLDivergence` *instance*. Its
default, the string `"kl_divergence"`, resolves to the plain function, so the
default computes a clipped KL directly on temperature-scaled *logits*: no
softmax and no `T**2` (Keras 3.15.1; `test_keras_default_logits_distillation`
pins this). With a `KLDivergence` instance it matches the classic loss but
clips probabilities at `1e-7` (the gradient vanishes for tiny student
probabilities). `SoftTargetDistillation` keeps the Keras base class and API
and computes the same quantity with `log_softmax`, exactly and per sample.

Both losses here are `keras.distillation.DistillationLoss` objects (their
`compute_loss` is the plain batch mean) with a `per_sample` method, so that
the `Distiller` can weight samples (`batch_mean`) as Keras weights
compiled losses.
"""

from __future__ import annotations

import numbers

import keras
from keras import ops

__all__ = ["HintDistillation", "SoftTargetDistillation", "batch_mean"]


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(
            "`temperature` must be a positive number. "
            f"Received: temperature={temperature!r}"
        )
    if not temperature > 0:
        raise ValueError(
            f"`temperature` must be > 0. Received: temperature={temperature}"
        )
    return float(temperature)


@keras.saving.register_keras_serializable(package="tfaccel")
class SoftTargetDistillation(keras.distillation.LogitsDistillation):
    """Soft-target loss: `T**2 * KL(softmax(t / T) || softmax(s / T))`.

    The loss of Hinton et al. (2015) between teacher logits `t` and student
    logits `s`, averaged over the batch. The `T**2` factor keeps the gradient
    scale independent of `T`, so the mix with the hard-label loss does not
    have to be retuned when `T` changes.

    Example:

    >>> import numpy as np
    >>> loss = SoftTargetDistillation(temperature=2.0)
    >>> t = np.array([[2.0, 0.0, -1.0]], "float32")
    >>> float(loss.compute_loss(t, t))
    0.0

    Args:
        temperature: softmax temperature `T > 0`. Defaults to `4.0`.

    Raises:
        ValueError: if `temperature <= 0`.
    """

    def __init__(self, temperature: float = 4.0):
        temperature = _check_temperature(temperature)
        super().__init__(temperature=temperature, loss=keras.losses.KLDivergence())

    def per_sample(self, teacher_logits, student_logits):
        """The loss of each sample, shape `(batch,)` (leading axes kept)."""
        t = ops.divide(ops.cast(teacher_logits, "float32"), self.temperature)
        s = ops.divide(ops.cast(student_logits, "float32"), self.temperature)
        log_p_t = ops.log_softmax(t, axis=-1)
        log_p_s = ops.log_softmax(s, axis=-1)
        kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
        return kl * (self.temperature**2)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return ops.mean(self.per_sample(teacher_outputs, student_outputs))

    def get_config(self) -> dict:
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config: dict) -> SoftTargetDistillation:
        return cls(**config)


class HintDistillation(keras.distillation.FeatureDistillation):
    """A hint loss between two named layers, with a per-sample value.

    Keras' `FeatureDistillation` (default `loss="mse"`); `per_sample`
    averages its loss over every axis but the batch.
    """

    def per_sample(self, teacher_features, student_features):
        """The loss of each sample, shape `(batch,)`."""
        loss = self.loss(
            ops.cast(teacher_features, "float32"), ops.cast(student_features, "float32")
        )
        return ops.mean(ops.reshape(loss, (ops.shape(loss)[0], -1)), axis=-1)


def batch_mean(per_sample, sample_weight=None):
    """Mean over the batch, as Keras' `"sum_over_batch_size"` reduces.

    Sample weights multiply each sample's loss; the divisor stays the batch
    size.
    """
    per_sample = ops.cast(per_sample, "float32")
    if sample_weight is not None:
        per_sample = per_sample * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.mean(per_sample)
