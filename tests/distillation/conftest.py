"""Distillation fixtures: one trained teacher per session."""

import keras
import pytest

from tests.tiny_models import make_cnn

TEACHER_FILTERS = (16, 32)


@pytest.fixture(scope="session")
def teacher_weights(digits):
    """Weights of a digits CNN teacher (~96% test accuracy)."""
    x, y, _, _ = digits
    keras.utils.set_random_seed(1)
    teacher = make_cnn(TEACHER_FILTERS)
    teacher.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    teacher.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return teacher.get_weights()
