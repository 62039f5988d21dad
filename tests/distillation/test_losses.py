"""The soft-target loss and the distiller's total loss against numpy."""

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfaccel.distillation import SoftTargetDistillation, cache, distill

TEACHER = np.array([[3.0, 1.0, -2.0, 0.5], [0.0, 2.0, 1.0, -1.0]], "float32")
STUDENT = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 2.0, 0.0]], "float32")
LABELS = np.array([0, 2], "int32")


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _numpy_kd(t, s, temperature):
    t, s = np.float64(t), np.float64(s)
    p, q = _softmax(t / temperature), _softmax(s / temperature)
    return temperature**2 * np.sum(p * np.log(p / q), axis=-1)


def _numpy_ce(s, labels):
    return -np.log(_softmax(s)[np.arange(len(labels)), labels])


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_soft_target_matches_numpy(temperature):
    loss = SoftTargetDistillation(temperature)
    expected = _numpy_kd(TEACHER, STUDENT, temperature)
    got = keras.ops.convert_to_numpy(loss.per_sample(TEACHER, STUDENT))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        float(loss.compute_loss(TEACHER, STUDENT)), expected.mean(), rtol=1e-4
    )


def test_keras_default_logits_distillation_differs():
    # Pins the upstream behaviour SoftTargetDistillation works around: the
    # default "kl_divergence" string loss skips softmax and T**2. When this
    # fails, Keras fixed it and SoftTargetDistillation may defer to it.
    temperature = 4.0
    keras_loss = keras.distillation.LogitsDistillation(temperature=temperature)
    got = float(keras_loss.compute_loss(TEACHER, STUDENT))
    expected = _numpy_kd(TEACHER, STUDENT, temperature).mean()
    assert abs(got - expected) > 1e-3


def _tiny_pair(classes=4):
    teacher = keras.Sequential([keras.Input((3,)), keras.layers.Dense(classes)])
    teacher.trainable = False
    student = keras.Sequential([keras.Input((3,)), keras.layers.Dense(classes)])
    return teacher, student


@pytest.mark.parametrize("temperature,alpha", [(4.0, 0.1), (2.0, 0.5), (1.0, 1.0)])
def test_total_loss_matches_numpy(temperature, alpha):
    teacher, student = _tiny_pair()
    d = distill(student, teacher, temperature=temperature, alpha=alpha)
    d.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.zeros((2, 3), "float32")
    got = d.compute_loss(
        x=cache.bundle(x, {"final_output": TEACHER}),
        y=LABELS,
        y_pred=STUDENT,
        training=False,
    )
    expected = alpha * _numpy_ce(STUDENT, LABELS).mean() + (1 - alpha) * (
        _numpy_kd(TEACHER, STUDENT, temperature).mean()
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_total_loss_with_sample_weight_and_live_teacher():
    teacher, student = _tiny_pair()
    d = distill(student, teacher, temperature=3.0, alpha=0.3)
    d.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]], "float32")
    weights = np.array([1.0, 0.25], "float32")
    t = keras.ops.convert_to_numpy(teacher(x, training=False))
    got = d.compute_loss(x=x, y=LABELS, y_pred=STUDENT, sample_weight=weights)
    expected = (
        0.3 * (weights * _numpy_ce(STUDENT, LABELS)).mean()
        + 0.7 * (weights * _numpy_kd(t, STUDENT, 3.0)).mean()
    )
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(
    logits=hnp.arrays("float32", (3, 5), elements=st.floats(-20, 20, width=32)),
    temperature=st.floats(0.5, 20.0),
)
def test_soft_target_is_nonnegative_and_zero_on_agreement(logits, temperature):
    loss = SoftTargetDistillation(temperature)
    same = keras.ops.convert_to_numpy(loss.per_sample(logits, logits))
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    shifted = keras.ops.convert_to_numpy(loss.per_sample(logits, logits[::-1]))
    # Nonnegative up to float32 rounding, which the T**2 factor scales:
    # logits [0.0039, 0, 0, 0, 0] against zeros at T = 13 give -1.4e-5.
    assert np.all(shifted >= -2e-6 * max(1.0, temperature**2))


def test_soft_target_serialization():
    loss = SoftTargetDistillation(temperature=2.5)
    again = SoftTargetDistillation.from_config(loss.get_config())
    assert again.temperature == 2.5
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(restored, SoftTargetDistillation)
    np.testing.assert_allclose(
        float(restored.compute_loss(TEACHER, STUDENT)),
        float(loss.compute_loss(TEACHER, STUDENT)),
    )


@pytest.mark.parametrize("temperature", [0, -1.0, "4"])
def test_soft_target_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetDistillation(temperature)


def test_training_call_returns_features_and_every_term_weighs_samples():
    teacher = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, name="t_hidden"),
            keras.layers.Dense(4),
        ]
    )
    teacher.trainable = False
    student = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, name="s_hidden"),
            keras.layers.Dense(4),
        ]
    )
    d = distill(student, teacher, alpha=0.5, features={"s_hidden": "t_hidden"})
    d.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.array([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]], "float32")
    # Training mode: logits and hint features of one student pass.
    features = d(x, training=True)
    assert set(features) == {"final_output", "s_hidden"}
    logits = d(x)  # inference mode, as `predict`: the logits alone
    np.testing.assert_allclose(features["final_output"], logits, rtol=1e-6)
    # Either form of `y_pred` gives the same loss (hints computed if missing).
    from_features = float(d.compute_loss(x=x, y=LABELS, y_pred=features))
    from_logits = float(d.compute_loss(x=x, y=LABELS, y_pred=logits, training=False))
    np.testing.assert_allclose(from_features, from_logits, rtol=1e-6)
    # Hard, soft-target and hint terms all weigh samples.
    zero = d.compute_loss(x=x, y=LABELS, y_pred=features, sample_weight=np.zeros(2))
    assert float(zero) == 0.0
