"""QAT of layers beyond Conv/Dense: each runs in the int8 file as TFLite does.

Each test builds a tiny model with the layer, quantizes and calibrates it on
real digits, converts it with the bare converter (every scale from the QAT
model) and checks the int8 ops and that the file agrees with the Keras model.
"""

import keras
import numpy as np
import pytest

from tests.quantization import tflite_utils as tfl
from tfaccel.quantization import quantize

L = keras.layers


def _images(digits, n=64, channels=1, size=8):
    x = digits[0][:n]
    if size != 8:
        x = np.asarray(keras.ops.image.resize(x, (size, size)))
    return np.repeat(x, channels, axis=-1).astype("float32")


def _model(shape, *layers):
    inputs = keras.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def _ops(it):
    return [name for name, _, _ in tfl.ops_with_tensors(it)]


def _int8_parity(qat, x, tol_steps=1.5):
    """Convert `qat`; check it is integer and agrees with Keras on `x`."""
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    assert tfl.float_ops(it) == []
    want = np.asarray(qat.predict(x, verbose=0))
    got = tfl.predict_int8(it, x)
    step = it.get_output_details()[0]["quantization"][0]
    assert np.abs(got - want).max() <= tol_steps * step
    return it


# -- softmax / sigmoid heads -------------------------------------------------


def _wide_softmax_head(digits, classes=1000):
    inputs = keras.Input((8, 8, 1))
    x = L.Flatten()(inputs)
    x = L.Dense(32, activation="relu")(x)
    outputs = L.Dense(classes, activation="softmax")(x)
    qat = quantize(keras.Model(inputs, outputs), calibration_data=digits[0][:256])
    return qat


@pytest.mark.parametrize(
    "loss", ["categorical_crossentropy", "sparse_categorical_crossentropy"]
)
def test_1000_class_softmax_head_trains_with_finite_falling_loss(digits, loss):
    x, y = digits[0][:512], digits[1][:512]
    qat = _wide_softmax_head(digits)
    # Every probability of a fresh 1000-class head is ~1e-3: int8 rounds all
    # of them to 0 (steps of 1/256), the forward value the int8 file has.
    p = np.asarray(qat(x[:8]))
    assert np.all(p == 0.0)
    labels = keras.utils.to_categorical(y, 1000) if loss.startswith("cat") else y
    qat.compile(keras.optimizers.Adam(3e-3), loss)
    history = qat.fit(x, labels, epochs=3, batch_size=64, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert history[-1] < history[0] - 0.5


def test_softmax_and_sigmoid_outputs_are_tflite_int8_ops(digits):
    x, y = digits[0][:512], digits[1][:512]
    inputs = keras.Input((8, 8, 1))
    h = L.Dense(32, activation="relu")(L.Flatten()(inputs))
    gate = L.Dense(32, activation="sigmoid")(h)
    h = L.Multiply()([h, gate])
    outputs = L.Softmax()(L.Dense(10)(h))
    qat = quantize(keras.Model(inputs, outputs), calibration_data=x[:256])
    qat.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=3, batch_size=64, verbose=0)
    it = _int8_parity(qat, x[:128])
    fixed = {}
    for name, _, outs in tfl.ops_with_tensors(it):
        if name in ("SOFTMAX", "LOGISTIC"):
            fixed[name] = outs[0]["quantization"]
    # TFLite's int8 SOFTMAX and LOGISTIC: scale 1/256, zero point -128.
    assert fixed == {"SOFTMAX": (1 / 256, -128), "LOGISTIC": (1 / 256, -128)}
    want = np.asarray(qat.predict(x[:128], verbose=0)).argmax(-1)
    got = tfl.predict_int8(it, x[:128]).argmax(-1)
    assert np.mean(got == want) >= 0.99


def test_softmax_layer_with_a_mask_matches_keras(digits):
    inputs = keras.Input((10,))
    mask = keras.Input((10,), dtype="bool")
    outputs = L.Softmax()(inputs, mask=mask)
    model = keras.Model([inputs, mask], outputs)
    x = np.random.default_rng(0).normal(size=(4, 10)).astype("float32")
    m = np.arange(10)[None, :] < np.array([[3], [5], [10], [1]])
    qat = quantize(model, calibration_data=[x, m])
    want = np.asarray(model([x, m]))
    got = np.asarray(qat([x, m]))
    # Within the input's and the output's rounding.
    assert np.abs(got - want).max() <= 2 / 256
    assert np.all(got[~m] == 0.0)
