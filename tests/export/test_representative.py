"""The forms of representative / verification data export_tflite accepts."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfaccel.export.representative import normalize_data


@pytest.fixture
def x():
    return np.random.default_rng(0).random((10, 8, 8, 1)).astype("float32")


@pytest.mark.parametrize(
    "form",
    [
        "array",
        "dataset_xy",
        "dataset_x",
        "generator",
        "callable_lists",
        "samples",
        "float64",
    ],
)
def test_forms_give_the_same_samples(cnn, x, form):
    y = np.arange(10)
    data = {
        "array": x,
        "dataset_xy": tf.data.Dataset.from_tensor_slices((x, y)).batch(3),
        "dataset_x": tf.data.Dataset.from_tensor_slices(x).batch(4),
        "generator": (x[i : i + 2] for i in range(0, 10, 2)),
        "callable_lists": lambda: ([x[i : i + 1]] for i in range(10)),
        "samples": list(x),  # single samples without batch axis
        "float64": x.astype("float64"),
    }[form]
    (out,) = normalize_data(data, cnn, "representative_data")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=1e-6)


def test_max_samples_stops_early(cnn, x):
    def endless():
        while True:
            yield x

    (out,) = normalize_data(endless(), cnn, "verification_data", max_samples=25)
    assert out.shape == (25, 8, 8, 1)


def test_multi_input_dict_and_tuple():
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    model = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
    xa, xb = np.ones((4, 3)), np.zeros((4, 2))
    for data in ({"a": xa, "b": xb}, [xa, xb], [((xa, xb), np.zeros(4))]):
        out = normalize_data(data, model, "representative_data")
        assert [o.shape for o in out] == [(4, 3), (4, 2)]
    with pytest.raises(ValueError, match="keys do not name the model inputs"):
        normalize_data([{"a": xa, "c": xb}], model, "representative_data")
    with pytest.raises(ValueError, match="different batch sizes"):
        normalize_data([(xa, xb[:2])], model, "representative_data")


def test_not_iterable_is_a_type_error(cnn):
    with pytest.raises(
        TypeError, match="`representative_data` must be a NumPy array.*Received: object"
    ):
        normalize_data(object(), cnn, "representative_data")


def test_the_old_import_path_is_the_one_normalizer():
    import tfaccel.data

    assert normalize_data is tfaccel.data.normalize_data


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 5, 5, 1), "float32"),  # wrong shape
        np.full((4, 8, 8, 1), np.inf, "float32"),  # non-finite
        object(),  # not data
        [],  # empty
    ],
)
def test_calibration_and_export_raise_the_same_errors(cnn, bad):
    from tfaccel.quantization import calibrate, quantize

    with pytest.raises((TypeError, ValueError)) as exported:
        normalize_data(bad, cnn, "calibration_data")
    with pytest.raises(type(exported.value)) as calibrated:
        calibrate(quantize(cnn), bad)
    assert str(calibrated.value) == str(exported.value)


def test_batches_split_and_stop_at_max_samples(cnn, x):
    from tfaccel.data import iter_batches

    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(10))).batch(4)
    sizes = [len(b[0]) for b in iter_batches(dataset, cnn, "d", batch_size=3)]
    assert sizes == [3, 1, 3, 1, 2]
    sizes = [len(b[0]) for b in iter_batches(x, cnn, "d", 4, max_samples=7)]
    assert sizes == [4, 3]


def _two_inputs():
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    return keras.Model([a, b], keras.layers.Concatenate()([a, b]))


def test_multi_input_lists_in_model_input_order_everywhere():
    model = _two_inputs()
    xa = np.arange(12, dtype="float32").reshape(4, 3)
    xb = -np.arange(8, dtype="float32").reshape(4, 2)
    y = np.zeros(4)
    forms = [
        [xa, xb],
        (xa, xb),
        ([xa, xb], y),  # `(x, y)` as given to fit, x a list
        ({"a": xa, "b": xb}, y),
        tf.data.Dataset.from_tensor_slices(((xa, xb), y)).batch(3),
        lambda: ([xa[i : i + 1], xb[i : i + 1]] for i in range(4)),
    ]
    for data in forms:
        out = normalize_data(data, model, "representative_data")
        np.testing.assert_array_equal(out[0], xa)
        np.testing.assert_array_equal(out[1], xb)


@pytest.mark.parametrize(
    "data, received",
    [
        (lambda xa, xb: [xa], "Received: a single ndarray"),
        (lambda xa, xb: [[xa, xb, xa]], "a list of 3 items"),
        (lambda xa, xb: {"a": xa, "c": xb}, r"Received keys: \['a', 'c'\]"),
    ],
)
def test_multi_input_errors_list_the_accepted_forms(data, received):
    xa, xb = np.ones((4, 3)), np.zeros((4, 2))
    with pytest.raises(ValueError) as info:
        normalize_data(data(xa, xb), _two_inputs(), "calibration_data")
    message = str(info.value)
    assert "`calibration_data`" in message
    assert "a list (or tuple) of 2 arrays in the order of `model.inputs` " \
        "['a', 'b'], or a dict keyed by those names" in message
    assert re.search(received, message)
