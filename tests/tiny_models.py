"""Small real models shared by the tests (import as `tests.tiny_models`)."""

import keras
import numpy as np


def load_digits_split(split=1400, seed=0):
    """scikit-learn's real 8x8 digits as NHWC float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:split], y[:split], x[split:], y[split:]


def make_cnn(filters=(8, 16), units=10):
    """The digits CNN: Conv-BN-ReLU x2, Flatten, Dense (logits)."""
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for f in filters:
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(units)(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def make_mlp(units=(32,), classes=10):
    """A Sequential MLP on flattened digits."""
    layers = [keras.Input((8, 8, 1)), keras.layers.Flatten()]
    layers += [keras.layers.Dense(u, activation="relu") for u in units]
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers, name="digits_mlp")


def make_transformer_block(seq=8, dim=16, heads=2, classes=10):
    """One pre-norm transformer block over the 8 rows of a digit."""
    inputs = keras.Input((seq, 8))
    x = keras.layers.Dense(dim)(inputs)
    h = keras.layers.LayerNormalization()(x)
    h = keras.layers.MultiHeadAttention(heads, dim // heads)(h, h)
    x = keras.layers.Add()([x, h])
    h = keras.layers.LayerNormalization()(x)
    h = keras.layers.Dense(dim * 2, activation="relu")(h)
    h = keras.layers.Dense(dim)(h)
    x = keras.layers.Add()([x, h])
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs, name="digits_transformer")
