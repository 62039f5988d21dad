"""One-fit prune + QAT under MirroredStrategy on two logical CPUs."""

import numpy as np
import pytest

import tfaccel
from tests.distribute import _helpers
from tests.distribute.test_mirrored import _replica_values
from tfaccel.pruning import pruning_wrappers
from tfaccel.quantization.pruned import PrunedQuantizeWrapper
from tfaccel.schedules import PolynomialDecay


def test_one_fit_prune_qat_replicas_identical(digits, two_cpus):
    x, y = digits[0][:640], digits[1][:640]
    total = _helpers.steps(len(x), _helpers.BATCH, 2)  # 20 global steps
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=14, frequency=2)
    with two_cpus.scope():
        qat = tfaccel.quantize(
            tfaccel.prune(_helpers.make_cnn(), schedule), calibration_data=x[:64]
        )
        _helpers.compile_model(qat)
    qat.fit(x, y, batch_size=_helpers.BATCH, epochs=2, shuffle=False, verbose=0)

    wrappers = pruning_wrappers(qat)
    assert [type(w) for w in wrappers] == [PrunedQuantizeWrapper] * 3
    checked = 0
    for variable in qat.variables:
        # Every variable, the BN moving statistics included (QAT all-reduces
        # the batch moments), is the same on both replicas.
        first, second = _replica_values(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
        checked += 1
    assert checked >= 20
    for w in wrappers:
        # One step per global batch on both replicas, target reached exactly.
        steps = [int(v) for v in _replica_values(w.pruning_step)]
        assert steps == [total, total]
        for mask in _replica_values(w.masks[0]):
            assert (mask == 0).sum() == round(0.8 * mask.size)
    for key, value in tfaccel.sparsity(qat).items():
        assert value == pytest.approx(0.8, abs=0.006), key
    # Training made progress (chance is 0.1). From an untrained BatchNorm,
    # quantize folds batch statistics in training (bn_folding='auto'), while
    # evaluation reads moving statistics that 20 steps at momentum 0.99
    # have only begun to move: as in float training, accuracy lags here.
    assert qat.evaluate(digits[2], digits[3], verbose=0)[1] > 0.3
