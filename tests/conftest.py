"""Shared fixtures.

Two logical CPUs are configured before TensorFlow runs any op so that
`tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])` can exercise two
replicas without a GPU (see shared STACK.md). Single-device code keeps
running on /cpu:0.
"""

import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialized by another plugin
    pass

import keras  # noqa: E402

from tests.tiny_models import load_digits_split, make_cnn  # noqa: E402

# TensorFlow and Keras import ~370,000 objects that live as long as the
# process. Frozen, they are left out of the full collection that
# `keras.backend.clear_session()` runs after every test (0.23 s of each
# teardown in a fresh process; the objects tests leave are still walked).
gc.freeze()


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def digits():
    """Real 8x8 digits from scikit-learn: (x_train, y_train, x_test, y_test)."""
    return load_digits_split()


@pytest.fixture
def cnn():
    return make_cnn()


@pytest.fixture(scope="session")
def two_cpus():
    """A MirroredStrategy over two logical CPUs."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
