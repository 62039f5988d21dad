"""Knowledge distillation inside `model.fit`, on top of `keras.distillation`.

`Distiller` subclasses `keras.distillation.Distiller` and keeps its API
(`.student`, `.teacher`, `compile`/`fit`, the `student_loss`,
`distillation_loss` and `total_loss` metrics). It fixes or adds, for
Keras 3.15.1:

- the classic soft-target loss (`SoftTargetDistillation`: softmax, KL and the
  `T**2` factor; Keras' default `LogitsDistillation` has neither);
- one student forward pass per step also with feature (hint) losses (Keras
  runs the student a second time for features, which double-counts in-graph
  step counters such as a pruning step and updates BN statistics twice);
- hint losses between layers of different widths through a learned
  projection trained with the student;
- losses scaled for `tf.distribute` like Keras' own compiled losses (Keras'
  `Distiller` leaves a string hard-label loss unscaled, so its gradients are
  summed, not averaged, over replicas);
- sample weights on the hard-label and soft-target terms;
- the student's regularization losses (`student.losses`), which Keras'
  `Distiller` drops;
- opt-in teacher-output caching (`cache_teacher=True`, see `cache.py`);
- a serialized compile config, so a loaded distiller is compiled again.
"""

from __future__ import annotations

import numbers
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfaccel._warnings import TfaccelWarning
from tfaccel.distillation import cache
from tfaccel.distillation.losses import SoftTargetDistillation, _check_temperature

__all__ = ["Distiller", "distill"]

# Student features computed by `call` and consumed by `compute_loss` of the
# same train step. `MirroredStrategy` traces each replica's step in its own
# thread, hence thread-local storage.
_LOCAL = threading.local()


def _stash_put(owner: object, features: dict) -> None:
    if not hasattr(_LOCAL, "features"):
        _LOCAL.features = {}
    _LOCAL.features[id(owner)] = features


def _stash_take(owner: object, y_pred: Any) -> dict | None:
    features = getattr(_LOCAL, "features", {}).pop(id(owner), None)
    # Only the features of *this* forward pass: `predict` also calls `call`.
    if features is not None and features["final_output"] is y_pred:
        return features
    return None


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(
            f"`alpha` must be a number in [0, 1]. Received: alpha={alpha!r}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha}")
    return float(alpha)


def _single_output(model: keras.Model, argument: str):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{argument}` must be a keras.Model. Received: "
            f"{argument} of type {type(model).__name__}"
        )
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise ValueError(
            f"`{argument}` must be a built Functional or Sequential model "
            f"(with an `Input`). Received: {argument}={model.name!r} without "
            "symbolic outputs"
        )
    if len(outputs) != 1:
        raise ValueError(
            f"`{argument}` must have a single logits output. Received: "
            f"{len(outputs)} outputs"
        )
    return outputs[0]


def _find_layer(model: keras.Model, name: str, argument: str) -> keras.Layer:
    try:
        return model.get_layer(name)
    except ValueError:
        pass
    # A pruned or quantized model wraps layers: accept the wrapped name.
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.Layer) and inner.name == name:
            return layer
    raise ValueError(
        f"`features` names {argument} layer {name!r}, which is not in the "
        f"{argument} model {model.name!r}. Expected one of: "
        f"{[layer.name for layer in model.layers]}"
    )


def _feature_pairs(features: Any) -> list[tuple[str, str]]:
    if features is None:
        return []
    if isinstance(features, Mapping):
        items = list(features.items())
    elif isinstance(features, Sequence) and not isinstance(features, str):
        items = list(features)
    else:
        items = None
    if items is None or not all(
        isinstance(p, (tuple, list))
        and len(p) == 2
        and all(isinstance(n, str) for n in p)
        for p in items
    ):
        raise ValueError(
            "`features` must be a dict {student_layer: teacher_layer} or a "
            "list of (student_layer, teacher_layer) name pairs. Received: "
            f"features={features!r}"
        )
    return [(str(s), str(t)) for s, t in items]


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def _reduce(per_sample, sample_weight=None):
    """Mean over the global batch, as Keras' `sum_over_batch_size` does."""
    per_sample = ops.cast(per_sample, "float32")
    if len(per_sample.shape) > 1:
        per_sample = ops.mean(per_sample, axis=tuple(range(1, len(per_sample.shape))))
    if sample_weight is not None:
        weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        per_sample = per_sample * weight
    return ops.mean(per_sample)


@keras.saving.register_keras_serializable(package="tfaccel")
class Distiller(keras.distillation.Distiller):
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
    student alone. Prefer the `distill` function, which documents the
    arguments.

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
        alpha = _check_alpha(alpha)
        if isinstance(feature_weight, bool) or not (
            isinstance(feature_weight, numbers.Real) and feature_weight >= 0
        ):
            raise ValueError(
                "`feature_weight` must be a number >= 0. Received: "
                f"feature_weight={feature_weight!r}"
            )
        student_out = _single_output(student, "student")
        teacher_out = _single_output(teacher, "teacher")
        if tuple(student_out.shape[1:]) != tuple(teacher_out.shape[1:]):
            raise ValueError(
                "`student` and `teacher` must output logits of the same shape. "
                f"Received: student output shape={tuple(student_out.shape)}, "
                f"teacher output shape={tuple(teacher_out.shape)}"
            )
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

        pairs = _feature_pairs(features)
        losses: list[keras.distillation.DistillationLoss] = [
            SoftTargetDistillation(temperature)
        ]
        resolved = []
        for student_name, teacher_name in pairs:
            s_layer = _find_layer(student, student_name, "student")
            t_layer = _find_layer(teacher, teacher_name, "teacher")
            resolved.append((s_layer, t_layer))
            losses.append(
                keras.distillation.FeatureDistillation(
                    loss="mse",
                    teacher_layer_name=t_layer.name,
                    student_layer_name=s_layer.name,
                )
            )
        super().__init__(
            teacher=teacher,
            student=student,
            distillation_losses=losses,
            distillation_loss_weights=[1.0] + [float(feature_weight)] * len(pairs),
            student_loss_weight=alpha,
            name=name,
            **kwargs,
        )
        self.temperature = temperature
        self.alpha = alpha
        self.features = [list(p) for p in pairs]
        self.feature_weight = float(feature_weight)
        self.cache_teacher = bool(cache_teacher)
        self.projections = [
            self._projection(i, s_layer, t_layer)
            for i, (s_layer, t_layer) in enumerate(resolved)
        ]

    @staticmethod
    def _projection(index: int, s_layer, t_layer) -> keras.Layer:
        s_shape, t_shape = tuple(s_layer.output.shape), tuple(t_layer.output.shape)
        if len(s_shape) != len(t_shape) or s_shape[1:-1] != t_shape[1:-1]:
            raise ValueError(
                "`features` pairs must agree on every axis but the last "
                "(a learned projection maps the student width to the "
                f"teacher's). Received: student layer {s_layer.name!r} "
                f"shape={s_shape}, teacher layer {t_layer.name!r} "
                f"shape={t_shape}"
            )
        if s_shape[-1] == t_shape[-1]:
            return keras.layers.Identity(name=f"hint_projection_{index}")
        projection = keras.layers.Dense(
            t_shape[-1], use_bias=False, name=f"hint_projection_{index}"
        )
        projection.build(s_shape)
        return projection

    # -- training ----------------------------------------------------------

    def call(self, inputs, training=None):
        inputs, _ = cache.unbundle(inputs)
        if self._student_feature_extractor is None:
            return self.student(inputs, training=training)
        # One student pass yields logits and hint features together.
        features = self._student_feature_extractor(inputs, training=training)
        _stash_put(self, features)
        return features["final_output"]

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
        self._student_loss = keras.losses.get(loss) if loss is not None else None
        self._student_loss_for_serialization = loss
        keras.Model.compile(
            self, optimizer=optimizer, loss=None, metrics=metrics, **kwargs
        )

    def get_compile_config(self) -> dict | None:
        config = super().get_compile_config()
        if config is not None:
            config["loss"] = keras.saving.serialize_keras_object(
                self._student_loss_for_serialization
            )
        return config

    def compile_from_config(self, config: dict) -> None:
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.trainable_variables:
            # Create optimizer slots now so `.keras` loading restores them.
            self.optimizer.build(self.trainable_variables)

    def _hard_per_sample(self, y, y_pred):
        loss = self._student_loss
        y = ops.convert_to_tensor(y)
        if isinstance(loss, keras.losses.Loss):
            # `call` is the unreduced loss; reduction happens in `_reduce`.
            return loss.call(y, y_pred)
        return loss(y, y_pred)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        x, cached = cache.unbundle(x)
        if y_pred is None:
            y_pred = self(x, training=training)
        student_features = _stash_take(self, y_pred)
        y_pred = ops.cast(y_pred, "float32")

        hard = ops.convert_to_tensor(0.0)
        if self.alpha > 0.0 and y is not None:
            hard = _reduce(self._hard_per_sample(y, y_pred), sample_weight)

        soft = ops.convert_to_tensor(0.0)
        if self.alpha < 1.0:
            if cached is not None:
                teacher_features = cached
            else:
                teacher_features = self._extract_all_teacher_features(x)
            kd_loss = self.distillation_losses[0]
            soft = _reduce(
                kd_loss.per_sample(teacher_features["final_output"], y_pred),
                sample_weight,
            )
            if self.projections:
                if student_features is None:  # `y_pred` came from elsewhere
                    student_features = self._student_feature_extractor(
                        x, training=training
                    )
                for loss, weight, projection in zip(
                    self.distillation_losses[1:],
                    self.distillation_loss_weights[1:],
                    self.projections,
                ):
                    hint = loss.compute_loss(
                        ops.cast(teacher_features[loss.teacher_layer_name], "float32"),
                        ops.cast(
                            projection(student_features[loss.student_layer_name]),
                            "float32",
                        ),
                    )
                    soft = soft + weight * hint

        total = self.alpha * hard + (1.0 - self.alpha) * soft
        # Regularizers and `add_loss` terms of the student, as Keras'
        # `Model.compute_loss` adds them (Keras' `Distiller` drops them).
        extra = [ops.sum(ops.cast(loss, "float32")) for loss in self.student.losses]
        if extra:
            total = total + ops.sum(ops.stack(extra))
        self.student_loss_tracker.update_state(hard)
        self.distillation_loss_tracker.update_state(soft)
        self.total_loss_tracker.update_state(total)
        # Gradients are summed over replicas: average like Keras' own losses.
        replicas = _num_replicas()
        if replicas > 1:
            total = total / replicas
        return total

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
            x = self._with_teacher_outputs(x, batch_size, "x")
            if validation_data is not None:
                if not isinstance(validation_data, (tuple, list)):
                    cache.check_in_memory(validation_data, "validation_data")
                vx = self._with_teacher_outputs(
                    validation_data[0], batch_size, "validation_data"
                )
                validation_data = (vx, *validation_data[1:])
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

    def _with_teacher_outputs(self, x, batch_size, argument):
        cache.check_in_memory(x, argument)
        extractor = self._teacher_feature_extractor or self.teacher
        return cache.bundle(x, cache.teacher_outputs(extractor, x, batch_size))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(
            cache.unbundle(x)[0], y, y_pred, sample_weight=sample_weight
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
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
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
    After `fit`, use `distiller.student` to save, strip or export.

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
        A `Distiller` (a `keras.distillation.Distiller`): compile it with the
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
