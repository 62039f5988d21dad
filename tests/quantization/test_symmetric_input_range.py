"""An input range of [-1, 1] (keras.applications' "tf" preprocessing)
rounds alike in the QAT model and in the int8 file."""

import keras
import numpy as np

from tfaccel import export_tflite
from tfaccel.export import compare_layers
from tfaccel.quantization import fake_quant_activation, quantize

# Every level of an 8-bit image after `p / 127.5 - 1`.
PIXELS = (np.arange(256, dtype=np.float32) / 127.5 - 1.0)


def test_a_symmetric_range_has_zero_and_both_ends_on_its_levels():
    step = 1.0 / 127.0
    got = np.asarray(fake_quant_activation(np.float32([-1.0, 0.0, 1.0]), -1.0, 1.0))
    np.testing.assert_allclose(got / step, [-127.0, 0.0, 127.0], atol=1e-4)
    # On 255 steps every pixel would sit half way between two levels.
    halfway = (PIXELS / (2.0 / 255.0)) % 1.0
    assert np.allclose(halfway, 0.5, atol=1e-4)
    assert np.min(np.abs((PIXELS / step) % 1.0 - 0.5)) > 1e-3  # no tie left
    # An asymmetric range keeps 255 steps; an empty one stays empty.
    np.testing.assert_allclose(
        np.asarray(fake_quant_activation(np.float32([2.55]), 0.0, 2.55)), [2.55], rtol=1e-6)
    assert not np.any(np.asarray(fake_quant_activation(PIXELS, 0.0, 0.0)))


def test_every_8_bit_pixel_in_minus_one_one_matches_the_file(tmp_path):
    image = np.resize(PIXELS, (4, 8, 8, 1)).astype(np.float32)  # all 256 levels
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    qat = quantize(keras.Model(inputs, outputs), calibration_data=image)
    path = str(tmp_path / "pixels.tflite")
    export_tflite(qat, path, verification_data=image)
    first = compare_layers(qat, path, image)[0]
    assert first.op == "QUANTIZE"
    # On 255 steps a quarter of the pixels came out a step apart (24.6%,
    # measured): at each tie the op rounded up, TFLite away from zero.
    assert first.off_by_one == 0.0 and first.off_by_more == 0.0, first
