"""Recurrent models export: LSTMs fused or unrolled, verified against Keras."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tests.recurrent_models import (
    bilstm_classifier,
    digit_tokens,
    text_classifier,
    train,
)
from tfaccel.export import export_tflite, run_tflite
from tfaccel.export.fused_lstm import FusedLSTM, fuse_lstm, without_cell_clip
from tfaccel.export.run import FileRunner

L = keras.layers


@pytest.fixture(scope="module")
def tokens():
    return digit_tokens()


@pytest.fixture(scope="module")
def bilstm(tokens):
    keras.utils.set_random_seed(0)
    return train(bilstm_classifier(), tokens, epochs=3)


def _parity(model, path, x):
    """(top-1 agreement, mean |error| / std) of the file against `model`."""
    want = model.predict(x, verbose=0)
    have = run_tflite(path, x)
    return float(np.mean(want.argmax(-1) == have.argmax(-1))), float(
        np.abs(have - want).mean() / want.std()
    )


def test_bilstm_int8_runs_as_two_fused_integer_lstm_ops(bilstm, tokens, tmp_path):
    x_train, _, x_test, _ = tokens
    report = export_tflite(
        bilstm, tmp_path / "int8.tflite", "int8", representative_data=x_train[:300],
        verification_data=x_test, tolerance={"min_agreement": 0.98},
    )
    assert report.ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == {"int8": 2}
    assert report.ops["FULLY_CONNECTED"] == {"int8": 1}  # the logits only
    assert "WHILE" not in report.ops
    assert report.int8_coverage == 1.0 and report.float_ops == []
    assert any(
        "UNIDIRECTIONAL_SEQUENCE_LSTM: 'bilstm' (Bidirectional, 2 op(s))" in note
        and "batch size is 1" in note
        for note in report.notes
    )
    # Checked against the user's model itself, not the export's rebuilt one.
    agreement, error = _parity(bilstm, report.path, x_test)
    assert agreement >= 0.98 and error < 0.02
    assert Interpreter(model_path=report.path).get_input_details()[0]["shape"].tolist() == [1, 8, 8]


@pytest.mark.parametrize("quantization", [None, "float16", "dynamic"])
def test_bilstm_float_fused_exports_agree(bilstm, tokens, tmp_path, quantization):
    report = export_tflite(
        bilstm, tmp_path / "m.tflite", quantization, verification_data=tokens[2][:200],
        tolerance={"min_agreement": 0.98},
    )
    assert report.ops["UNIDIRECTIONAL_SEQUENCE_LSTM"]["float32"] == 2
    if quantization is None:
        agreement, error = _parity(bilstm, report.path, tokens[2][:200])
        assert agreement == 1.0 and error < 1e-5


def test_a_fused_lstm_file_keeps_state_and_the_runners_reset_it(bilstm, tokens, tmp_path):
    x = tokens[2][:3]
    report = export_tflite(bilstm, tmp_path / "m.tflite", verify=False)
    interpreter = Interpreter(model_path=report.path)
    runner = interpreter.get_signature_runner()
    (name, _), = runner.get_input_details().items()
    first = list(runner(**{name: x[:1]}).values())[0]
    again = list(runner(**{name: x[:1]}).values())[0]
    # TFLite's fused LSTM starts the second call from the first one's state.
    assert np.abs(first - again).max() > 1e-3
    interpreter.reset_all_variables()
    np.testing.assert_array_equal(list(runner(**{name: x[:1]}).values())[0], first)
    # run_tflite resets before every sample: the same sample, the same output.
    repeated = run_tflite(report.path, np.repeat(x[:1], 3, axis=0))
    np.testing.assert_array_equal(repeated, np.repeat(first, 3, axis=0))
    np.testing.assert_allclose(run_tflite(report.path, x), bilstm.predict(x, verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("merge_mode", ["sum", "ave", "mul"])
def test_bidirectional_merge_modes_and_sequences_fuse(tokens, tmp_path, merge_mode):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8), dtype="int32")
    x = L.Reshape((8, 32))(L.Embedding(17, 4)(inputs))
    x = L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode=merge_mode)(x)
    x = L.LSTM(5, go_backwards=True, use_bias=False, name="back")(x)
    model = keras.Model(inputs, L.Dense(10)(x))
    report = export_tflite(model, tmp_path / "m.tflite", verify=False)
    assert report.ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == {"float32": 3}
    agreement, error = _parity(model, report.path, tokens[2][:100])
    assert agreement == 1.0 and error < 1e-5


def test_lstms_the_fused_op_cannot_run_are_unrolled_and_named(tokens, tmp_path):
    inputs = keras.Input((8, 8), dtype="int32")
    x = L.Reshape((8, 32))(L.Embedding(17, 4)(inputs))
    x = L.LSTM(6, return_sequences=True, activation="relu", name="relu_lstm")(x)
    x = L.GRU(6, return_sequences=True, name="gru")(x)
    x = L.LSTM(6, name="plain")(x)
    model = keras.Model(inputs, L.Dense(10)(x))
    report = export_tflite(model, tmp_path / "m.tflite", verification_data=tokens[2][:50])
    assert report.ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == {"float32": 1}
    assert report.max_abs_error < 1e-4
    assert any("not fused (unrolled instead): 'relu_lstm' (TFLite's fused LSTM "
               "computes tanh/sigmoid activations only)" in n for n in report.notes)
    assert any("'gru' (GRU, 8 steps)" in n and "'relu_lstm'" in n for n in report.notes)


def test_a_masked_lstm_is_not_fused():
    inputs = keras.Input((8,), dtype="int32")
    x = L.Embedding(17, 4, mask_zero=True)(inputs)
    model = keras.Model(inputs, L.LSTM(4, name="masked")(x))
    notes = []
    rebuilt = fuse_lstm(model, notes)
    assert not any(isinstance(layer, FusedLSTM) for layer in rebuilt.layers)
    assert rebuilt.inputs[0].shape == (None, 8)  # no fused LSTM: any batch size
    assert notes == ["LSTM layers not fused (unrolled instead): 'masked' (it is "
                     "called with a mask or an initial state)."]


def test_fuse_lstm_false_unrolls_any_batch_size(bilstm, tokens, tmp_path):
    x_train, _, x_test, _ = tokens
    report = export_tflite(
        bilstm, tmp_path / "int8.tflite", "int8", representative_data=x_train[:300],
        verification_data=x_test, tolerance={"min_agreement": 0.95}, fuse_lstm=False,
    )
    assert report.int8_coverage == 1.0 and report.float_ops == []
    assert "WHILE" not in report.ops and "UNIDIRECTIONAL_SEQUENCE_LSTM" not in report.ops
    assert report.ops["FULLY_CONNECTED"] == {"int8": 33}  # 2 x 8 steps x 2 + logits
    assert any("'bilstm' (Bidirectional, 8 steps)" in note for note in report.notes)
    assert FileRunner(report.path).fixed_batch is None


def test_fuse_lstm_must_be_a_bool(bilstm, tmp_path):
    with pytest.raises(TypeError, match=r"`fuse_lstm` must be True or False. Received: fuse_lstm='yes'"):
        export_tflite(bilstm, tmp_path / "m.tflite", fuse_lstm="yes")
    assert not (tmp_path / "m.tflite").exists()


def test_a_fixed_batch_file_is_fed_whole_batches(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), batch_size=4)
    model = keras.Model(inputs, L.Dense(3)(inputs))
    x = np.random.default_rng(0).normal(size=(10, 6)).astype("float32")
    report = export_tflite(model, tmp_path / "m.tflite", verification_data=x)
    assert FileRunner(report.path).fixed_batch == 4
    np.testing.assert_allclose(run_tflite(report.path, x), model.predict(x, verbose=0),
                               atol=1e-5)


def test_variable_length_sequences_name_the_layer(tmp_path):
    inputs = keras.Input((None, 8))
    outputs = keras.layers.Dense(10)(keras.layers.GRU(8, name="gru")(inputs))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"Layer 'gru' \(GRU\) loops over a number of timesteps that is not fixed.*keras.Input\(\(timesteps, features\)\).*Received: timesteps=None"):
        export_tflite(model, tmp_path / "m.tflite", verify=False)
    assert not (tmp_path / "m.tflite").exists()


def test_a_variable_length_lstm_is_left_to_the_unrolling_step(tmp_path):
    inputs = keras.Input((None, 8))
    model = keras.Model(inputs, L.Dense(10)(L.LSTM(8, name="lstm")(inputs)))
    with pytest.raises(ValueError, match=r"Layer 'lstm' \(LSTM\) loops over a number of timesteps that is not fixed"):
        export_tflite(model, tmp_path / "m.tflite", verify=False)


def test_the_text_classifier_fuses_a_single_lstm(tokens, tmp_path):
    keras.utils.set_random_seed(0)
    model = text_classifier()
    report = export_tflite(model, tmp_path / "m.tflite", verify=False)
    assert report.ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == {"float32": 1}
    assert "REVERSE_V2" not in report.ops


def test_the_file_does_not_clip_the_cell_state_as_keras_does_not(tmp_path):
    # One unit whose cell state counts +1 per step for 20 steps, then -1 for
    # 15: 20 - 15 = 5 in Keras; the converter's default cell clip of 10
    # would end it at 10 - 15 = -5, and the output at tanh(-5).
    inputs = keras.Input((35, 1))
    lstm = L.LSTM(1, name="counter")
    model = keras.Model(inputs, lstm(inputs))
    kernel = np.array([[0.0, 0.0, 10.0, 0.0]], "float32")  # candidate = tanh(10 x)
    bias = np.array([20.0, 20.0, 0.0, 20.0], "float32")  # gates i, f, o open
    lstm.set_weights([kernel, np.zeros((1, 4), "float32"), bias])
    x = np.concatenate([np.ones((1, 20, 1)), -np.ones((1, 15, 1))], axis=1).astype("float32")
    want = model.predict(x, verbose=0)
    assert want[0, 0] > 0.99  # tanh(5)
    report = export_tflite(model, tmp_path / "m.tflite", verification_data=x)
    assert report.ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == {"float32": 1}
    np.testing.assert_allclose(run_tflite(report.path, x), want, atol=1e-4)
    assert without_cell_clip(open(report.path, "rb").read())[1] == 0  # no clip left
