"""Transformer layers under QAT compute what their int8 TFLite ops compute."""

import keras
import numpy as np
import pytest

from tests.quantization import tflite_utils as tfl
from tests.quantization.conftest import compile_classifier
from tests.tiny_models import load_digits_split, make_transformer_block
from tfaccel.quantization import (
    QuantizedEinsumDense,
    QuantizedEmbedding,
    QuantizedMultiHeadAttention,
    quantize,
    quantize_kind,
)


@pytest.fixture(scope="module")
def rows():
    """Real digits as sequences: 8 tokens (rows) of 8 pixels."""
    x_train = load_digits_split()[0]
    return x_train[:128, :, :, 0]


def _model(layer_fn, shape=(8, 8)):
    inputs = keras.Input(shape)
    model = keras.Model(inputs, layer_fn(inputs))
    _trained_biases(model)
    return model


def _trained_biases(model):
    """Nonzero biases, as after training (a zero bias hides where the
    converter puts the bias add)."""
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.path.endswith("bias") or w.path.endswith("beta"):
            w.assign(rng.normal(0, 0.1, w.shape).astype("float32"))


def _steps(qat, x):
    """|QAT - int8 file| in output steps (rounded), and the file's ops."""
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    scale = it.get_output_details()[0]["quantization"][0]
    diff = np.abs(qat.predict(x, verbose=0) - tfl.predict_int8(it, x))
    return np.round(diff / scale), tfl.ops_with_tensors(it)


def _steps_apart(qat, x):
    """Max |QAT - int8 file| in output steps, and the file's ops."""
    steps, ops = _steps(qat, x)
    return steps.max(), ops


def _int8_ops(ops, name):
    found = [(ins, outs) for op, ins, outs in ops if op == name]
    assert found, name
    for ins, outs in found:
        assert all(t["dtype"] == np.int8 for t in ins + outs if t["dtype"] != np.int32)
    return found


@pytest.mark.parametrize(
    "equation, shape, bias",
    [("abc,cd->abd", (None, 12), "d"), ("abc,cde->abde", (None, 2, 4), "de")],
)
def test_einsum_dense_is_a_per_tensor_int8_fully_connected(rows, equation, shape, bias):
    keras.utils.set_random_seed(0)
    layer = keras.layers.EinsumDense(equation, output_shape=shape, bias_axes=bias)
    qat = quantize(_model(layer), calibration_data=rows)
    assert isinstance(qat.layers[-1], QuantizedEinsumDense)
    steps, ops = _steps_apart(qat, rows)
    assert steps <= 1.0
    ((ins, _),) = _int8_ops(ops, "FULLY_CONNECTED")
    scales = ins[1]["quantization_parameters"]["scales"]
    assert np.allclose(scales, scales[0])  # per tensor
    assert tfl.float_ops(tfl.interpreter(tfl.to_int8_tflite(qat))) == []


@pytest.mark.parametrize(
    "activation",
    [lambda x: keras.layers.Activation("gelu")(x), lambda x: keras.ops.gelu(x)],
    ids=["layer", "op"],
)
def test_gelu_is_an_int8_gelu_op(rows, activation):
    # Both sides of 0. (A range of exactly [-2, 2] puts the zero point on a
    # tie that FakeQuant and the converter round apart: avoided.)
    x = 4.0 * rows - 1.0
    qat = quantize(_model(activation), calibration_data=x)
    steps, ops = _steps_apart(qat, x)
    assert steps <= 1.0
    _int8_ops(ops, "GELU")


def test_multi_head_attention_is_int8_matmuls_and_softmax(rows):
    keras.utils.set_random_seed(0)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    qat = quantize(_model(lambda x: mha(x, x)), calibration_data=rows)
    (layer,) = [
        lay for lay in qat.layers if isinstance(lay, QuantizedMultiHeadAttention)
    ]
    for original, new in zip(mha.weights, [w for w in layer.weights if w.trainable]):
        np.testing.assert_array_equal(original.numpy(), new.numpy())
    steps, ops = _steps(qat, rows)
    # Seven int8 ops in a row, each within one step of the QAT tensor: the
    # output is exact almost everywhere, a rounding carried twice at most.
    assert steps.max() <= 2 and np.mean(steps == 0) >= 0.95
    assert len(_int8_ops(ops, "FULLY_CONNECTED")) == 4
    assert len(_int8_ops(ops, "BATCH_MATMUL")) == 2
    ((_, outs),) = _int8_ops(ops, "SOFTMAX")
    assert outs[0]["quantization"] == (1 / 256, -128)
    assert tfl.float_ops(tfl.interpreter(tfl.to_int8_tflite(qat))) == []


def test_embedding_table_is_int8_and_gather_keeps_its_scale(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Embedding(20, 6)(inputs))
    qat = quantize(model)
    (layer,) = [lay for lay in qat.layers if isinstance(lay, QuantizedEmbedding)]
    table = np.asarray(layer.quantized_table())
    step = np.abs(model.layers[-1].embeddings.numpy()).max() / 127
    np.testing.assert_allclose(table / step, np.round(table / step), atol=1e-4)
    it = tfl.interpreter(tfl.to_int8_tflite(qat, int8_io=False))
    ((ins, outs),) = _int8_ops(tfl.ops_with_tensors(it), "GATHER")
    assert ins[0]["quantization"] == outs[0]["quantization"]
    ids = np.random.default_rng(0).integers(0, 20, (4, 5)).astype("int32")
    it.resize_tensor_input(it.get_input_details()[0]["index"], ids.shape)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], ids)
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, table[ids], atol=1e-6)
    path = str(tmp_path / "embedding.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[-1], QuantizedEmbedding)
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), table[ids])


def test_position_ids_computed_in_the_graph_stay_int32(rows):
    """keras.io's position embedding, functional: int ops need no ranges."""
    inputs = keras.Input((8, 8))
    positions = keras.ops.cumsum(keras.ops.ones_like(inputs[:, :, 0], "int32"), axis=1)
    x = keras.layers.Dense(6)(inputs) + keras.layers.Embedding(9, 6)(positions - 1)
    model = keras.Model(inputs, x)
    _trained_biases(model)
    qat = quantize(model, calibration_data=rows)
    steps, ops = _steps_apart(qat, rows)
    assert steps <= 1.0
    _int8_ops(ops, "GATHER")
    _int8_ops(ops, "FULLY_CONNECTED")
    assert {"CUMSUM", "SUB"} <= {op for op, _, _ in ops}
    assert tfl.float_ops(tfl.interpreter(tfl.to_int8_tflite(qat))) == []


def test_layer_normalization_over_other_axes_is_refused():
    model = _model(lambda x: keras.layers.LayerNormalization(axis=1, name="ln")(x))
    assert quantize_kind(model.get_layer("ln")) is None
    with pytest.raises(ValueError, match="'ln' of class LayerNormalization"):
        quantize(model)


def test_transformer_block_is_int8_and_round_trips(rows, tmp_path):
    keras.utils.set_random_seed(0)
    model = make_transformer_block()
    _trained_biases(model)
    qat = quantize(model, calibration_data=rows)
    steps, ops = _steps_apart(qat, rows)
    assert steps <= 3.0  # several int8 ops in a row, each rounding once
    # Dense on tokens with a (trained, nonzero) bias: int8 too.
    assert len(_int8_ops(ops, "FULLY_CONNECTED")) == 8
    assert len(_int8_ops(ops, "BATCH_MATMUL")) == 2
    _int8_ops(ops, "SOFTMAX")
    # LayerNormalization too (tests/quantization/test_layernorm_qat.py).
    assert len(_int8_ops(ops, "RSQRT")) == 2
    assert tfl.float_ops(tfl.interpreter(tfl.to_int8_tflite(qat))) == []
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        loaded.predict(rows, verbose=0), qat.predict(rows, verbose=0)
    )
    assert [type(lay) for lay in loaded.layers] == [type(lay) for lay in qat.layers]


def test_qat_transformer_trains_in_sync_under_mirrored_strategy(rows, two_cpus):
    labels = load_digits_split()[1][: len(rows)]
    with two_cpus.scope():
        model = make_transformer_block()
        qat = quantize(model, calibration_data=rows)
        compile_classifier(qat)
    qat.fit(rows, labels, batch_size=32, epochs=1, shuffle=False, verbose=0)
    ranges = [v for v in qat.variables if v.path.endswith(("range_min", "range_max"))]
    assert len(ranges) > 20 and any(float(v.numpy()) != 0.0 for v in ranges)
    for variable in qat.variables:
        first, second = (np.asarray(v) for v in variable.value.values)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
