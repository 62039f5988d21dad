"""Knowledge distillation inside `model.fit`: student, teacher and losses.

`Distiller` is a `keras.Model` that owns a student, a frozen teacher and
`keras.distillation` losses (`SoftTargetDistillation`, `HintDistillation`),
and overrides only documented `keras.Model` methods: `call` (the student),
`compute_loss`, `compute_metrics`, `compile` (checks the hard-label loss),
`compile_from_config` and `fit` (the teacher cache). It keeps the attributes
of `keras.distillation.Distiller` (`student`, `teacher`,
`distillation_losses`, `distillation_loss_weights`, `student_loss_weight`,
the `student_loss`, `distillation_loss` and `total_loss` metrics) and fixes,
for Keras 3.15.1 (`tests/distillation/test_upstream.py` pins each):

- the classic soft-target loss (softmax, KL and the `T**2` factor; Keras'
  default `LogitsDistillation` has neither);
- one student forward pass per step also with hint losses (Keras runs the
  student a second time for features, which double-counts in-graph step
  counters such as a pruning step and updates BN statistics twice);
- the hard-label loss is Keras' own compiled loss, so it is averaged over
  replicas under `tf.distribute` (Keras' `Distiller` sums the gradients of a
  string loss over replicas), weighs samples and adds the student's
  regularization losses, as plain `fit` does (Keras' `Distiller` drops
  both); the distillation terms weigh samples and average alike;
- hint losses between layers of different widths, through a learned
  projection trained with the student;
- opt-in teacher-output caching (`cache_teacher=True`, see `cache.py`);
- a loaded distiller is compiled again (Keras' is not: it overrides
  `compile` without `compile_from_config`).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfaccel._warnings import TfaccelWarning
from tfaccel.distillation import cache, hints
from tfaccel.distillation.losses import (
    HintDistillation,
    SoftTargetDistillation,
    _check_temperature,
    batch_mean,
)

__all__ = ["Distiller", "distill"]


def _check_weight(value: Any, name: str, upper: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value >= 0
        or (upper is not None and value > upper)
    ):
        expected = f"a number in [0, {upper:g}]" if upper is not None else ">= 0"
        raise ValueError(f"`{name}` must be {expected}. Received: {name}={value!r}")
    return float(value)


def _logits(y_pred):
    """The student logits of `call`'s output (a dict in training with hints)."""
    return y_pred[hints.FINAL_OUTPUT] if isinstance(y_pred, dict) else y_pred


@keras.saving.register_keras_serializable(package="tfaccel")
class Distiller(keras.Model):
    """Train a student to match a frozen teacher, inside `model.fit`.

    The loss of each step is

        alpha * hard(y, s) + (1 - alpha) * (
            T**2 * KL(softmax(t / T) || softmax(s / T))
            + feature_weight * sum_i mse(P_i(f_i^s), f_i^t))
        + sum(student.losses)

    where `s`, `t` are student and teacher logits, `hard` is the loss given to
    `compile` (e.g. sparse categorical cross-entropy from logits), `f^s`,
    `f^t` are the outputs of the `features` layer pairs and `P_i` is a learned
    `Dense` projection (over the last axis; a 1x1 convolution for NHWC
    features) when the widths differ, the identity otherwise. The teacher is
    frozen and runs with `training=False`; `call` (and so `predict`) is the
    student alone. In training mode with hint features, `call` returns the
    student's features with its logits (`{"final_output": logits, layer:
    output}`) so that `compute_loss` reuses that one forward pass. Prefer the
    `distill` function, which documents the arguments.

    Example:

    >>> import keras, numpy as np
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> teacher.trainable = False
    >>> d = Distiller(teacher, student, temperature=2.0, alpha=0.5)
    >>> d.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> _ = d.fit(np.ones((8, 4)), np.zeros(8), verbose=0)
    >>> d.student is student
    True
    """

    def __init__(
        self,
        teacher: keras.Model,
        student: keras.Model,
        temperature: float = 4.0,
        alpha: float = 0.1,
        features: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        feature_weight: float = 1.0,
        cache_teacher: bool = False,
        name: str = "distiller",
        **kwargs: Any,
    ):
        temperature = _check_temperature(temperature)
        alpha = _check_weight(alpha, "alpha", upper=1.0)
        feature_weight = _check_weight(feature_weight, "feature_weight")
        student_out = hints.single_output(student, "student")
        teacher_out = hints.single_output(teacher, "teacher")
        if tuple(student_out.shape[1:]) != tuple(teacher_out.shape[1:]):
            raise ValueError(
                "`student` and `teacher` must output logits of the same shape. "
                f"Received: student output shape={tuple(student_out.shape)}, "
                f"teacher output shape={tuple(teacher_out.shape)}"
            )
        pairs = hints.feature_pairs(features)
        layers = [
            (
                hints.find_layer(student, s, "student"),
                hints.find_layer(teacher, t, "teacher"),
            )
            for s, t in pairs
        ]
        if teacher.trainable:
            warnings.warn(
                f"The teacher {teacher.name!r} is trainable; distillation "
                "freezes it (`teacher.trainable = False`) so that only the "
                "student learns. Set `teacher.trainable = False` before "
                "distilling to silence this warning.",
                TfaccelWarning,
                stacklevel=3,
            )
            teacher.trainable = False
        super().__init__(name=name, **kwargs)
        self.teacher = teacher
        self.student = student
        self.temperature = temperature
        self.alpha = self.student_loss_weight = alpha
        self.features = [list(p) for p in pairs]
        self.feature_weight = feature_weight
        self.cache_teacher = bool(cache_teacher)
        self.distillation_losses = [SoftTargetDistillation(temperature)] + [
            HintDistillation(teacher_layer_name=t.name, student_layer_name=s.name)
            for s, t in layers
        ]
        self.distillation_loss_weights = [1.0] + [feature_weight] * len(layers)
        self.projections = [
            hints.projection(i, s, t) for i, (s, t) in enumerate(layers)
        ]
        self._teacher_features = hints.extractor(teacher, [t for _, t in layers])
        self._student_features = (
            hints.extractor(student, [s for s, _ in layers]) if layers else None
        )
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")

    # -- training ----------------------------------------------------------

    def call(self, inputs, training=None):
        inputs, _ = cache.unbundle(inputs)
        if training and self._student_features is not None:
            return self._student_features(inputs, training=training)
        return self.student(inputs, training=training)

    def compile(
        self,
        optimizer: Any = "adam",
        loss: Any = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        """Compile; `loss` is the hard-label loss (weight `alpha`) on logits."""
        if loss is None and self.alpha > 0:
            raise ValueError(
                "`loss` (the hard-label loss, weighted by alpha) is required "
                f"when alpha > 0. Received: loss=None with alpha={self.alpha}"
            )
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.trainable_variables:
            # Create optimizer slots now so `.keras` loading restores them.
            self.optimizer.build(self.trainable_variables)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        x, cached = cache.unbundle(x)
        if y_pred is None:
            y_pred = self(x, training=training)
        logits = ops.convert_to_tensor(_logits(y_pred))
        # Regularizers and `add_loss` terms, added unscaled as Keras does.
        extra = [ops.sum(ops.cast(loss, "float32")) for loss in self.losses]
        extra = ops.sum(ops.stack(extra)) if extra else ops.zeros(())
        # Keras scales losses by 1 / replicas: the gradients of the replicas
        # are summed. `hard` and `soft` below are per replica, unscaled.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        hard = ops.zeros(())
        if self.alpha > 0.0 and y is not None:
            # The compiled loss, exactly as in plain `fit`, plus `extra`.
            compiled = super().compute_loss(x, y, logits, sample_weight, training)
            hard = (ops.cast(compiled, "float32") - extra) * replicas
        soft = ops.zeros(())
        if self.alpha < 1.0:
            soft = self._distillation_loss(x, cached, y_pred, sample_weight, training)
        total = self.alpha * hard + (1.0 - self.alpha) * soft
        self.student_loss_tracker.update_state(hard)
        self.distillation_loss_tracker.update_state(soft)
        self.total_loss_tracker.update_state(total + extra)
        return total / replicas + extra

    def _distillation_loss(self, x, cached, y_pred, sample_weight, training):
        teacher = cached if cached is not None else self._teacher_features(x)
        student = y_pred if isinstance(y_pred, dict) else {hints.FINAL_OUTPUT: y_pred}
        if self._student_features is not None and not isinstance(y_pred, dict):
            # Logits of an inference-mode `call` (evaluation) or a custom loop.
            student = {**self._student_features(x, training=training), **student}
        identity = [lambda features: features]
        soft = ops.zeros(())
        for loss, weight, projection in zip(
            self.distillation_losses,
            self.distillation_loss_weights,
            identity + self.projections,
        ):
            t_key = getattr(loss, "teacher_layer_name", None) or hints.FINAL_OUTPUT
            s_key = getattr(loss, "student_layer_name", None) or hints.FINAL_OUTPUT
            per_sample = loss.per_sample(teacher[t_key], projection(student[s_key]))
            soft = soft + weight * batch_mean(per_sample, sample_weight)
        return soft

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, _logits(y_pred), sample_weight)

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: Any = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        **kwargs: Any,
    ):
        """`keras.Model.fit`; with `cache_teacher=True` the teacher runs once."""
        if self.cache_teacher:
            x, validation_data = cache.bundle_fit_inputs(
                self._teacher_features, x, validation_data, batch_size
            )
        return super().fit(
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=verbose,
            callbacks=callbacks,
            validation_split=validation_split,
            validation_data=validation_data,
            **kwargs,
        )

    # -- serialization -----------------------------------------------------

    def get_config(self) -> dict:
        teacher = keras.saving.serialize_keras_object(self.teacher)
        # The frozen teacher never trains here: dropping its compile config
        # avoids restoring (and warning about) its old optimizer on load.
        teacher.pop("compile_config", None)
        return {
            "name": self.name,
            "teacher": teacher,
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "features": [list(p) for p in self.features],
            "feature_weight": self.feature_weight,
            "cache_teacher": self.cache_teacher,
        }

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def distill(
    student: keras.Model,
    teacher: keras.Model,
    temperature: float = 4.0,
    alpha: float = 0.1,
    features: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    feature_weight: float = 1.0,
    cache_teacher: bool = False,
    name: str = "distiller",
) -> Distiller:
    """Wrap `student` and `teacher` into a model that distills in `fit`.

    The returned `Distiller` is compiled and fitted like any Keras model; its
    loss per step is

        alpha * hard_loss(y, student_logits)
        + (1 - alpha) * [T**2 * KL(softmax(teacher_logits / T)
                                   || softmax(student_logits / T))
                         + feature_weight * sum of hint MSEs]
        + the student's regularization losses (`student.losses`)

    `hard_loss` is the `loss` given to `compile`. Both models must output
    *logits* of the same shape. The teacher is frozen and always runs in
    inference mode (BatchNorm moving statistics, no dropout); only the student
    (and the hint projections) train, in one student forward pass per step,
    so in-graph counters of a pruned or QAT student count student updates.
    A student that is `quantize(prune(model))` prunes, trains int8 and
    distills in that one `fit`. After `fit`, use `distiller.student` to
    save, strip or export.

    When it pays (digits, 5 seeds, BENCHMARKS.md): with few labels and
    unlabelled inputs, a teacher that labels the rest adds +4.4 points to
    the student; soft targets on top of the teacher's hard labels added
    nothing measurable, nor did distillation with every label at hand.

    Example:

    >>> import keras, numpy as np
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> teacher.trainable = False
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> distiller = distill(student, teacher, temperature=4.0, alpha=0.1)
    >>> distiller.compile(
    ...     "adam",
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     metrics=["accuracy"])
    >>> history = distiller.fit(np.ones((8, 4)), np.zeros(8), verbose=0)
    >>> trained = distiller.student

    Args:
        student: the model to train, a built Functional or Sequential model
            returning logits (may be pruned and/or quantized by tfaccel).
        teacher: a trained model returning logits of the student's shape.
            It is frozen (`trainable = False`); a trainable teacher is frozen
            with a `TfaccelWarning`.
        temperature: softmax temperature `T > 0` of the soft targets. The
            soft-target term is multiplied by `T**2`. Defaults to `4.0`.
        alpha: weight in `[0, 1]` of the hard-label loss; the distillation
            terms get `1 - alpha`. `alpha=0` is pure distillation (labels are
            optional), `alpha=1` is plain supervised training. Defaults to
            `0.1`.
        features: hint losses: a dict `{student_layer: teacher_layer}` or a
            list of `(student_layer, teacher_layer)` name pairs. Each adds the
            MSE between the teacher layer's output and the student layer's
            output, projected by a learned bias-free `Dense` over the last
            axis (a 1x1 convolution on NHWC maps) when the widths differ.
            Other axes must match. A wrapped layer may be named by its inner
            layer's name.
        feature_weight: weight of each hint loss. Defaults to `1.0`.
        cache_teacher: run the teacher once per `fit` over in-memory inputs
            and reuse its outputs every epoch. Only for fixed data (NumPy
            arrays or tensors: no tf.data, no augmentation before the
            model); see `tfaccel.distillation.cache`. Defaults to `False`.
        name: name of the distiller model.

    Returns:
        A `Distiller` (a `keras.Model`): compile it with the
        hard-label `loss`, then `fit`; `.student` is the trained student.

    Raises:
        ValueError: if `temperature <= 0`, `alpha` is outside `[0, 1]`, the
            output shapes differ, a `features` layer is missing or its shape
            cannot be projected.
    """
    return Distiller(
        teacher=teacher,
        student=student,
        temperature=temperature,
        alpha=alpha,
        features=features,
        feature_weight=feature_weight,
        cache_teacher=cache_teacher,
        name=name,
    )
