"""Small real models shared by the tests (import as `tests.tiny_models`)."""

import keras

# The demo's own data and model: one definition of the digits CNN.
from tfaccel.demo import digits_cnn as make_cnn  # noqa: F401
from tfaccel.demo import load_digits as load_digits_split  # noqa: F401


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
