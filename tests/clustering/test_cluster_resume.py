"""Preemption: `BackupAndRestore` brings a clustered model's state back exactly."""

import keras
import numpy as np
import pytest

from tests.clustering.conftest import BATCH, compile_model, small_cnn
from tfaccel.clustering import (
    ClusterWeights,
    cluster,
    distinct_values,
    strip_clustering,
)

SAVE_FREQ = 3
STOP_AT = 6  # batches; a multiple of SAVE_FREQ, so a backup was just written


class Interrupted(Exception):
    pass


def _state(model):
    """Every clustering variable, the latent kernels and the optimizer's step."""
    state = {"iterations": int(model.optimizer.iterations.numpy())}
    for layer in model.layers:
        if isinstance(layer, ClusterWeights):
            for variable in layer.weights:
                state[variable.path] = variable.numpy().copy()
    return state


class _Probe(keras.callbacks.Callback):
    """Records the state at STOP_AT (then dies) or before the resumed first batch."""

    def __init__(self, stop):
        super().__init__()
        self.stop, self.batches, self.seen = stop, 0, None

    def on_train_batch_begin(self, batch, logs=None):
        if not self.stop and self.seen is None:
            self.seen = _state(self.model)  # after BackupAndRestore restored it

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.stop and self.batches == STOP_AT:
            self.seen = _state(self.model)
            raise Interrupted


def _clustered():
    keras.utils.set_random_seed(0)
    model = cluster(small_cnn(), 6, update_frequency=2)
    compile_model(model)
    return model


def _fit(model, digits, backup_dir, probe):
    x, y, _, _ = digits
    model.fit(x[: 12 * BATCH], y[: 12 * BATCH], batch_size=BATCH, epochs=2,
              shuffle=False, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(backup_dir,
                                                         save_freq=SAVE_FREQ),
                         probe])


def test_backup_and_restore_brings_back_centroids_assignments_and_step(
    digits, tmp_path
):
    first = _Probe(stop=True)
    with pytest.raises(Interrupted):
        _fit(_clustered(), digits, tmp_path / "backup", first)
    killed = first.seen
    step_keys = [k for k in killed if k.endswith("cluster_step")]
    assert step_keys and all(int(killed[k]) == STOP_AT for k in step_keys)

    # A new process would build a fresh model: its state starts elsewhere.
    fresh = _clustered()
    resumed_probe = _Probe(stop=False)
    _fit(fresh, digits, tmp_path / "backup", resumed_probe)
    resumed = resumed_probe.seen
    assert resumed.keys() == killed.keys()
    for key, value in killed.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)

    # Training went on from there and the stripped model keeps N values.
    assert all(int(fresh.get_layer(name).cluster_step.numpy()) > STOP_AT
               for name in ("conv", "dense"))
    counts = distinct_values(strip_clustering(fresh))
    assert all(1 < n <= 6 for n in counts.values()), counts
