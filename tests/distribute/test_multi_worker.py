"""Two-process MultiWorkerMirroredStrategy on 127.0.0.1 (subprocesses)."""

import numpy as np
import pytest

from tests.distribute import _harness, _helpers

pytestmark = pytest.mark.slow


def _errors(out):
    return [(out / f"worker{i}.err").read_text() for i in range(2)]


def test_upstream_bugs_still_reproduce(tmp_path):
    """Fails the day Keras fixes a bug: then delete that workaround.

    `tfaccel/distribute/multi_worker.py` patches two spots of Keras 3.15.1;
    this runs the same 2-worker `fit` without them and checks each bug is
    still there.
    """
    bare = tmp_path / "bare"
    bare.mkdir()
    codes = _harness.run_multiworker(bare, "none")
    assert codes == [3, 3], _harness.logs(bare)
    for err in _errors(bare):
        assert "_maybe_symbolic_build" in err and "PerReplica" in err, (
            "Keras no longer fails in _maybe_symbolic_build (keras#20585): "
            "remove workaround (1) from tfaccel/distribute/multi_worker.py\n" + err
        )

    half = tmp_path / "build_only"
    half.mkdir()
    codes = _harness.run_multiworker(half, "build_only")
    assert codes == [3, 3], _harness.logs(half)
    for err in _errors(half):
        assert "Invalid reduction dimension 0" in err, (
            "Keras reduces scalar multi-worker outputs now: remove workaround "
            "(2) from tfaccel/distribute/multi_worker.py\n" + err
        )


def _assert_identical(out, phase):
    w0 = np.load(out / f"{phase}0.npz")
    w1 = np.load(out / f"{phase}1.npz")
    assert w0.files == w1.files
    compared = 0
    for key in w0.files:
        if key.endswith(("moving_mean", "moving_variance")):
            # Keras BatchNormalization(synchronized=False) keeps per-worker
            # moving statistics by design (aggregation "none").
            continue
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=f"{phase} {key}")
        compared += 1
    assert compared >= 8
    return w0


def test_two_workers_train_identical_model(tmp_path):
    """Both workers end with the same weights, masks, steps (and QAT ranges)."""
    codes = _harness.run_multiworker(tmp_path, "auto")
    assert codes == [0, 0], _harness.logs(tmp_path)
    pruned = _assert_identical(tmp_path, "pruned")
    if not _helpers.can_prune():
        pytest.skip("tfaccel.pruning not available: trained a plain model")
    masks = [k for k in pruned.files if k.endswith("_mask")]
    assert len(masks) == 3, pruned.files
    for key in masks:
        # The schedule reached TARGET exactly (round(TARGET * size) zeros).
        assert (pruned[key] == 0).sum() == round(_helpers.TARGET * pruned[key].size)
    steps = {int(pruned[k]) for k in pruned.files if k.endswith("pruning_step")}
    # One step per global batch, counted once (not once per worker).
    assert steps == {_helpers.steps(1400, _helpers.BATCH, 2)}
    if _helpers.can_quantize():
        qat = _assert_identical(tmp_path, "qat")
        ranges = [k for k in qat.files if k.endswith("range_max")]
        assert ranges and all(float(qat[k]) != 0.0 for k in ranges)
