"""The int8 TFLite file of a QAT model is integer from input to output."""

import keras
import numpy as np
import pytest

from tests.quantization import tflite_utils as tfl
from tests.tiny_models import make_cnn
from tfaccel.quantization import quantize


def _assert_integer_end_to_end(content, expect=()):
    it = tfl.interpreter(content)
    assert tfl.float_ops(it) == []
    ops = tfl.ops_with_tensors(it)
    names = {name for name, _, _ in ops}
    for op in expect:
        assert op in names
    for name, ins, outs in ops:
        if name in tfl.KERNEL_OPS | {"ADD", "MUL", "MEAN", "AVERAGE_POOL_2D"}:
            assert ins[0]["dtype"] == np.int8, name
            assert outs[0]["dtype"] == np.int8, name
    return ops


def test_digits_cnn_is_int8_end_to_end_with_per_channel_conv_weights(digits):
    x_train = digits[0]
    qat = quantize(make_cnn(), calibration_data=x_train[:256])
    ops = _assert_integer_end_to_end(
        tfl.to_int8_tflite(qat), expect=("CONV_2D", "FULLY_CONNECTED")
    )
    convs = [op for op in ops if op[0] == "CONV_2D"]
    assert len(convs) == 2  # BatchNorm and ReLU folded into the convolutions
    assert not {"MUL", "ADD", "RELU"} & {op[0] for op in ops}
    for _, ins, _ in convs:
        weights = ins[1]
        params = weights["quantization_parameters"]
        out_channels = weights["shape"][0]
        assert weights["dtype"] == np.int8
        assert len(params["scales"]) == out_channels > 1
        assert np.all(params["zero_points"] == 0)
    ((_, ins, _),) = [op for op in ops if op[0] == "FULLY_CONNECTED"]
    params = ins[1]["quantization_parameters"]
    assert ins[1]["dtype"] == np.int8
    assert np.all(params["zero_points"] == 0)
    # Per tensor: one scale (TFLite may repeat it once per output row).
    assert np.allclose(params["scales"], params["scales"][0])
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    for _, ins, _ in convs + [op for op in ops if op[0] == "FULLY_CONNECTED"]:
        values = it.get_tensor(ins[1]["index"])
        assert values.min() >= -127 and values.max() <= 127


def _app(factory, **kwargs):
    keras.utils.set_random_seed(0)
    model = factory(weights=None, input_shape=(32, 32, 3), classes=10, **kwargs)
    calibration = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
    return quantize(model, calibration_data=calibration.astype("float32"))


@pytest.mark.slow
def test_mobilenet_v2_is_int8_end_to_end():
    qat = _app(keras.applications.MobileNetV2, alpha=0.35)
    _assert_integer_end_to_end(
        tfl.to_int8_tflite(qat),
        expect=("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED", "SOFTMAX"),
    )


@pytest.mark.slow
def test_resnet50_is_int8_end_to_end():
    qat = _app(keras.applications.ResNet50)
    _assert_integer_end_to_end(
        tfl.to_int8_tflite(qat), expect=("CONV_2D", "ADD", "MAX_POOL_2D")
    )


@pytest.mark.slow
def test_efficientnet_b0_is_int8_end_to_end():
    qat = _app(keras.applications.EfficientNetB0)
    _assert_integer_end_to_end(
        tfl.to_int8_tflite(qat),
        expect=("CONV_2D", "DEPTHWISE_CONV_2D", "MUL", "LOGISTIC", "FULLY_CONNECTED"),
    )
