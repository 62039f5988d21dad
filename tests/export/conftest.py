"""Fixtures for the export tests: one digits CNN trained once per session."""

import keras
import pytest

from tests.tiny_models import make_cnn


def _fit(model, digits, epochs):
    x_train, y_train, _, _ = digits
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def fit():
    """`fit(model, digits, epochs)`: compile with logits loss and train."""
    return _fit


@pytest.fixture(scope="session")
def trained_cnn(digits):
    """The digits CNN trained 3 epochs on real digits (about 85% accuracy)."""
    keras.utils.set_random_seed(0)
    return _fit(make_cnn(), digits, epochs=3)


@pytest.fixture(autouse=True)
def _seed():
    """The root `_seed`, minus its garbage collection pass.

    `clear_session()` runs `gc.collect()`, about 0.7 s per test on this
    machine: a third of this directory's run time. Export tests build small
    models and hold no memory worth collecting between tests.
    """
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session(free_memory=False)
