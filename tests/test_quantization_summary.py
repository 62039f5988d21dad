"""QuantizationSummary reports QAT activation ranges; training never needs it."""

import glob

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn
from tfaccel._warnings import TfaccelWarning
from tfaccel.callbacks.quantization_summary import QuantizationSummary
from tfaccel.quantization import quantize


def _compiled_qat(x):
    qat = quantize(make_cnn(), calibration_data=x[:64])
    qat.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return qat


def _range_variables(model):
    return {v.path: v for v in model.variables if v.path.endswith(("range_min", "range_max"))}


def test_ranges_in_logs_history_and_tensorboard(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    qat = _compiled_qat(x)
    callback = QuantizationSummary(log_dir=str(tmp_path / "tb"))
    history = qat.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[callback])

    variables = _range_variables(qat)
    assert len(variables) >= 4  # input, two conv blocks, dense output at least
    assert len(callback.ranges) * 2 == len(variables)
    for prefix, (low, high) in callback.ranges.items():
        # The logged values are the variables' values after the last epoch.
        assert low == pytest.approx(float(variables[f"{prefix}/range_min"].numpy()))
        assert high == pytest.approx(float(variables[f"{prefix}/range_max"].numpy()))
        assert low <= 0.0 <= high and high > low  # calibrated and trained
        for end in ("min", "max"):
            series = history.history[f"qrange/{prefix}/{end}"]
            assert len(series) == 2
        assert history.history[f"qrange/{prefix}/max"][-1] == pytest.approx(high)
    assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))

    # TensorBoard scalars: min, max, scale for every quantizer, per epoch.
    scalars = _read_scalars(tmp_path / "tb")
    for prefix, (low, high) in callback.ranges.items():
        tag = f"quantization/{prefix}"
        assert [step for step, _ in scalars[f"{tag}/max"]] == [0, 1]
        assert scalars[f"{tag}/min"][-1][1] == pytest.approx(low)
        assert scalars[f"{tag}/max"][-1][1] == pytest.approx(high)
        assert scalars[f"{tag}/scale"][-1][1] == pytest.approx((high - low) / 255)


def _read_scalars(log_dir):
    """tag -> [(step, value)] from TF event files (no tensorboard needed)."""
    import tensorflow as tf

    scalars = {}
    for path in sorted(glob.glob(str(log_dir / "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def test_training_identical_without_the_callback(digits):
    x, y = digits[0][:128], digits[1][:128]
    results = []
    for callbacks in ([], [QuantizationSummary(add_to_logs=False)]):
        keras.utils.set_random_seed(1)
        qat = _compiled_qat(x)
        history = qat.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False,
                          callbacks=callbacks)
        assert not any(k.startswith("qrange/") for k in history.history)
        results.append([v.numpy() for v in _range_variables(qat).values()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_warns_on_a_model_without_quantizers(digits):
    x, y = digits[0][:64], digits[1][:64]
    model = make_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(TfaccelWarning, match="found no quantization ranges.*quantize"):
        history = model.fit(x, y, epochs=1, verbose=0, callbacks=[QuantizationSummary()])
    assert not any(k.startswith("qrange/") for k in history.history)
