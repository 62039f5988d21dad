"""A QAT layer's bias is the one the int8 file holds: on the int32 grid
`input_scale * weight_scale` of its kernel (`QuantizeWrapper._int32_bias`)."""

import os
from unittest import mock

import keras
import numpy as np

import tfaccel.quantization.layers as qlayers
from tests.quantization import tflite_utils as tfl
from tfaccel.quantization import quantize
from tfaccel.quantization.layers import QuantizeWrapper, input_quantizer


def _model():
    """Conv+BN+ReLU6, padding, depthwise+ReLU, 1x1 conv: nonzero biases and
    BatchNorm statistics, as after training."""
    keras.utils.set_random_seed(1)
    bias = keras.initializers.RandomNormal(0.0, 0.3, seed=3)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(32, 3, bias_initializer=bias, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.DepthwiseConv2D(3, bias_initializer=bias, name="dw")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 1, bias_initializer=bias, name="project")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(0.0, 0.5, 32).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 32).astype("float32"))
    bn.beta.assign(rng.normal(0.0, 0.5, 32).astype("float32"))
    return model


def _data():
    return np.random.default_rng(2).normal(size=(64, 12, 12, 3)).astype("float32")


def _wrappers(qat):
    return [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]


def test_input_quantizer_is_found_through_layers_that_keep_the_scale(tmp_path):
    qat = quantize(_model(), calibration_data=_data())
    conv, dw, project = _wrappers(qat)
    assert input_quantizer(conv) is qat.layers[1]  # the model input's quantizer
    # Through ZeroPadding2D (same scale in TFLite) to the conv's output.
    assert input_quantizer(dw) is conv.output_quantizer
    assert input_quantizer(project) is dw.output_quantizer
    # Outside a functional model there is no producer: the float bias.
    alone = QuantizeWrapper(keras.layers.Conv2D(2, 1))
    alone(np.ones((1, 3, 3, 2), "float32"))
    assert input_quantizer(alone) is None
    # A loaded model finds them again (the links are the model's graph).
    path = os.path.join(tmp_path, "qat.keras")
    qat.save(path)
    back = keras.models.load_model(path)
    assert input_quantizer(_wrappers(back)[1]) is _wrappers(back)[0].output_quantizer
    x = _data()[:8]
    np.testing.assert_array_equal(back.predict(x, verbose=0), qat.predict(x, verbose=0))


def test_a_loaded_nested_sequential_finds_its_links_and_computes_the_same(tmp_path):
    # Loading builds a nested Sequential more than once, so its layers have
    # several inbound nodes; the links (int32 biases, pooling grids) must be
    # found through all of them, or the loaded model computed 1e-3 apart.
    keras.utils.set_random_seed(4)
    bias = keras.initializers.RandomNormal(0.0, 0.3, seed=5)
    block = keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(8, 3, padding="same", bias_initializer=bias, name="c1"),
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, padding="same", bias_initializer=bias, name="c2"),
        keras.layers.ReLU(),
    ], name="features")
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.GlobalAveragePooling2D()(block(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, bias_initializer=bias)(x))
    qat = quantize(model, calibration_data=_data())
    path = os.path.join(tmp_path, "nested.keras")
    qat.save(path)
    back = keras.models.load_model(path)

    def links(m):  # for each inner layer: the layer whose quantizer it reads
        inner = m.get_layer("features").layers
        owner = {id(layer.output_quantizer): layer.name
                 for layer in inner if hasattr(layer, "output_quantizer")}
        return [owner.get(id(input_quantizer(layer))) for layer in inner]

    pooling = back.get_layer("features").layers[1]
    assert len(pooling._inbound_nodes) > 1  # what loading does
    assert links(back) == links(qat)
    assert links(qat) == [None, "quant_c1", "quant_c1"]  # conv, pool, conv
    x = _data()[:16]
    np.testing.assert_array_equal(back.predict(x, verbose=0), qat.predict(x, verbose=0))


def test_bias_is_the_files_int32_bias():
    qat = quantize(_model(), calibration_data=_data())
    it = tfl.interpreter(tfl.to_int8_tflite(qat, int8_io=False))
    kernels = [ins for name, ins, _ in tfl.ops_with_tensors(it) if name in tfl.KERNEL_OPS]
    wrappers = _wrappers(qat)
    assert len(kernels) == len(wrappers) == 3
    for wrapper, ins in zip(wrappers, kernels):
        folded, folded_bias, scale = wrapper._fold()
        weight_scale = wrapper._fake_quant(folded, scale)[1]
        ours = np.asarray(wrapper._int32_bias(folded_bias, weight_scale), "float64")
        bias = ins[2]
        assert bias["dtype"] == np.int32
        step = bias["quantization_parameters"]["scales"].astype("float64")
        ints = it.get_tensor(bias["index"]).astype("float64")
        # The same grid point (float32 rounding is ~1e-7 of the value: a
        # few thousandths of a step here); the float bias lies between them.
        np.testing.assert_allclose(ours / step, ints, rtol=0, atol=0.02)
        off_grid = np.abs(np.asarray(folded_bias, "float64") / step - ints)
        assert off_grid.max() > 0.1


def test_int32_bias_brings_the_file_closer_to_the_model():
    x = _data()
    on_grid = tfl.file_disagreement(quantize(_model(), calibration_data=x), x)
    with mock.patch.object(qlayers, "input_quantizer", lambda layer: None):
        float_bias = tfl.file_disagreement(quantize(_model(), calibration_data=x), x)
    # Measured: 0.07% of values against 0.31% with the float bias.
    assert on_grid <= 0.5 * float_bias
    assert on_grid < 0.002
