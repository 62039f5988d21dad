"""Average pooling rounds to its input's int8 grid, as TFLite's int8
AVERAGE_POOL_2D does (`tfaccel.quantization.pooling.SameScaleQuantizer`)."""

import os
from unittest import mock

import keras
import numpy as np
import pytest

import tfaccel.quantization.pooling as pooling
from tests.quantization import tflite_utils as tfl
from tfaccel.quantization import quantize
from tfaccel.quantization.layers import QuantizeWrapper, input_quantizer
from tfaccel.quantization.pooling import SameScaleQuantizer


def _model(pool=keras.layers.AveragePooling2D):
    """Conv+ReLU, a 3x3 stride-1 average pool (NASNet's cells), a linear
    1x1 conv that reads it."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(inputs)
    x = pool(3, strides=1, padding="same", name="pool")(x)
    x = keras.layers.Conv2D(8, 1, name="project")(x)
    return keras.Model(inputs, x)


def _data():
    return np.random.default_rng(5).normal(size=(48, 10, 10, 3)).astype("float32")


def test_pool_output_lies_on_its_inputs_grid():
    x = _data()
    qat = quantize(_model(), calibration_data=x)
    requant = qat.get_layer("pool_requant")
    assert isinstance(requant, SameScaleQuantizer)
    conv = next(layer for layer in qat.layers if isinstance(layer, QuantizeWrapper))
    assert input_quantizer(requant) is conv.output_quantizer
    # The 1x1 conv reads the pool's int8 tensor: its int32 bias is found
    # through the requantizer and the pool.
    assert input_quantizer(qat.get_layer("quant_project")) is conv.output_quantizer
    pooled = keras.Model(qat.inputs, qat.get_layer("pool").output)(x[:8])
    rounded = keras.Model(qat.inputs, requant.output)(x[:8])
    scale = float(conv.output_quantizer.inference_scale())
    levels = np.asarray(rounded, "float64") / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    # The exact means lie between levels; the rounding moves them.
    assert np.mean(np.abs(np.asarray(pooled) - np.asarray(rounded)) > scale / 10) > 0.5
    assert np.max(np.abs(np.asarray(pooled) - np.asarray(rounded))) <= scale / 2 + 1e-6


def test_file_keeps_one_average_pool_and_agrees_closer():
    x = _data()
    qat = quantize(_model(), calibration_data=x)
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    ops = [name for name, _, _ in tfl.ops_with_tensors(it)]
    # The requantizer adds no op: the pool keeps its input's scale.
    assert ops == ["CONV_2D", "AVERAGE_POOL_2D", "CONV_2D"]
    rounded = tfl.file_disagreement(qat, x)
    with mock.patch.object(pooling, "input_quantizer", lambda layer: None):
        exact = tfl.file_disagreement(quantize(_model(), calibration_data=x), x)
    # Measured (default interpreter): 0 of 38,400 values against 25.9%
    # with the exact means (7.5% of the means are ties, at the borders).
    assert exact > 0.1
    assert rounded < 0.001


@pytest.mark.parametrize("pool", [keras.layers.AveragePooling1D])
def test_one_dimensional_pool_and_round_trip(tmp_path, pool):
    keras.utils.set_random_seed(6)
    inputs = keras.Input((12, 4))
    x = keras.layers.Conv1D(8, 3, activation="relu", name="conv")(inputs)
    x = pool(2, name="pool")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    data = np.random.default_rng(7).normal(size=(32, 12, 4)).astype("float32")
    qat = quantize(model, calibration_data=data)
    assert isinstance(qat.get_layer("pool_requant"), SameScaleQuantizer)
    qat.compile(optimizer="sgd", loss="mse")
    qat.fit(data, np.zeros((32, 3), "float32"), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "qat.keras")
    qat.save(path)
    back = keras.models.load_model(path)
    np.testing.assert_array_equal(back.predict(data, verbose=0), qat.predict(data, verbose=0))
    assert isinstance(back.get_layer("pool_requant"), SameScaleQuantizer)


def test_without_a_quantized_input_it_passes_through():
    layer = SameScaleQuantizer()
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(1, 3, 4)
    np.testing.assert_array_equal(layer(x), x)
