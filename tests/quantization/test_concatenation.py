"""A concatenation's input that the converter writes on the concatenation's
scale rounds once, as in the file (`tfaccel.quantization.concatenation`)."""

import os
from unittest import mock

import keras
import numpy as np

import tfaccel.quantization.activations as activations
from tests.quantization import tflite_utils as tfl
from tfaccel.quantization import quantize
from tfaccel.quantization.concatenation import folds_into_concatenation


def _model():
    """A concatenation of every kind of input: a conv and an Add read by it
    alone (folded), a conv read twice, a max pool. Not the model input:
    XNNPACK merges its QUANTIZE and the requantizing one, TFLite's
    reference kernels do not. Five inputs: XNNPACK takes concatenations of
    up to five, and the default interpreter runs larger ones elsewhere."""
    keras.utils.set_random_seed(8)
    small = keras.initializers.RandomNormal(0.0, 0.05, seed=9)
    inputs = keras.Input((8, 8, 3))
    single = keras.layers.Conv2D(4, 1, name="single")(inputs)
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")(inputs)
    reads_shared = keras.layers.Conv2D(2, 1, name="reads_shared")(shared)
    added = keras.layers.Add(name="added")([
        keras.layers.Conv2D(4, 1, kernel_initializer=small, name="c1")(inputs),
        keras.layers.Conv2D(4, 1, kernel_initializer=small, name="c2")(inputs),
    ])
    pooled = keras.layers.MaxPooling2D(1, name="pool")(
        keras.layers.Conv2D(4, 1, name="before_pool")(inputs))
    x = keras.layers.Concatenate(name="cat")(
        [single, shared, reads_shared, added, pooled])
    return keras.Model(inputs, keras.layers.Conv2D(5, 1, name="head")(x))


def _data():
    return np.random.default_rng(10).normal(size=(32, 8, 8, 3)).astype("float32")


def test_which_inputs_the_converter_folds():
    qat = quantize(_model(), calibration_data=_data())
    folded = {
        "quant_single": True,  # CONV_2D read only by the concatenation
        "added_quant": True,  # ADD
        "quant_shared": False,  # read twice: a requantizing QUANTIZE op
        "quant_before_pool": False,  # the pool keeps its scale: QUANTIZE op
        "input_layer_quant": False,  # the model input
    }
    for name, want in folded.items():
        assert folds_into_concatenation(qat.get_layer(name)) is want, name


def test_file_and_model_round_once(tmp_path):
    x = _data()
    qat = quantize(_model(), calibration_data=x)
    it = tfl.interpreter(tfl.to_int8_tflite(qat, int8_io=False))
    scales = {outs[0]["name"]: outs[0]["quantization"][0]
              for _, _, outs in tfl.ops_with_tensors(it)}
    cat = next(s for name, s in scales.items() if "cat" in name)
    single = next(s for name, s in scales.items() if "quant_single" in name)
    assert single == cat  # the converter wrote the conv on the concat's scale
    once = tfl.file_disagreement(qat, x)
    with mock.patch.object(activations, "folds_into_concatenation", lambda layer: False):
        twice = tfl.file_disagreement(quantize(_model(), calibration_data=x), x)
    # Measured (default interpreter): 0.43% of the head's outputs a step
    # off, against 11.6% when every input rounds on its own scale first.
    assert once < 0.01
    assert twice > 5 * once
    # A loaded model finds the same layers in its own graph.
    path = os.path.join(tmp_path, "qat.keras")
    qat.save(path)
    back = keras.models.load_model(path)
    assert folds_into_concatenation(back.get_layer("quant_single"))
    np.testing.assert_array_equal(back.predict(x, verbose=0), qat.predict(x, verbose=0))
