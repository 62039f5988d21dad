"""export_tflite on what tfaccel produces: pruned, QAT, both, distilled."""

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn
from tfaccel.distillation import distill
from tfaccel.export import export_tflite, inspect_tflite
from tfaccel.pruning import PruneLowMagnitude, prune, sparsity, strip_pruning
from tfaccel.quantization import is_quantized, quantize
from tfaccel.schedules import ConstantSparsity


def _overall(model):
    """Size-weighted zero fraction over tfaccel.pruning.sparsity's weights."""
    fractions = sparsity(model)
    sizes = {}
    for layer in model.layers:
        for weight in layer.weights:
            sizes[f"{layer.name}/{weight.name}"] = int(np.prod(weight.shape))
    total = sum(sizes[key] for key in fractions)
    return sum(fractions[key] * sizes[key] for key in fractions) / total


@pytest.fixture(scope="module")
def pruned(trained_cnn, digits, fit):
    keras.utils.set_random_seed(0)
    model = prune(trained_cnn, ConstantSparsity(0.8, 1))
    return fit(model, digits, epochs=1)


def test_pruned_model_is_stripped_and_sparse(pruned, trained_cnn, digits, tmp_path):
    assert any(isinstance(layer, PruneLowMagnitude) for layer in pruned.layers)
    x_test = digits[2]
    report = export_tflite(pruned, tmp_path / "pruned.tflite", verification_data=x_test)
    dense = export_tflite(trained_cnn, tmp_path / "dense.tflite")
    assert any("PruneLowMagnitude" in note for note in report.notes)
    assert report.agreement == 1.0 and report.max_abs_error < 1e-4
    # Weights stay dense in the file: same size, much smaller gzipped.
    assert report.bytes == dense.bytes
    assert report.gzip_bytes < 0.5 * dense.gzip_bytes
    expected = _overall(strip_pruning(pruned))
    assert expected > 0.75
    assert report.sparsity == pytest.approx(expected, abs=0.01)
    assert sorted(report.tensor_sparsity.values()) == pytest.approx(
        sorted(sparsity(strip_pruning(pruned)).values()), abs=0.01
    )
    assert inspect_tflite(report.path).sparsity == report.sparsity


def test_qat_model_exports_int8_without_representative_data(
    trained_cnn, digits, fit, tmp_path
):
    x_train, _, x_test, _ = digits
    keras.utils.set_random_seed(0)
    qat = fit(quantize(trained_cnn, calibration_data=x_train[:256]), digits, epochs=1)
    assert is_quantized(qat)
    report = export_tflite(qat, tmp_path / "qat.tflite", verification_data=x_test)
    assert report.quantization == "int8"
    assert any("quantization-aware" in note for note in report.notes)
    assert report.ops["CONV_2D"] == {"int8": 2}
    assert report.ops["FULLY_CONNECTED"] == {"int8": 1}
    assert report.int8_coverage == 1.0
    # The QAT model simulates the int8 file: they agree closely.
    assert report.agreement >= 0.99
    with pytest.raises(
        ValueError, match="must be 'int8' \\(or None\\) for a quantization-aware"
    ):
        export_tflite(qat, tmp_path / "f16.tflite", "float16")


def test_pruned_then_qat_model_is_sparse_int8(pruned, digits, fit, tmp_path):
    keras.utils.set_random_seed(0)
    model = fit(quantize(pruned, calibration_data=digits[0][:256]), digits, epochs=1)
    report = export_tflite(
        model, tmp_path / "pq.tflite", "int8", verification_data=digits[2]
    )
    assert report.int8_coverage == 1.0
    assert report.agreement >= 0.99
    # Zeros survive quantization (a zero weight is its zero point).
    assert report.sparsity >= _overall(strip_pruning(pruned)) - 0.01


def test_distiller_exports_its_student(trained_cnn, digits, tmp_path):
    teacher = make_cnn()
    teacher.trainable = False
    student = make_cnn(filters=(4, 8))
    distiller = distill(student, teacher)
    report = export_tflite(
        distiller, tmp_path / "student.tflite", verification_data=digits[2][:100]
    )
    assert any("student" in note for note in report.notes)
    # Verified against the student: a teacher file would not agree with it.
    assert report.agreement == 1.0 and report.max_abs_error < 1e-4
    teacher_report = export_tflite(teacher, tmp_path / "teacher.tflite")
    assert report.bytes < teacher_report.bytes


def test_channel_pruned_model_is_shrunk_before_export(trained_cnn, digits, tmp_path):
    # Regression: PruneChannels wrappers were exported as they are, a file
    # larger than the dense one instead of the smaller stripped model.
    x_train, y_train, x_test, _ = digits
    keras.utils.set_random_seed(0)
    model = prune(trained_cnn, ConstantSparsity(0.5, 0, frequency=1), structure="channels")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train[:64], y_train[:64], epochs=1, batch_size=32, verbose=0)
    report = export_tflite(model, tmp_path / "c.tflite", verification_data=x_test[:100])
    assert any("PruneChannels" in note for note in report.notes)
    assert report.agreement >= 0.99
    stripped = export_tflite(strip_pruning(model), tmp_path / "s.tflite")
    assert report.bytes == stripped.bytes
    assert report.bytes < export_tflite(trained_cnn, tmp_path / "d.tflite").bytes
