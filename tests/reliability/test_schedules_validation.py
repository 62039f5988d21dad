"""Issue 12 item 7: schedules refuse values that break training later."""

import pytest

from tfaccel.schedules import ConstantSparsity, PolynomialDecay


@pytest.mark.parametrize("power", [float("nan"), float("inf")])
def test_polynomial_power_must_be_finite(power):
    # With power=nan the sparsity after end_step was 0, not the target.
    with pytest.raises(ValueError, match=r"`power` must be a finite number > 0"):
        PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, power=power)


@pytest.mark.parametrize("argname", ["begin_step", "end_step"])
def test_steps_must_fit_in_int64(argname):
    # end_step=2**63 failed at the first training step with a TF message.
    steps = {"begin_step": 0, "end_step": 100, argname: 2**63}
    if argname == "begin_step":
        steps["end_step"] = -1
    with pytest.raises(ValueError, match=rf"`{argname}` must fit in int64"):
        ConstantSparsity(0.5, **steps)
    ConstantSparsity(0.5, begin_step=0, end_step=2**63 - 1)  # the largest is fine
