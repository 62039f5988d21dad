"""Several identical ReLUs reading one tensor fuse into the op before them,
as the converter fuses them (NASNetMobile's stem feeds five)."""

import keras
import numpy as np
import pytest

from tests.quantization import tflite_utils as tfl
from tfaccel.quantization import ActivationQuantizer, quantize


def _branches(x, relu):
    """Two branches, each opening with its own ReLU layer of `x`."""
    a = keras.layers.Conv2D(6, 1, name="left")(relu("relu_a")(x))
    b = keras.layers.Conv2D(6, 3, padding="same", name="right")(relu("relu_b")(x))
    return keras.layers.Add()([a, b])


def _relu(name):
    return keras.layers.Activation("relu", name=name)


def _relu6(name):
    return keras.layers.ReLU(6.0, name=name)


def _conv_model(relu=_relu):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    return keras.Model(inputs, _branches(x, relu))


def _two_convs_added(inputs):
    return keras.layers.Add()([
        keras.layers.Conv2D(8, 1, name="a")(inputs),
        keras.layers.Conv2D(8, 3, padding="same", name="b")(inputs),
    ])


def _standalone_bn_model(relu=_relu):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(name="bn")(_two_convs_added(inputs))  # MUL, ADD
    return keras.Model(inputs, _branches(x, relu))


def _add_model(relu=_relu):
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, _branches(_two_convs_added(inputs), relu))


def _data():
    return np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype("float32")


def _trained(build, relu=_relu):
    keras.utils.set_random_seed(2)
    x = _data()
    qat = quantize(build(relu), calibration_data=x)
    qat.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    qat.fit(x, np.zeros((32, 8, 8, 6), "float32"), epochs=2, verbose=0)
    return qat, x


@pytest.mark.parametrize("build", [_conv_model, _standalone_bn_model, _add_model])
def test_shared_relus_fuse_like_the_converter(build):
    qat, x = _trained(build)
    for name in ("relu_a", "relu_b"):  # folded: no layer, no quantizer of their own
        assert name not in [layer.name for layer in qat.layers]
        assert f"{name}_quant" not in [layer.name for layer in qat.layers]
    it = tfl.interpreter(tfl.to_int8_tflite(qat, int8_io=False))
    ops = [name for name, _, _ in tfl.ops_with_tensors(it)]
    assert "RELU" not in ops  # the converter fused the ReLU into the op
    assert tfl.float_ops(it) == []
    # One rounding, as in the file. Measured: 0%, 0.008%, 0.008% of output
    # values a step off; with a quantizer between the op and each ReLU
    # (before this fusion) 33%, 20% and 27%.
    assert tfl.file_disagreement(qat, x) < 0.002


def test_mixed_consumers_keep_their_own_ops():
    """A ReLU beside a ReLU6 (or any other reader) is not fused: the file
    keeps the op's own output and a RELU after it, and so does the model."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    a = keras.layers.Conv2D(6, 1, name="left")(_relu("relu_a")(x))
    b = keras.layers.Conv2D(6, 1, name="right")(_relu6("relu6_b")(x))
    model = keras.Model(inputs, keras.layers.Add()([a, b]))
    qat = quantize(model, calibration_data=_data())
    names = [layer.name for layer in qat.layers]
    assert "relu_a" in names and "relu6_b" in names
    stem = qat.get_layer("quant_stem")
    assert stem.output_quantizer.activation is None
    assert all(isinstance(layer, ActivationQuantizer) for layer in qat.layers
               if layer.name.endswith("_quant") and "relu" in layer.name)
