"""TPU proxy on one CPU: `jit_compile=True` + `steps_per_execution=4`."""

import keras
import numpy as np
import pytest

from tests.distribute import _helpers
from tests.tiny_models import make_cnn

pytestmark = pytest.mark.skipif(not _helpers.can_prune(), reason="needs tfaccel.pruning")


def test_schedule_exact_under_xla_and_steps_per_execution(digits):
    from tfaccel.pruning import prune, sparsity
    from tfaccel.schedules import PolynomialDecay

    x, y = digits[0][:22 * 32], digits[1][:22 * 32]
    batches = 22  # not a multiple of steps_per_execution: a short last execution
    # end_step beyond training: the final sparsity is an intermediate value of
    # the schedule, so a miscounted step shows up as a different sparsity.
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=40, frequency=3)
    model = prune(make_cnn(), schedule)
    _helpers.compile_model(model, jit_compile=True, steps_per_execution=4)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)

    assert int(model.optimizer.iterations) == batches
    assert _helpers.pruning_steps(model) == [batches] * 3
    last_prune = max(s for s in range(batches) if bool(schedule(s)[0]))
    expected = float(schedule(last_prune)[1])
    assert 0.1 < expected < 0.8
    masks = [v for v in model.variables if v.name.endswith("_mask")]
    assert len(masks) == 3
    for mask in masks:
        value = keras.ops.convert_to_numpy(mask)
        # unstructured masks zero exactly round(sparsity * size) weights
        expected_zeros = round(np.float64(np.float32(expected)) * value.size)
        assert int((value == 0).sum()) == expected_zeros, mask.path
    for value in sparsity(model).values():
        # the smallest kernel has 72 weights: rounding moves it <= 0.5 / 72
        assert value == pytest.approx(expected, abs=0.5 / 72 + 1e-9)

    # A second fit continues the count (state lives in variables).
    model.fit(x[:4 * 32], y[:4 * 32], batch_size=32, epochs=1, verbose=0)
    assert _helpers.pruning_steps(model) == [batches + 4] * 3
    assert np.isfinite(model.evaluate(x, y, verbose=0)[0])
    keras.backend.clear_session()
