"""Distillation into a student that is pruned and QAT at once, in one `fit`."""

import keras
import numpy as np
import pytest

import tfaccel
from tests.tiny_models import make_cnn
from tfaccel.pruning import pruning_wrappers
from tfaccel.quantization.pruned import PrunedQuantizeWrapper
from tfaccel.schedules import PolynomialDecay

SCCE = keras.losses.SparseCategoricalCrossentropy
TEACHER_FILTERS = (16, 32)  # as in conftest.teacher_weights
TARGET = 0.8


def _teacher(weights):
    teacher = make_cnn(TEACHER_FILTERS)
    teacher.set_weights(weights)
    teacher.trainable = False
    return teacher


@pytest.mark.parametrize("cache_teacher", [False, True])
def test_pruned_qat_student_distills_in_one_fit(
    cache_teacher, digits, teacher_weights, tmp_path
):
    x, y, xt, yt = digits
    x, y = x[:800], y[:800]
    steps_per_epoch, epochs = 800 // 50, 3  # 48 steps
    schedule = PolynomialDecay(0.0, TARGET, begin_step=0, end_step=32, frequency=4)
    # The recipe: prune + QAT the dense model, distilling from its float self.
    dense = make_cnn(TEACHER_FILTERS)
    dense.set_weights(teacher_weights)
    student = tfaccel.quantize(tfaccel.prune(dense, schedule), calibration_data=x[:64])
    wrappers = pruning_wrappers(student)
    assert [type(w) for w in wrappers] == [PrunedQuantizeWrapper] * 3
    teacher = _teacher(teacher_weights)
    # A hint through a pruned QAT layer, named like the layer it wraps.
    hint = {wrappers[1].layer.name: teacher.layers[4].name}
    d = tfaccel.distill(
        student, teacher, alpha=0.3, features=hint, cache_teacher=cache_teacher
    )
    d.compile(keras.optimizers.Adam(1e-3), loss=SCCE(from_logits=True))
    d.fit(x, y, epochs=epochs, batch_size=50, verbose=0)

    # One student forward pass per optimizer step: the pruning steps count
    # student updates, and the schedule reaches its target.
    iterations = int(d.optimizer.iterations.numpy())
    assert iterations == steps_per_epoch * epochs
    assert [w.steps_done() for w in wrappers] == [iterations] * 3
    for key, value in tfaccel.sparsity(d.student).items():
        assert value == pytest.approx(TARGET, abs=0.006), key
    accuracy = np.mean(np.argmax(d.student.predict(xt, verbose=0), -1) == yt)
    assert accuracy > 0.9

    # The distiller exports its student: stripped, sparse, fully int8.
    report = tfaccel.export_tflite(
        d, tmp_path / "student.tflite", "int8", verification_data=xt
    )
    assert report.int8_coverage == 1.0
    assert report.agreement >= 0.98
    kernels = [v for k, v in report.tensor_sparsity.items() if "quant_" in k]
    assert len(kernels) == 3
    assert all(v == pytest.approx(TARGET, abs=0.006) for v in kernels)
