"""Recurrent models export: loops unrolled, int8 verified against Keras."""

import keras
import pytest

from tests.recurrent_models import bilstm_classifier, digit_tokens, train
from tfaccel.export import export_tflite


@pytest.fixture(scope="module")
def tokens():
    return digit_tokens()


@pytest.fixture(scope="module")
def bilstm(tokens):
    keras.utils.set_random_seed(0)
    return train(bilstm_classifier(), tokens, epochs=3)


def test_bilstm_int8_post_training_is_integer_and_agrees(bilstm, tokens, tmp_path):
    x_train, _, x_test, _ = tokens
    report = export_tflite(
        bilstm, tmp_path / "int8.tflite", "int8", representative_data=x_train[:300],
        verification_data=x_test, tolerance={"min_agreement": 0.95},
    )
    assert report.int8_coverage == 1.0 and report.float_ops == []
    assert "WHILE" not in report.ops
    assert report.ops["FULLY_CONNECTED"] == {"int8": 33}  # 2 x 8 steps x 2 + logits
    assert any("'bilstm' (Bidirectional, 8 steps)" in note for note in report.notes)


@pytest.mark.parametrize("quantization", [None, "float16", "dynamic"])
def test_bilstm_float_exports_agree(bilstm, tokens, tmp_path, quantization):
    report = export_tflite(
        bilstm, tmp_path / "m.tflite", quantization, verification_data=tokens[2][:200],
        tolerance={"min_agreement": 0.98},
    )
    if quantization is None:
        assert report.max_abs_error < 1e-4


def test_variable_length_sequences_name_the_layer(tmp_path):
    inputs = keras.Input((None, 8))
    outputs = keras.layers.Dense(10)(keras.layers.GRU(8, name="gru")(inputs))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"Layer 'gru' \(GRU\) loops over a number of timesteps that is not fixed.*keras.Input\(\(timesteps, features\)\).*Received: timesteps=None"):
        export_tflite(model, tmp_path / "m.tflite", verify=False)
    assert not (tmp_path / "m.tflite").exists()
