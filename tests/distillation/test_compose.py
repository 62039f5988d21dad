"""Distilling into pruned and quantization-aware students, then int8 export."""

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn, make_mlp
from tfaccel.distillation import distill
from tfaccel.export import export_tflite
from tfaccel.pruning import PruneLowMagnitude, prune, sparsity, strip_pruning
from tfaccel.quantization import is_quantized, quantize
from tfaccel.schedules import PolynomialDecay

SCCE = keras.losses.SparseCategoricalCrossentropy
TEACHER_FILTERS = (16, 32)  # as in conftest.teacher_weights
TARGET = 0.75


def _teacher(weights):
    teacher = make_cnn(TEACHER_FILTERS)
    teacher.set_weights(weights)
    teacher.trainable = False
    return teacher


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def _check_sparsity(model, target):
    values = sparsity(model)
    assert values, "no prunable weight found"
    for key, value in values.items():
        assert value == pytest.approx(target, abs=0.01), key


def test_pruned_then_qat_student_distills_and_exports_int8(
    tmp_path, digits, teacher_weights
):
    x, y, xt, yt = digits
    teacher = _teacher(teacher_weights)
    steps_per_epoch, epochs = 1400 // 50, 4  # 112 steps
    schedule = PolynomialDecay(0.0, TARGET, begin_step=0, end_step=80, frequency=5)
    student = prune(make_mlp((64,)), schedule)
    hidden = student.layers[1]
    assert isinstance(hidden, PruneLowMagnitude)
    # Hint through a pruned layer (named like the layer it wraps).
    d = distill(student, teacher, features={hidden.name: teacher.layers[-2].name})
    d.compile(keras.optimizers.Adam(0.01), loss=SCCE(from_logits=True))
    d.fit(x, y, epochs=epochs, batch_size=50, verbose=0)

    # The pruning step counts student updates only: one per optimizer step.
    assert int(d.optimizer.iterations.numpy()) == steps_per_epoch * epochs
    assert int(hidden.pruning_step.numpy()) == steps_per_epoch * epochs
    _check_sparsity(d.student, TARGET)
    pruned_accuracy = _accuracy(d.student, xt, yt)
    assert pruned_accuracy > 0.8

    # QAT on the distilled pruned student (quantize keeps zeros at zero).
    qat = quantize(d.student, calibration_data=x[:256])
    assert is_quantized(qat)
    d2 = distill(qat, teacher, alpha=0.2)
    d2.compile(keras.optimizers.Adam(0.003), loss=SCCE(from_logits=True))
    d2.fit(x, y, epochs=2, batch_size=50, verbose=0)
    for key, value in sparsity(d2.student).items():
        assert value >= TARGET - 0.01, key
    assert _accuracy(d2.student, xt, yt) > 0.8

    report = export_tflite(
        d2, tmp_path / "student.tflite", "int8", verification_data=xt[:128]
    )
    assert report.int8_coverage == 1.0
    assert report.agreement > 0.9
    assert report.sparsity is not None and report.sparsity > 0.5


def test_stripped_pruned_student_saves_and_loads(tmp_path, digits, teacher_weights):
    x, y, xt, _ = digits
    schedule = PolynomialDecay(0.0, TARGET, begin_step=0, end_step=20, frequency=5)
    student = prune(make_mlp(), schedule)
    d = distill(student, _teacher(teacher_weights))
    d.compile("adam", loss=SCCE(from_logits=True))
    d.fit(x[:800], y[:800], epochs=3, batch_size=100, verbose=0)
    path = str(tmp_path / "distiller.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(xt, verbose=0), d.predict(xt, verbose=0), atol=1e-6
    )
    plain = strip_pruning(loaded.student)
    _check_sparsity(plain, TARGET)
    np.testing.assert_allclose(
        plain.predict(xt, verbose=0), d.predict(xt, verbose=0), atol=1e-5
    )
