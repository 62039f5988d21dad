"""MobileNetV3's activations as TFLite runs them in int8: hard swish takes
the levels of TFLite's HARD_SWISH kernel (`tfaccel.quantization.hard_swish`),
not the exactly rounded ones; hard sigmoid is an int8 ADD and MUL, not a
float island."""

from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tests.quantization import tflite_utils as tfl
from tfaccel.quantization import QuantizedActivation, quantize
from tfaccel.quantization.hard_swish import hard_swish_table, tflite_hard_swish
from tfaccel.quantization.layers import QuantizeWrapper
from tfaccel.quantization.sublayers import _chain

KERNELS = {
    "xnnpack": None,  # the default interpreter, as apps run it
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "reference": OpResolverType.BUILTIN_REF,
}


def _model(channels=4):
    """An identity 1x1 conv (its int8 output is the calibrated range's
    grid, every level of it) and a hard swish."""
    inputs = keras.Input((8, 8, channels))
    conv = keras.layers.Conv2D(channels, 1, name="conv")
    x = keras.layers.Activation("hard_swish", name="hs")(conv(inputs))
    model = keras.Model(inputs, x)
    conv.set_weights([np.eye(channels, dtype="float32")[None, None], np.zeros(channels, "float32")])
    return model


def _ramp(low, high, channels=4):
    """Every input level of [low, high] (a few times over)."""
    n = 8 * 8 * channels * 4
    return np.linspace(low, high, n, dtype="float32").reshape(4, 8, 8, channels)


def _levels(qat, x, resolver):
    content = tfl.to_int8_tflite(qat, int8_io=False)
    kwargs = {} if resolver is None else {"experimental_op_resolver_type": resolver}
    it = Interpreter(model_content=content, **kwargs)
    detail = it.get_input_details()[0]
    it.resize_tensor_input(detail["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(detail["index"], x)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    step = float(qat.get_layer("quant_hs").output_quantizer.inference_scale())
    # Called, not `predict`: a compiled predict function would outlive the
    # patches below.
    return np.round(got / step), np.round(np.asarray(qat(x, training=False)) / step)


# Ranges where exact rounding and the kernel differ (2-5 input levels each).
RANGES = [(-2.21, 7.65), (-2.91, 3.96), (-1.36, 4.77)]


@pytest.mark.parametrize("low,high", RANGES)
def test_each_litert_kernel_gives_the_qat_models_levels(low, high):
    x = _ramp(low, high)
    qat = quantize(_model(), calibration_data=x)
    assert isinstance(qat.get_layer("quant_hs"), QuantizedActivation)
    for name, resolver in KERNELS.items():
        file_levels, keras_levels = _levels(qat, x, resolver)
        assert np.array_equal(file_levels, keras_levels), name

    # Rounded exactly instead, the model is a level off where the kernel's
    # fixed point lands on the other side of a half.
    with mock.patch.object(QuantizedActivation, "_as_tflite_hard_swish",
                           lambda self, inputs, y: y):
        file_levels, keras_levels = _levels(qat, x, None)
    differ = np.abs(file_levels - keras_levels)
    assert differ.max() == 1
    assert np.count_nonzero(differ) >= 4


def test_table_on_a_tie():
    # Steps of 0.01 in and out: hard swish of -0.9 is -0.315, a tie; the
    # kernel's truncating multiply gives -0.32 where rounding gives -0.31.
    y = tflite_hard_swish(np.array([-0.9, 0.0, 1.2], "float32"), (-1.28, 1.27), (-0.38, 2.17))
    np.testing.assert_allclose(np.asarray(y), [-0.32, 0.0, 0.84], atol=1e-6)
    # The table runs once per call over the 256 input levels.
    table = hard_swish_table(tf.constant(0.01), tf.constant(0, tf.int64),
                             tf.constant(0.01), tf.constant(-90, tf.int64))
    assert table.shape == (256,)
    assert int(table[128]) == -90  # input 0 -> output 0 (its zero point)


def test_gradient_is_the_float_hard_swishs():
    x = _ramp(-4.0, 4.0)
    qat = quantize(_model(), calibration_data=x)

    def gradient():
        t = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = qat(t, training=False)
        return tape.gradient(y, t).numpy()

    emulated = gradient()
    with mock.patch.object(QuantizedActivation, "_as_tflite_hard_swish",
                           lambda self, inputs, y: y):
        rounded = gradient()
    np.testing.assert_array_equal(emulated, rounded)
    assert np.count_nonzero(emulated) > emulated.size / 2


def test_empty_ranges_before_training_give_the_rounded_value():
    # [0, 0]: no data seen yet. The value is hard swish quantized as before.
    y = tflite_hard_swish(np.array([1.0], "float32"), (0.0, 0.0), (0.0, 2.0))
    np.testing.assert_allclose(np.asarray(y), [2.0 / 3.0], atol=2.0 / 255)


def test_round_trip_keeps_the_kernels_levels(tmp_path):
    low, high = RANGES[0]
    x = _ramp(low, high)
    qat = quantize(_model(), calibration_data=x)
    path = tmp_path / "hs.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    file_levels, keras_levels = _levels(loaded, x, None)
    assert np.array_equal(file_levels, keras_levels)


def test_a_chain_inside_a_custom_layer_reads_the_wrappers_grid():
    # Inside a custom layer there is no functional graph to follow: the
    # chain tells the activation which quantizer made its input.
    dense = keras.layers.Dense(4)
    dense.build((None, 4))
    wrapper = QuantizeWrapper(dense, activation="linear", weight_mode="per_tensor")
    activation = QuantizedActivation("hard_swish")
    _chain([wrapper, activation])
    assert activation._input_grid() is wrapper.output_quantizer
    assert QuantizedActivation("hard_swish")._input_grid is None


@pytest.mark.parametrize("seed", [0, 2])
def test_hard_sigmoid_is_an_int8_add_and_mul(seed):
    # Before: the ADD (+3, ReLU6 fused) and the MUL (1/6) had no int8 range
    # between them and stayed float (2 float island ops in the report).
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(8, 3, padding="same", activation="hard_sigmoid", name="c")
    model = keras.Model(inputs, conv(inputs))
    x = 2 * np.random.default_rng(seed).normal(size=(32, 8, 8, 4)).astype("float32")
    qat = quantize(model, calibration_data=x)
    assert qat.get_layer("quant_c_act").relu6_quantizer.fixed_range == (0.0, 6.0)
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    assert [name for name, _, _ in tfl.ops_with_tensors(it)] == ["CONV_2D", "ADD", "MUL"]
    assert tfl.float_ops(it) == []
    # Measured: 0 and 0.04% of the 16,384 outputs a step apart.
    assert tfl.file_disagreement(qat, x) < 0.002


def test_training_rounds_exactly_and_inference_takes_the_kernels_levels():
    # The lookup costs a gather per value: only inference pays it.
    x = _ramp(*RANGES[0])
    qat = quantize(_model(), calibration_data=x)
    calls = []
    original = QuantizedActivation._as_tflite_hard_swish

    def spy(self, inputs, y):
        calls.append(True)
        return original(self, inputs, y)

    with mock.patch.object(QuantizedActivation, "_as_tflite_hard_swish", spy):
        qat(x, training=True)
        assert calls == []
        qat(x, training=False)
        assert calls == [True]
        qat(x)  # no `training`: inference
        assert calls == [True, True]


def test_non_finite_inputs_saturate_or_stay_nan():
    x = np.array([np.nan, np.inf, -np.inf, 0.9], "float32")
    y = np.asarray(tflite_hard_swish(x, (-1.28, 1.27), (-0.38, 2.17)))
    assert np.isnan(y[0])
    # inf and -inf clip to the input's ends, 1.27 and -1.28, as in the file.
    expected = tflite_hard_swish(np.array([1.27, -1.28, 0.9], "float32"),
                                 (-1.28, 1.27), (-0.38, 2.17))
    np.testing.assert_array_equal(y[1:], np.asarray(expected))
