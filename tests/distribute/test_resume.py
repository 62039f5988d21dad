"""Preemption: SIGKILL mid-epoch, restart, BackupAndRestore resumes tfaccel state."""

import json

import pytest

from tests.distribute import _harness, _helpers

pytestmark = pytest.mark.slow

KILL_AFTER = 10  # batches; a multiple of the workers' save_freq=5


def _run_until(out, marker, timeout=180):
    """Start a resume worker; SIGKILL it once `marker` appears."""
    proc = _harness.spawn(["resume", str(out), str(KILL_AFTER)], out / "run.log")
    _harness.kill_at_marker(proc, out, marker, timeout)


def _run_to_end(out, timeout=240):
    proc = _harness.spawn(["resume", str(out), str(KILL_AFTER)], out / "run.log")
    _harness.finish(proc, out, timeout)


def _load(out, name):
    return json.loads((out / name).read_text())


@pytest.mark.skipif(not _helpers.can_prune(), reason="needs tfaccel.pruning")
def test_kill_and_resume_restores_pruning_and_qat_state(tmp_path):
    _run_until(tmp_path, "prune_marker.json")
    killed = _load(tmp_path, "prune_marker.json")
    assert killed["iterations"] == KILL_AFTER
    assert killed["pruning_steps"] == [KILL_AFTER] * 3

    if _helpers.can_quantize():
        # Second run: resumes pruning, finishes it, then is killed in QAT.
        _run_until(tmp_path, "qat_marker.json")
    else:
        _run_to_end(tmp_path)
    resumed = _load(tmp_path, "prune_resumed.json")
    # Restored from the backup taken at the kill, not reset to 0.
    assert resumed["iterations"] == killed["iterations"]
    assert resumed["pruning_steps"] == killed["pruning_steps"]
    assert resumed["masks"] == killed["masks"]
    assert any(v > 0 for v in resumed["masks"].values())
    final = _load(tmp_path, "prune_final.json")
    # Keras replays the interrupted epoch from batch 0: steps >= planned.
    planned = _helpers.steps(1400, _helpers.BATCH, 2)
    assert all(step >= planned for step in final["pruning_steps"])
    assert final["sparsity"] == pytest.approx(
        dict.fromkeys(final["sparsity"], _helpers.TARGET), abs=1e-3
    )
    if not _helpers.can_quantize():
        return

    killed_qat = _load(tmp_path, "qat_marker.json")
    _run_to_end(tmp_path)
    resumed_qat = _load(tmp_path, "qat_resumed.json")
    assert resumed_qat["iterations"] == killed_qat["iterations"] == KILL_AFTER
    # EMA ranges are restored exactly (not recalibrated, not zero).
    assert resumed_qat["ranges"] == killed_qat["ranges"]
    assert any(v != 0.0 for v in resumed_qat["ranges"].values())
    final_qat = _load(tmp_path, "qat_final.json")
    assert all(v == pytest.approx(_helpers.TARGET, abs=1e-3) for v in final_qat["masks"].values())
    if _helpers.can_export():
        report = _load(tmp_path, "export.json")
        assert report["quantization"] == "int8"
        assert report["int8_coverage"] == 1.0
        assert report["sparsity"] >= 0.4  # the pruned zeros survive in the file
