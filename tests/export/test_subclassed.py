"""Subclassed models export with verification on: float and post-training int8."""

import keras
import numpy as np
import pytest

import tfaccel
from tests.callbacks.test_pruning_callback import SubclassedCNN, SubclassedTransformer


@pytest.mark.parametrize("build", [SubclassedCNN, SubclassedTransformer])
@pytest.mark.parametrize("quantization", [None, "int8"])
def test_called_once_exports_verified(build, quantization, digits, tmp_path):
    x = digits[0]
    model = build()
    expected = np.asarray(model(x[:4]))  # called once: its shape is known
    report = tfaccel.export_tflite(
        model, tmp_path / "m.tflite", quantization, representative_data=x[:128],
        verification_data=x[:200],
    )
    assert report.verified and report.num_samples == 200
    assert report.agreement >= (0.999 if quantization is None else 0.9)
    got = tfaccel.export.run_tflite(str(tmp_path / "m.tflite"), x[:4])
    np.testing.assert_allclose(got, expected, atol=1e-4 if quantization is None else 0.5)


def test_input_shape_for_a_model_never_called(digits, tmp_path):
    model = SubclassedCNN()
    report = tfaccel.export_tflite(
        model, tmp_path / "m.tflite", verification_data=digits[0][:64],
        input_shape=(8, 8, 1),
    )
    assert report.verified and report.agreement == 1.0


def test_unknown_shape_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"has no known inputs.*input_shape="):
        tfaccel.export_tflite(SubclassedCNN(), tmp_path / "m.tflite", verify=False)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"`input_shape` must be one sample's shape"):
        tfaccel.export_tflite(
            SubclassedCNN(), tmp_path / "m.tflite", verify=False, input_shape="8x8"
        )


def test_keras_input_model_unchanged():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert tfaccel.export.prepare.functional_view(model) is model
