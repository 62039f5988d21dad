"""Recurrent text classifiers on real data (import as `tests.recurrent_models`).

There is no text data set offline: each digit is read as a sentence of 8
rows (timesteps), each row 8 tokens (its pixel intensities 0..16). An
Embedding turns tokens into vectors; a recurrent layer reads the rows.
"""

import keras
import numpy as np

from tests.tiny_models import load_digits_split


def digit_tokens():
    """(x_train, y_train, x_test, y_test): int32 tokens of shape (8, 8)."""
    x_train, y_train, x_test, y_test = load_digits_split()
    tokens = [np.rint(x[..., 0] * 16).astype("int32") for x in (x_train, x_test)]
    return tokens[0], y_train, tokens[1], y_test


def text_classifier(recurrent=None, units=16, dim=4, name="text_lstm"):
    """Embedding(17, dim) -> rows of 8*dim -> `recurrent` -> Dense(10)."""
    inputs = keras.Input((8, 8), dtype="int32", name="tokens")
    x = keras.layers.Embedding(17, dim, name="embedding")(inputs)
    x = keras.layers.Reshape((8, 8 * dim), name="rows")(x)
    layer = recurrent if recurrent is not None else keras.layers.LSTM(units, name="lstm")
    x = layer(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def bilstm_classifier(units=8):
    """The Embedding + Bidirectional(LSTM) classifier of keras.io."""
    return text_classifier(
        keras.layers.Bidirectional(keras.layers.LSTM(units), name="bilstm"),
        name="text_bilstm",
    )


def train(model, data, epochs=3, **fit):
    x, y = data[0], data[1]
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, **fit)
    return model
