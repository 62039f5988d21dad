"""auto_strategy and the Keras workaround switch (in process)."""

import json
import logging
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfaccel import distribute
from tfaccel.distribute import multi_worker, strategy


@pytest.fixture(autouse=True)
def _unpatched():
    multi_worker.remove_keras_workarounds()
    yield
    multi_worker.remove_keras_workarounds()


def test_public_api():
    assert sorted(distribute.__all__) == [
        "apply_keras_workarounds",
        "auto_strategy",
        "keras_workarounds_applied",
        "remove_keras_workarounds",
    ]


def test_cpu_fallback_is_default_strategy(caplog, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with caplog.at_level(logging.INFO, logger="tfaccel.distribute"):
        chosen = distribute.auto_strategy()
    assert chosen is tf.distribute.get_strategy()
    assert chosen.num_replicas_in_sync == 1
    assert "default strategy (CPU)" in caplog.text
    # Building the CPU strategy patches nothing.
    assert not distribute.keras_workarounds_applied()


def _no_tpu(tpu=None):
    raise ValueError("Please provide a TPU Name to connect to.")


def test_missing_tpu_falls_back_but_a_named_tpu_raises(monkeypatch, caplog):
    # What TPUClusterResolver raises off-TPU; a real connect attempt to a
    # bogus address hangs, so the resolver is replaced.
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", _no_tpu)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with caplog.at_level(logging.DEBUG, logger="tfaccel.distribute"):
        assert distribute.auto_strategy() is tf.distribute.get_strategy()
    assert "No TPU" in caplog.text
    with pytest.raises(ValueError, match="TPU Name"):
        distribute.auto_strategy(tpu="my-tpu")


@pytest.mark.parametrize(
    "config, expected",
    [
        (None, False),
        ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}, False),
        ({"cluster": {"worker": ["a:1", "b:2"]}}, True),
        ({"cluster": {"chief": ["a:1"], "worker": ["b:2"]}}, True),
        ({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}}, False),
    ],
)
def test_multi_worker_cluster_detection(monkeypatch, config, expected):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert strategy._multi_worker_cluster() is expected


def test_workarounds_are_explicit_idempotent_and_removable():
    from keras.src.backend.tensorflow import trainer

    build = trainer.TensorFlowTrainer.__dict__["_maybe_symbolic_build"]
    reduce = trainer.reduce_per_replica
    import tfaccel  # noqa: F401  (importing never patches)

    assert trainer.reduce_per_replica is reduce
    first = distribute.apply_keras_workarounds()
    assert first == ["maybe_symbolic_build", "reduce_per_replica"]
    assert trainer.reduce_per_replica is not reduce
    patched = trainer.reduce_per_replica
    assert distribute.apply_keras_workarounds() == first
    assert trainer.reduce_per_replica is patched  # not patched twice
    distribute.remove_keras_workarounds()
    assert trainer.reduce_per_replica is reduce
    assert trainer.TensorFlowTrainer.__dict__["_maybe_symbolic_build"] is build
    assert not distribute.keras_workarounds_applied()


def test_version_guard(monkeypatch):
    installed = multi_worker._keras_version()
    assert multi_worker.KNOWN_BROKEN_KERAS[0] <= installed, keras.version()
    monkeypatch.setattr(
        multi_worker, "KNOWN_BROKEN_KERAS", ((3, 0, 0), (3, 0, 1))
    )
    if installed > (3, 0, 1):
        assert distribute.apply_keras_workarounds() == []
        assert not distribute.keras_workarounds_applied()
    assert distribute.apply_keras_workarounds(force=True)
    assert distribute.keras_workarounds_applied()


def _train(model_fn, strategy_obj, data):
    x, y = data
    keras.utils.set_random_seed(1)
    with strategy_obj.scope():
        model = model_fn()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    history = model.fit(x, y, batch_size=50, epochs=1, shuffle=False, verbose=0)
    return [keras.ops.convert_to_numpy(v) for v in model.weights], history.history["loss"]


def test_workarounds_do_not_change_single_process_training(digits, two_cpus):
    """The patches are no-ops outside multi-worker mode (default, Mirrored)."""
    from tests.tiny_models import make_mlp

    data = (digits[0][:400], digits[1][:400])
    for strat in (tf.distribute.get_strategy(), two_cpus):
        ref_w, ref_loss = _train(make_mlp, strat, data)
        distribute.apply_keras_workarounds(force=True)
        got_w, got_loss = _train(make_mlp, strat, data)
        distribute.remove_keras_workarounds()
        assert got_loss == ref_loss
        for a, b in zip(ref_w, got_w):
            np.testing.assert_array_equal(a, b)


def _fake_tpu_vm(monkeypatch):
    """A TPU VM: only `TPUClusterResolver(tpu="local")` finds the TPU."""
    calls = []

    def resolver(tpu=None):
        calls.append(tpu)
        if tpu != "local":
            raise ValueError("Please provide a TPU Name to connect to.")
        return "local-resolver"

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: None)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", lambda r: None)
    monkeypatch.setattr(
        tf.distribute,
        "TPUStrategy",
        lambda r: types.SimpleNamespace(resolver=r, num_replicas_in_sync=8),
    )
    return calls


def test_tpu_vm_is_found_with_local(monkeypatch):
    # Colab's TPU runtime is a TPU VM: `TPUClusterResolver()` raises there
    # (googlecolab/colabtools#4637) and only `tpu="local"` connects.
    calls = _fake_tpu_vm(monkeypatch)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    chosen = distribute.auto_strategy()
    assert calls == [None, "local"]
    assert chosen.resolver == "local-resolver"


def test_multi_worker_cluster_does_not_probe_a_local_tpu(monkeypatch):
    # The "local" probe initializes the eager context, after which a
    # MultiWorkerMirroredStrategy cannot configure its collectives.
    calls = _fake_tpu_vm(monkeypatch)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}}))
    multi = types.SimpleNamespace(num_replicas_in_sync=2)
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: multi)
    monkeypatch.setattr(strategy, "apply_keras_workarounds", lambda: [])
    assert distribute.auto_strategy() is multi
    assert calls == [None]


@pytest.mark.parametrize(
    "version, expected",
    [("3.15.1", (3, 15, 1)), ("3.15.1rc0", (3, 15, 1)), ("3.16.0.dev2025", (3, 16, 0))],
)
def test_keras_version_parsing(monkeypatch, version, expected):
    monkeypatch.setattr(multi_worker.keras, "version", lambda: version)
    assert multi_worker._keras_version() == expected
