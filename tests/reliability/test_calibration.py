"""Issue 12 items 2, 5, 6 (calibration side) and the one data normalizer.

`calibrate` is all or nothing: any error leaves the previous ranges; data
with NaN/inf is refused naming the argument, the batch and the count.
"""

import keras
import numpy as np
import pytest

from tests.tiny_models import make_mlp
from tfaccel.quantization import ActivationQuantizer, calibrate, quantize


def _ranges(model):
    return [
        (float(layer.range_min.numpy()), float(layer.range_max.numpy()))
        for layer in model._flatten_layers()
        if isinstance(layer, ActivationQuantizer) and layer.fixed_range is None
    ]


@pytest.fixture
def calibrated(digits):
    x = digits[0][:128]
    qat = quantize(make_mlp(), calibration_data=x)
    return qat, x, _ranges(qat)


def test_empty_data_keeps_previous_ranges(calibrated):
    # Item 5: empty data raised after every range was reset to [0, 0].
    qat, _, before = calibrated
    assert all(high > low for low, high in before)
    with pytest.raises(ValueError, match="`calibration_data` is empty"):
        calibrate(qat, [])
    assert _ranges(qat) == before


def test_bad_second_batch_keeps_previous_ranges(calibrated):
    # Item 5: a bad second batch left first-batch-only ranges.
    qat, x, before = calibrated
    with pytest.raises(ValueError, match="`calibration_data` has the wrong shape"):
        calibrate(qat, [x[:64] * 3.0, np.zeros((4, 5, 5, 1), "float32")])
    assert _ranges(qat) == before


def test_nan_data_is_refused_naming_the_batch_and_count(calibrated):
    # Item 6: NaN data was accepted silently and the ranges became NaN.
    qat, x, before = calibrated
    bad = x[64:].copy()
    bad[3, 2, 2, 0] = np.nan
    bad[5, 0, 0, 0] = np.nan
    with pytest.raises(
        ValueError,
        match=r"`calibration_data` must contain only finite values\. Received: "
        r"2 NaN/inf value\(s\) \(2 NaN, 0 inf\) for input '.*' in batch 1",
    ):
        calibrate(qat, [x[:64], bad])
    assert _ranges(qat) == before


def test_inf_in_calibration_data_is_refused_at_quantize(digits):
    # Item 2: one `inf` gave a range of [0, inf]; the converter then crashed.
    x = digits[0][:64].copy()
    x[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"1 NaN/inf value\(s\) \(0 NaN, 1 inf\)"):
        quantize(make_mlp(), calibration_data=x)


def test_two_input_model_calibrates_from_a_list_or_a_dict():
    # Issue 11: a two-input model's calibration accepted only a dict.
    a = keras.Input((3,), name="a")
    b = keras.Input((3,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    rng = np.random.default_rng(0)
    xa, xb = rng.random((16, 3), "float32"), 2 * rng.random((16, 3), "float32")
    qat = quantize(model)
    calibrate(qat, {"a": xa, "b": xb})
    from_dict = _ranges(qat)
    calibrate(qat, [xa, xb])
    assert _ranges(qat) == from_dict
    with pytest.raises(ValueError, match=r"a list \(or tuple\) of 2 arrays in the order of `model.inputs` \['a', 'b'\]"):
        calibrate(qat, [xa])
