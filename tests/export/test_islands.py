"""Float ops inside an integer body: listed with their layer, never hidden."""

import json
import re

import keras
import pytest

from tfaccel.export import export_tflite, inspect_tflite
from tfaccel.export.islands import NO_INT8_KERNEL, float_ops, layer_of
from tfaccel.quantization import quantize


def _mlp():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(16, activation="relu", name="middle"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="mlp",
    )


@pytest.fixture(scope="module")
def mlp(digits, fit):
    keras.utils.set_random_seed(0)
    return fit(_mlp(), digits, epochs=2)


def test_a_layer_left_float_by_qat_is_named(digits, fit, tmp_path):
    # A recurrent layer has no QAT rule: skipped, it stays float between
    # int8 layers, and the report names it (int8_coverage alone does not).
    x_train, _, x_test, _ = digits
    rows = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.SimpleRNN(16, name="rnn"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="rows",
    )
    keras.utils.set_random_seed(0)
    fit(rows, (x_train[..., 0], *digits[1:]), epochs=1)
    qat = quantize(rows, calibration_data=x_train[:128, ..., 0], skip=["rnn"])
    report = export_tflite(qat, tmp_path / "m.tflite",
                           verification_data=x_test[:64, ..., 0])
    assert report.float_ops, str(report)
    assert {op["layer"] for op in report.float_ops} == {"rnn"}
    fc = [op for op in report.float_ops if op["op"] == "FULLY_CONNECTED"]
    assert len(fc) == 16  # input and recurrent matmul at each of 8 steps
    assert all(op["dtype"] == "float32" and op["int8_kernel"] for op in fc)
    assert report.float_islands == report.float_ops
    text = str(report)
    n = len(report.float_ops)
    assert re.search(rf"float ops +{n} in the integer body: {n} float island op\(s\), 0 with", text)
    assert "FULLY_CONNECTED[float32] x16 in layer 'rnn': float island" in text
    assert json.loads(report.to_json())["float_ops"][0]["layer"] == "rnn"
    assert "- FULLY_CONNECTED[float32] x16 in layer 'rnn'" in report.to_markdown()
    # Without the model, inspect reads the layer from the tensor names alone.
    assert inspect_tflite(report.path).float_ops == report.float_ops


def test_a_fully_integer_file_lists_none(mlp, digits, tmp_path):
    x_train, _, x_test, _ = digits
    report = export_tflite(mlp, tmp_path / "m.tflite", "int8",
                           representative_data=x_train[:128],
                           verification_data=x_test[:64])
    assert report.float_ops == [] and report.int8_coverage == 1.0
    assert re.search("float ops +none between QUANTIZE and DEQUANTIZE", str(report))
    float_file = export_tflite(mlp, tmp_path / "f.tflite", verify=False)
    assert float_file.float_ops is None  # no integer body: not applicable
    assert "float ops" not in str(float_file)


def _op(name, inputs, outputs):
    return {"op_name": name, "inputs": inputs, "outputs": outputs}


def test_body_excludes_conversions_and_marks_ops_without_int8_kernel():
    # input 0 (float) -QUANTIZE-> 1 -DEQUANTIZE-> 2 -SQRT-> 3 -MUL(w=9)-> 4
    # -QUANTIZE-> 5 -FULLY_CONNECTED-> 6 -DEQUANTIZE-> 7 (output); and a
    # float op on the input before QUANTIZE, outside the body.
    ops = [
        _op("ABS", [0], [8]),
        _op("QUANTIZE", [0], [1]),
        _op("DEQUANTIZE", [1], [2]),
        _op("SQRT", [2], [3]),
        _op("MUL", [3, 9], [4]),
        _op("QUANTIZE", [4], [5]),
        _op("FULLY_CONNECTED", [5], [6]),
        _op("DEQUANTIZE", [6], [7]),
    ]
    labels = ["float32", "float32", "int8", "float32", "float32", "float32",
              "int8", "int8"]
    dtypes = {0: "float32", 1: "int8", 2: "float32", 3: "float32", 4: "float32",
              5: "int8", 6: "int8", 7: "float32", 8: "float32", 9: "float32"}
    names = {3: "m_1/norm_1/Sqrt", 4: "m_1/norm_1/mul", 9: "m_1/scale_1/w"}
    result = float_ops(
        ops, labels, dtypes.__getitem__, lambda i: names.get(i, f"t{i}"),
        is_constant=lambda i: i == 9, graph_inputs={0}, graph_outputs={7, 8},
        layer_names={"norm", "scale"},
    )
    assert [(op["op"], op["layer"], op["int8_kernel"]) for op in result] == [
        ("SQRT", "norm", False),
        ("MUL", "norm", True),
    ]
    assert "SQRT" in NO_INT8_KERNEL and "MUL" not in NO_INT8_KERNEL
    no_int8 = dict.fromkeys(dtypes, "float32")
    assert float_ops(ops, labels, no_int8.__getitem__, str, lambda i: False,
                     {0}, {7}) is None


@pytest.mark.parametrize(
    "names, layers, expected",
    [
        (["mlp_1/dense_1/MatMul"], {"dense", "dense_1"}, "dense"),
        (["mlp_1/dense_1_2/MatMul;mlp_1/dense_1_2/Relu"], {"dense", "dense_1"}, "dense_1"),
        (["m_1/inner_1/conv_1/Conv2D"], {"conv"}, "conv"),  # a nested model
        (["StatefulPartitionedCall_1:0", "m_1/logits_1/MatMul"], {"logits"}, "logits"),
        (["tfl.quantize"], {"logits"}, None),
        (["m_1/bilstm_1/forward_lstm_1/lstm_cell_3/mul"], None, "bilstm"),
    ],
)
def test_layer_of_tensor_names(names, layers, expected):
    assert layer_of(names, layers) == expected
