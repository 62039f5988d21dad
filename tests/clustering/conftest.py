"""Small clustering fixtures: a tiny digits CNN trained for a few steps."""

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn

BATCH = 32


def compile_model(model, lr=1e-3, **kwargs):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


def small_cnn():
    """Conv(4)-ReLU-Flatten-Dense(10): few layers, so `fit` traces fast."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="dense")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


@pytest.fixture
def cnn_small():
    return small_cnn()


@pytest.fixture
def digits_cnn():
    """The digits CNN (Conv-BN-ReLU x2): BatchNorm folding in QAT."""
    return make_cnn()


def kernels(model):
    """Conv and Dense kernels of a plain model, by layer name."""
    return {
        layer.name: layer.kernel.numpy()
        for layer in model.layers
        if hasattr(layer, "kernel") and layer.kernel is not None
    }


def prune_in_place(model, fraction=0.5):
    """Zero the smallest `fraction` of every kernel (a stand-in pruned model)."""
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = layer.kernel.numpy()
            threshold = np.quantile(np.abs(kernel), fraction)
            layer.kernel.assign(np.where(np.abs(kernel) <= threshold, 0.0, kernel))
    return model
