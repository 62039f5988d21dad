"""`keras.ops` activations between layers are quantized as the `Activation`
layer of the same name (`registry.activation_operation`): TFLite runs them
as int8 ops with their own arithmetic and output scales."""

import keras
import numpy as np
import pytest

from tests.quantization import tflite_utils as tfl
from tfaccel.quantization import ActivationQuantizer, QuantizedActivation, quantize

# Before (a learned output range after the op): LOGISTIC and TANH were
# requantized by an extra QUANTIZE and 27% / 21% of the outputs were a step
# or more off the QAT model, silu 15%; hard sigmoid's ADD and MUL were float.
CASES = {
    "sigmoid": ["CONV_2D", "LOGISTIC", "CONV_2D"],
    "tanh": ["CONV_2D", "TANH", "CONV_2D"],
    "silu": ["CONV_2D", "LOGISTIC", "MUL", "CONV_2D"],
    "hard_sigmoid": ["CONV_2D", "ADD", "MUL", "CONV_2D"],
    "hard_silu": ["CONV_2D", "HARD_SWISH", "CONV_2D"],
}


def _model(function):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(8, 1)(inputs)
    x = function(x)
    return keras.Model(inputs, keras.layers.Conv2D(4, 1)(x))


def _data():
    return 2 * np.random.default_rng(0).normal(size=(64, 6, 6, 4)).astype("float32")


@pytest.mark.parametrize("name", sorted(CASES))
def test_activation_op_is_its_int8_op_and_agrees(name):
    x = _data()
    qat = quantize(_model(getattr(keras.ops, name)), calibration_data=x)
    activations = [layer for layer in qat.layers if isinstance(layer, QuantizedActivation)]
    assert [layer.activation for layer in activations] == [name]
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    assert [op for op, _, _ in tfl.ops_with_tensors(it)] == CASES[name]
    assert tfl.float_ops(it) == []
    # Measured: 0-0.03% of the 9,216 outputs a step apart.
    assert tfl.file_disagreement(qat, x) < 0.002


def test_softmax_op_over_the_last_axis_only(tmp_path):
    x = _data()
    last = quantize(_model(lambda t: keras.ops.softmax(t)), calibration_data=x)
    (activation,) = [layer for layer in last.layers if isinstance(layer, QuantizedActivation)]
    assert activation.activation == "softmax"
    # Another axis keeps the op, followed by a learned range.
    other = quantize(_model(lambda t: keras.ops.softmax(t, axis=1)), calibration_data=x)
    assert not any(isinstance(layer, QuantizedActivation) for layer in other.layers)
    assert any(isinstance(layer, ActivationQuantizer) and layer.name.startswith("softmax")
               for layer in other.layers)
    path = tmp_path / "softmax.keras"
    last.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), last.predict(x, verbose=0))
