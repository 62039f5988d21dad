"""Fixtures for the quantization tests: a float digits CNN trained once."""

import keras
import numpy as np
import pytest

from tests.tiny_models import load_digits_split, make_cnn


def compile_classifier(model, lr=3e-3):
    model.compile(
        keras.optimizers.Adam(lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="session")
def trained_cnn_weights():
    """Weights of the digits CNN after a few float epochs on real digits."""
    keras.utils.set_random_seed(0)
    x_train, y_train, _, _ = load_digits_split()
    model = compile_classifier(make_cnn())
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    return [np.array(w) for w in model.get_weights()]


@pytest.fixture
def trained_cnn(trained_cnn_weights):
    model = make_cnn()
    model.set_weights(trained_cnn_weights)
    return compile_classifier(model)
