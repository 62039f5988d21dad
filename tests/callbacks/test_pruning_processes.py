"""In subprocesses: kill -9 and resume with BackupAndRestore; two workers."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.distribute import _harness

pytestmark = pytest.mark.slow


def _spawn(out, kill, mode="resume", log="run.log", **env):
    log = open(out / log, "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "tests.callbacks._worker", mode, str(out), str(kill)],
        cwd=_harness.ROOT, env=_harness.env(**env), stdout=log,
        stderr=subprocess.STDOUT,
    )


def _finish(proc, out, timeout=300):
    _harness.finish(proc, out, timeout)


def _kill_at_marker(proc, out, timeout=300):
    _harness.kill_at_marker(proc, out, "marker.npz", timeout)


def _load(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def test_kill_and_resume_ends_at_the_same_masks(tmp_path):
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    plain.mkdir()
    killed.mkdir()
    uninterrupted = _spawn(plain, kill=0)
    _finish(uninterrupted, plain)  # one training process at a time (2 cores)
    _kill_at_marker(_spawn(killed, kill=1), killed)
    assert (killed / "backup").exists()
    _finish(_spawn(killed, kill=1), killed)

    at_kill = _load(killed / "marker.npz")
    expected, resumed = _load(plain / "final.npz"), _load(killed / "final.npz")
    assert expected.keys() == resumed.keys() == at_kill.keys()
    for key, zeros in expected.items():
        # Pruning went on after the restart (0.8 is reached at step 50 > 22).
        assert 0 < at_kill[key].sum() < zeros.sum() == round(0.8 * zeros.size)
        assert not (at_kill[key] & ~resumed[key]).any(), key
        np.testing.assert_array_equal(resumed[key], zeros, err_msg=key)
    weights, again = _load(plain / "weights.npz"), _load(killed / "weights.npz")
    for key in weights:
        np.testing.assert_array_equal(weights[key], again[key], err_msg=key)


def test_two_workers_hold_identical_weights_and_masks(tmp_path):
    ports = _harness.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = [
        _spawn(
            tmp_path, index, mode="multiworker", log=f"worker{index}.log",
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        )
        for index in range(2)
    ]
    for proc in procs:
        _finish(proc, tmp_path)
    first, second = (_load(tmp_path / f"weights{i}.npz") for i in range(2))
    kernels = [key for key in first if key.endswith("kernel")]
    assert len(kernels) == 3
    for key in kernels:
        zeros = first[key] == 0
        assert zeros.sum() == round(0.8 * zeros.size), key
    # BatchNormalization's moving statistics come from each worker's data.
    synced = [key for key in first if ".moving_" not in key]
    assert len(synced) == 8
    for key in synced:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
