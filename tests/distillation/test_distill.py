"""Distillation in `fit`: frozen teacher, learning, strategies, cache, I/O."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny_models import make_cnn, make_mlp
from tfaccel._warnings import TfaccelWarning
from tfaccel.distillation import Distiller, distill

SCCE = keras.losses.SparseCategoricalCrossentropy
TEACHER_FILTERS = (16, 32)  # as in conftest.teacher_weights


def _teacher(weights):
    teacher = make_cnn(TEACHER_FILTERS)
    teacher.set_weights(weights)
    teacher.trainable = False
    return teacher


def _compiled(distiller, optimizer="adam", **kwargs):
    distiller.compile(
        optimizer, loss=SCCE(from_logits=True), metrics=["accuracy"], **kwargs
    )
    return distiller


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def test_distillation_learns_and_keeps_teacher_frozen(digits, teacher_weights):
    x, y, xt, yt = digits
    teacher = _teacher(teacher_weights)
    student = make_cnn((4, 8))
    d = _compiled(
        distill(
            student,
            teacher,
            features={student.layers[-3].name: teacher.layers[-3].name},
        )
    )
    # Gradients reach only the student and the hint projection.
    expected = {id(v) for v in student.trainable_variables}
    expected |= {id(v) for v in d.projections[0].trainable_variables}
    assert {id(v) for v in d.trainable_variables} == expected
    assert d.projections[0].kernel.shape == (8, 32)
    before_teacher = [v.numpy().copy() for v in teacher.variables]  # + BN stats
    before_proj = d.projections[0].kernel.numpy().copy()
    d.fit(x, y, epochs=3, batch_size=32, verbose=0)
    for old, var in zip(before_teacher, teacher.variables):
        np.testing.assert_array_equal(old, var.numpy())
    assert not np.allclose(before_proj, d.projections[0].kernel.numpy())
    assert _accuracy(d.student, xt, yt) > 0.8  # chance is 0.1
    np.testing.assert_array_equal(
        d.predict(xt, verbose=0), student.predict(xt, verbose=0)
    )


def test_alpha_one_is_plain_training(digits, teacher_weights):
    # alpha=1 keeps only the hard-label loss: the same updates as `fit` alone.
    x, y, _, _ = digits
    keras.utils.set_random_seed(4)
    alone = make_mlp()
    initial = alone.get_weights()
    alone.compile(keras.optimizers.SGD(0.1), loss=SCCE(from_logits=True))
    alone.fit(x[:256], y[:256], epochs=2, batch_size=64, shuffle=False, verbose=0)
    student = make_mlp()
    student.set_weights(initial)
    d = distill(student, _teacher(teacher_weights), alpha=1.0)
    d.compile(keras.optimizers.SGD(0.1), loss=SCCE(from_logits=True))
    d.fit(x[:256], y[:256], epochs=2, batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(alone.get_weights(), student.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_student_regularizers_are_trained(digits, teacher_weights):
    # Keras' Model.compute_loss adds `model.losses` (weight and activity
    # regularizers); the distiller must too, else alpha=1 is not plain `fit`.
    x, y, _, _ = digits

    def regularized():
        keras.utils.set_random_seed(4)
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(
                    16,
                    kernel_regularizer=keras.regularizers.L2(0.1),
                    activity_regularizer=keras.regularizers.L2(0.01),
                ),
                keras.layers.Dense(10),
            ]
        )

    alone = regularized()
    alone.compile(keras.optimizers.SGD(0.1), loss=SCCE(from_logits=True))
    h_alone = alone.fit(x[:128], y[:128], batch_size=64, shuffle=False, verbose=0)
    d = distill(regularized(), _teacher(teacher_weights), alpha=1.0)
    d.compile(keras.optimizers.SGD(0.1), loss=SCCE(from_logits=True))
    h_d = d.fit(x[:128], y[:128], batch_size=64, shuffle=False, verbose=0)
    np.testing.assert_allclose(h_d.history["loss"], h_alone.history["loss"], rtol=1e-5)
    for a, b in zip(alone.get_weights(), d.student.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_teacher_runs_in_inference_mode(teacher_weights):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dropout(0.9)(keras.layers.Flatten()(inputs))
    teacher = keras.Model(inputs, keras.layers.Dense(10)(h))
    teacher.trainable = False
    d = _compiled(distill(make_mlp(), teacher, alpha=0.0))
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype="float32")
    y_pred = d.student(x)
    first = float(d.compute_loss(x=x, y_pred=y_pred, training=True))
    second = float(d.compute_loss(x=x, y_pred=y_pred, training=True))
    assert first == second  # dropout would make these differ


def _one_step(distiller_fn, x, y, strategy=None, **compile_kwargs):
    scope = strategy.scope() if strategy else tf.name_scope("single")
    with scope:
        d = distiller_fn()
        d.compile(
            keras.optimizers.SGD(0.05),
            loss=SCCE(from_logits=True),
            metrics=["accuracy"],
            **compile_kwargs,
        )
    history = d.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)
    return history.history["loss"][0], [w.numpy() for w in d.student.weights], d


def _make_pair(teacher_weights, features=False, student=make_cnn, filters=(4, 8)):
    def build():
        keras.utils.set_random_seed(3)
        teacher = _teacher(teacher_weights)
        model = student(filters) if student is make_cnn else student()
        # CNN: last ReLU -> teacher's last ReLU; MLP: hidden Dense -> Flatten.
        index = -3 if student is make_cnn else -2
        pairs = {model.layers[index].name: teacher.layers[index].name}
        pairs = pairs if features else None
        return distill(model, teacher, features=pairs)

    return build


def test_mirrored_two_cpus_matches_single_device(digits, teacher_weights, two_cpus):
    # One SGD step on the same batch must move the student identically:
    # a loss not averaged over replicas would double the update. (An MLP
    # student: BatchNorm batch statistics are per replica by design.)
    x, y, xt, yt = digits
    build = _make_pair(teacher_weights, features=True, student=make_mlp)
    loss_1, weights_1, _ = _one_step(build, x[:64], y[:64])
    loss_2, weights_2, d = _one_step(build, x[:64], y[:64], strategy=two_cpus)
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    for a, b in zip(weights_1, weights_2):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    d.optimizer.learning_rate.assign(0.2)
    d.fit(x, y, epochs=3, batch_size=64, verbose=0)
    assert _accuracy(d.student, xt, yt) > 0.5  # chance: 0.1


def test_jit_compile_matches_and_learns(digits, teacher_weights):
    x, y, xt, yt = digits
    build = _make_pair(teacher_weights, features=True)
    loss_graph, weights, _ = _one_step(build, x[:64], y[:64])
    loss_xla, weights_xla, d = _one_step(build, x[:64], y[:64], jit_compile=True)
    np.testing.assert_allclose(loss_xla, loss_graph, rtol=1e-4)
    for a, b in zip(weights, weights_xla):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
    # Same batch size: the compiled step is reused.
    d.fit(x[:1344], y[:1344], epochs=3, batch_size=64, verbose=0)
    assert _accuracy(d.student, xt, yt) > 0.5  # chance: 0.1


def test_cache_gives_same_first_step_loss(digits, teacher_weights):
    x, y, _, _ = digits

    def build(cache_teacher):
        keras.utils.set_random_seed(3)
        teacher = _teacher(teacher_weights)
        student = make_cnn((4, 8))
        pairs = {student.layers[-3].name: teacher.layers[-3].name}
        return distill(student, teacher, features=pairs, cache_teacher=cache_teacher)

    live, _, _ = _one_step(lambda: build(False), x[:128], y[:128])
    cached, _, _ = _one_step(lambda: build(True), x[:128], y[:128])
    np.testing.assert_allclose(cached, live, rtol=1e-5)


def test_cache_follows_shuffled_samples(digits, teacher_weights):
    # Teacher outputs travel with their samples: shuffled training with the
    # cache ends where shuffled training with the live teacher ends.
    x, y, _, _ = digits
    x, y = x[:320], y[:320]
    results = []
    for cache_teacher in (False, True):
        keras.utils.set_random_seed(5)
        d = distill(
            make_cnn((4, 8)), _teacher(teacher_weights), cache_teacher=cache_teacher
        )
        d.compile(keras.optimizers.SGD(0.1), loss=SCCE(from_logits=True))
        keras.utils.set_random_seed(6)
        h = d.fit(
            x,
            y,
            epochs=2,
            batch_size=32,
            shuffle=True,
            verbose=0,
            validation_data=(x[:64], y[:64]),
        )
        results.append(([w.numpy() for w in d.student.weights], h.history))
    (w_live, h_live), (w_cached, h_cached) = results
    for a, b in zip(w_live, w_cached):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(h_cached["val_loss"], h_live["val_loss"], rtol=1e-3)


def test_cache_rejects_datasets(digits, teacher_weights):
    x, y, _, _ = digits
    d = _compiled(distill(make_mlp(), _teacher(teacher_weights), cache_teacher=True))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    with pytest.raises(ValueError, match="cache_teacher=True.*Received: x of type"):
        d.fit(ds, epochs=1, verbose=0)


# -- bad input ---------------------------------------------------------------


def test_output_shape_mismatch(teacher_weights):
    with pytest.raises(
        ValueError, match="same shape.*student output shape=\\(None, 5\\)"
    ):
        distill(make_mlp(classes=5), _teacher(teacher_weights))


def test_trainable_teacher_is_frozen_with_warning(teacher_weights):
    teacher = make_cnn(TEACHER_FILTERS)
    teacher.set_weights(teacher_weights)
    with pytest.warns(TfaccelWarning, match="teacher 'digits_cnn' is trainable"):
        d = distill(make_mlp(), teacher)
    assert not teacher.trainable
    assert not teacher.trainable_variables
    assert len(d.trainable_variables) == len(d.student.trainable_variables)


@pytest.mark.parametrize("temperature", [0.0, -2.0])
def test_bad_temperature(teacher_weights, temperature):
    with pytest.raises(
        ValueError,
        match=f"`temperature` must be > 0. Received: temperature={temperature}",
    ):
        distill(make_mlp(), _teacher(teacher_weights), temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.5"])
def test_bad_alpha(teacher_weights, alpha):
    with pytest.raises(ValueError, match="`alpha` must be .*Received: alpha="):
        distill(make_mlp(), _teacher(teacher_weights), alpha=alpha)


def test_numpy_scalars_are_accepted(teacher_weights):
    d = distill(
        make_mlp(),
        _teacher(teacher_weights),
        temperature=np.float32(2.0),
        alpha=np.float32(0.25),
        feature_weight=np.int64(2),
    )
    assert (d.temperature, d.alpha, d.feature_weight) == (2.0, 0.25, 2.0)
    assert type(d.get_config()["alpha"]) is float  # JSON-serializable


def test_bad_features(teacher_weights):
    teacher = _teacher(teacher_weights)
    with pytest.raises(ValueError, match="student layer 'nope'.*Expected one of"):
        distill(make_mlp(), teacher, features={"nope": teacher.layers[1].name})
    student = make_mlp()
    with pytest.raises(ValueError, match="agree on every axis but the last"):
        distill(
            student, teacher, features={student.layers[1].name: teacher.layers[1].name}
        )
    with pytest.raises(ValueError, match="`features` must be a dict"):
        distill(make_mlp(), teacher, features="dense")


def test_compile_needs_hard_loss_unless_alpha_zero(digits, teacher_weights):
    x, _, _, _ = digits
    with pytest.raises(ValueError, match="`loss`.*Received: loss=None with alpha=0.1"):
        distill(make_mlp(), _teacher(teacher_weights)).compile("adam")
    d = distill(make_mlp(), _teacher(teacher_weights), alpha=0.0)
    d.compile("adam")
    history = d.fit(x[:128], epochs=2, batch_size=64, verbose=0)  # no labels
    assert history.history["loss"][1] < history.history["loss"][0]


# -- save / load ---------------------------------------------------------------


def test_save_and_load(tmp_path, digits, teacher_weights):
    x, y, xt, _ = digits
    teacher = _teacher(teacher_weights)
    student = make_cnn((4, 8))
    d = _compiled(
        distill(
            student,
            teacher,
            temperature=3.0,
            alpha=0.2,
            features=[(student.layers[-3].name, teacher.layers[-3].name)],
            feature_weight=0.5,
            cache_teacher=True,
        )
    )
    d.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)

    config = d.get_config()
    again = Distiller.from_config(config)
    assert again.get_config()["features"] == config["features"]
    assert (again.temperature, again.alpha, again.cache_teacher) == (3.0, 0.2, True)

    path = str(tmp_path / "distiller.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, Distiller)
    np.testing.assert_allclose(
        loaded.predict(xt, verbose=0), d.predict(xt, verbose=0), atol=1e-6
    )
    np.testing.assert_array_equal(
        loaded.projections[0].kernel.numpy(), d.projections[0].kernel.numpy()
    )
    assert not loaded.teacher.trainable
    # Compiled again (optimizer state restored); training continues.
    assert int(loaded.optimizer.iterations.numpy()) == 4
    loaded.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 6

    student_path = str(tmp_path / "student.keras")
    d.student.save(student_path)
    np.testing.assert_allclose(
        keras.models.load_model(student_path).predict(xt, verbose=0),
        d.predict(xt, verbose=0),
        atol=1e-6,
    )
