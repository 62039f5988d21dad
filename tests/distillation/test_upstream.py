"""Pins the keras.distillation behaviours tfaccel's Distiller works around.

Each test asserts the *upstream* behaviour (Keras 3.15.1). When one fails,
Keras changed: re-check the matching workaround in tfaccel/distillation.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from tfaccel.distillation import distill

SCCE = keras.losses.SparseCategoricalCrossentropy


class _Count(keras.layers.Layer):
    def build(self, input_shape):
        self.calls = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

    def call(self, inputs, training=None):
        if training:
            self.calls.assign_add(1)
        return inputs


def _models():
    teacher = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="t_hidden"),
            keras.layers.Dense(3),
        ]
    )
    teacher.trainable = False
    counter = _Count()
    student = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="s_hidden"),
            counter,
            keras.layers.Dense(3),
        ]
    )
    return teacher, student, counter


def _data():
    rng = np.random.default_rng(0)
    return rng.random((64, 6), dtype="float32"), rng.integers(0, 3, 64)


def test_keras_feature_distillation_runs_student_twice():
    x, y = _data()
    teacher, student, counter = _models()
    d = keras.distillation.Distiller(
        teacher,
        student,
        [
            keras.distillation.LogitsDistillation(),
            keras.distillation.FeatureDistillation(
                teacher_layer_name="t_hidden", student_layer_name="s_hidden"
            ),
        ],
    )
    d.compile("sgd", loss=SCCE(from_logits=True))
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(counter.calls.numpy()) == 2 * 4  # upstream: two passes per step

    teacher, student, counter = _models()
    ours = distill(student, teacher, features={"s_hidden": "t_hidden"})
    ours.compile("sgd", loss=SCCE(from_logits=True))
    ours.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(counter.calls.numpy()) == 4


def _cross_entropy(y, logits):
    # A plain function, like the one a string loss resolves to.
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


def _one_step_update(make, strategy):
    x, y = _data()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        d = make()
        before = [w.numpy().copy() for w in d.student.trainable_weights]
        d.compile(keras.optimizers.SGD(1.0), loss=_cross_entropy)
    d.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    return [w.numpy() - b for w, b in zip(d.student.trainable_weights, before)]


def test_keras_distiller_string_loss_not_averaged_over_replicas(two_cpus):
    # Pure hard-label loss (student_loss_weight=1) given as a function (a
    # string resolves to one): Keras' Distiller sums its gradients over the 2
    # replicas, so one step moves the weights twice as far.
    one = tf.distribute.get_strategy()

    def keras_distiller():
        teacher, student, _ = _models()
        return keras.distillation.Distiller(
            teacher,
            student,
            keras.distillation.LogitsDistillation(),
            student_loss_weight=1.0,
        )

    single = _one_step_update(keras_distiller, one)
    mirrored = _one_step_update(keras_distiller, two_cpus)
    np.testing.assert_allclose(mirrored[0], 2 * single[0], rtol=1e-4, atol=1e-7)

    def ours():
        teacher, student, _ = _models()
        return distill(student, teacher, alpha=1.0)

    single = _one_step_update(ours, one)
    mirrored = _one_step_update(ours, two_cpus)
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def _regularized_student():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.5)),
        ]
    )


def test_keras_distiller_drops_sample_weights_and_regularizers():
    # With only the hard-label loss (student_loss_weight=1), plain Keras
    # weighs samples and adds `model.losses`; Keras' Distiller does neither.
    x, y = _data()
    weights = (np.arange(len(x)) % 2).astype("float32")
    teacher, _, _ = _models()
    student = _regularized_student()
    student.compile("sgd", loss=SCCE(from_logits=True))
    logits = student(x)
    plain = float(student.compute_loss(x, y, logits, sample_weight=weights))
    unweighted = float(SCCE(from_logits=True)(y, logits))

    theirs = keras.distillation.Distiller(
        teacher,
        student,
        keras.distillation.LogitsDistillation(),
        student_loss_weight=1.0,
    )
    theirs.compile("sgd", loss=SCCE(from_logits=True))
    got = float(theirs.compute_loss(x, y, logits, sample_weight=weights))
    np.testing.assert_allclose(got, unweighted, rtol=1e-6)
    assert abs(got - plain) > 1e-2

    ours = distill(student, teacher, alpha=1.0)
    ours.compile("sgd", loss=SCCE(from_logits=True))
    got = float(ours.compute_loss(x, y, logits, sample_weight=weights))
    np.testing.assert_allclose(got, plain, rtol=1e-6)


def test_keras_distiller_is_not_compiled_after_loading(tmp_path):
    # Keras' Distiller overrides `compile` but not `compile_from_config`, so
    # `load_model` skips `compile` (with a warning): no optimizer, no loss.
    # Ours compiles again.
    x, _ = _data()
    teacher, _, _ = _models()
    theirs = keras.distillation.Distiller(
        teacher, _regularized_student(), keras.distillation.LogitsDistillation()
    )
    ours = distill(_regularized_student(), teacher)
    loaded = []
    for d in (theirs, ours):
        d.compile("sgd", loss=SCCE(from_logits=True))
        d(x[:2])  # built
        path = str(tmp_path / "distiller.keras")
        d.save(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded.append(keras.models.load_model(path))
        skipped = [w for w in caught if "was not called" in str(w.message)]
        assert bool(skipped) is (d is theirs)
    assert getattr(loaded[0], "optimizer", None) is None
    assert loaded[1].optimizer is not None
