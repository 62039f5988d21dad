"""MirroredStrategy over two logical CPUs: per-replica tfaccel state stays in sync."""

import keras
import numpy as np
import pytest

from tests.distribute import _helpers

pytestmark = pytest.mark.skipif(not _helpers.can_prune(), reason="needs tfaccel.pruning")


def _replica_values(variable):
    """The per-device copies of a Keras variable created under a strategy."""
    values = getattr(variable.value, "values", None)
    assert values is not None and len(values) == 2, (variable.path, variable.value)
    return [keras.ops.convert_to_numpy(v) for v in values]


def _assert_replicas_identical(model):
    checked = 0
    for variable in model.variables:
        if variable.path.endswith(("moving_mean", "moving_variance")):
            continue  # Keras BN keeps per-replica moving stats (not synchronized)
        first, second = _replica_values(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
        checked += 1
    return checked


def test_prune_then_qat_per_replica_state_identical(digits, two_cpus):
    x, y = digits[0][:640], digits[1][:640]
    total = _helpers.steps(len(x), _helpers.BATCH, 1)
    with two_cpus.scope():
        model = _helpers.pruned_cnn(total)
        _helpers.compile_model(model)
    model.fit(x, y, batch_size=_helpers.BATCH, epochs=1, shuffle=False, verbose=0)
    assert _assert_replicas_identical(model) >= 9
    # One step per global batch on both replicas, target reached exactly.
    for step in _helpers.pruning_steps(model):
        assert step == total
    masks = [v for v in model.variables if v.name.endswith("_mask")]
    for mask in masks:
        for copy in _replica_values(mask):
            assert (copy == 0).sum() == round(_helpers.TARGET * copy.size)

    if not _helpers.can_quantize():
        return
    with two_cpus.scope():
        qat = _helpers.quantized(model, x)
        _helpers.compile_model(qat)
    qat.fit(x, y, batch_size=_helpers.BATCH, epochs=1, shuffle=False, verbose=0)
    assert _assert_replicas_identical(qat) >= 12
    ranges = _helpers.ranges(qat)
    assert ranges and any(v != 0.0 for v in ranges.values())
