"""Pruning schedules: properties, validation, serialization, parity with tfmot."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfaccel.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
    ScaledSparsity,
)


def _at(schedule, step):
    should, value = schedule(step)
    return bool(should), float(value)


sparsities = st.floats(0.0, 0.99, allow_nan=False)


@st.composite
def polynomial(draw):
    initial = draw(sparsities)
    final = draw(st.floats(initial, 0.99))
    begin = draw(st.integers(0, 50))
    end = draw(st.integers(begin + 1, begin + 300))
    power = draw(st.sampled_from([1, 2, 3, 5]))
    frequency = draw(st.integers(1, 120))
    return PolynomialDecay(initial, final, begin, end, power, frequency)


@settings(max_examples=40, deadline=None)
@given(polynomial(), st.lists(st.integers(0, 500), min_size=2, max_size=6))
def test_polynomial_bounded_and_monotone(schedule, steps):
    values = [_at(schedule, s)[1] for s in sorted(steps)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert all(b >= a - 1e-6 for a, b in zip(values, values[1:]))


@settings(max_examples=40, deadline=None)
@given(polynomial())
def test_polynomial_reaches_final_at_end_step(schedule):
    should, value = _at(schedule, schedule.end_step)
    assert should  # even when frequency does not divide the span
    assert value == pytest.approx(schedule.final_sparsity, abs=1e-6)
    assert not _at(schedule, schedule.end_step + 1)[0]
    assert _at(schedule, schedule.begin_step)[0]
    if schedule.begin_step > 0:
        assert not _at(schedule, schedule.begin_step - 1)[0]


@settings(max_examples=30, deadline=None)
@given(
    sparsities,
    st.integers(0, 50),
    st.integers(1, 40),
    st.integers(0, 400),
)
def test_constant_sparsity_when(target, begin, frequency, step):
    schedule = ConstantSparsity(target, begin_step=begin, end_step=-1, frequency=frequency)
    should, value = _at(schedule, step)
    assert value == pytest.approx(target, abs=1e-7)
    assert should == (step >= begin and (step - begin) % frequency == 0)


def test_constant_sparsity_prunes_at_end_step():
    schedule = ConstantSparsity(0.8, begin_step=10, end_step=95, frequency=20)
    steps = [s for s in range(200) if _at(schedule, s)[0]]
    assert steps == [10, 30, 50, 70, 90, 95]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ConstantSparsity(1.0), r"target_sparsity.*\[0, 1\).*Received: target_sparsity=1.0"),
        (lambda: ConstantSparsity(-0.1), r"Received: target_sparsity=-0.1"),
        (lambda: PolynomialDecay(0.0, 1.2, 0, 10), r"final_sparsity=1.2"),
        (lambda: PolynomialDecay(-0.5, 0.5, 0, 10), r"initial_sparsity=-0.5"),
        (lambda: PolynomialDecay(0.0, 0.5, 10, 10), r"end_step.*greater.*end_step=10, begin_step=10"),
        (lambda: ConstantSparsity(0.5, begin_step=5, end_step=3), r"end_step=3, begin_step=5"),
        (lambda: ConstantSparsity(0.5, frequency=0), r"frequency.*>= 1.*frequency=0"),
        (lambda: ConstantSparsity(0.5, begin_step=-1), r"begin_step.*>= 0.*begin_step=-1"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, -1), r"end_step.*>= 0.*end_step=-1"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, 10, power=0), r"power.*> 0.*power=0"),
    ],
)
def test_validation_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_type_errors():
    with pytest.raises(TypeError, match="target_sparsity.*Received: target_sparsity='0.5'"):
        ConstantSparsity("0.5")
    with pytest.raises(TypeError, match="frequency.*int.*frequency=2.5"):
        ConstantSparsity(0.5, frequency=2.5)


@pytest.mark.parametrize(
    "schedule",
    [
        ConstantSparsity(0.7, 3, 40, 7),
        PolynomialDecay(0.1, 0.8, 2, 41, 2, 9),
        ScaledSparsity(PolynomialDecay(0.1, 0.8, 2, 41, 2, 9), 1.1),
    ],
)
def test_serialization_round_trip(schedule):
    assert type(schedule).from_config(schedule.get_config()) == schedule
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert restored == schedule and isinstance(restored, PruningSchedule)
    for step in (0, 7, 40, 41, 100):
        assert _at(restored, step) == _at(schedule, step)
    assert restored.final_sparsity == schedule.final_sparsity
    assert hash(restored) == hash(schedule)


@settings(max_examples=30, deadline=None)
@given(polynomial(), st.floats(0.0, 3.0), st.lists(st.integers(0, 500), min_size=1, max_size=6))
def test_scaled_follows_its_schedule(schedule, factor, steps):
    if not factor * schedule.final_sparsity < 1.0:
        with pytest.raises(ValueError, match="factor \\* schedule.final_sparsity"):
            ScaledSparsity(schedule, factor)
        return
    scaled = ScaledSparsity(schedule, factor)
    assert scaled.final_sparsity == pytest.approx(factor * schedule.final_sparsity)
    assert (scaled.begin_step, scaled.end_step) == (schedule.begin_step, schedule.end_step)
    for step in steps:
        should, value = _at(scaled, step)
        inner_should, inner_value = _at(schedule, step)
        assert should == inner_should
        assert value == pytest.approx(min(factor * inner_value, 1.0 - 2.0**-24), rel=1e-6)
        assert 0.0 <= value < 1.0


def test_scaled_errors_and_repr():
    base = ConstantSparsity(0.5)
    with pytest.raises(TypeError, match="schedule.*PruningSchedule.*Received: schedule=0.5"):
        ScaledSparsity(0.5, 1.0)
    with pytest.raises(TypeError, match="factor.*float.*Received: factor='2'"):
        ScaledSparsity(base, "2")
    with pytest.raises(ValueError, match="factor.*>= 0.*Received: factor=-1"):
        ScaledSparsity(base, -1)
    with pytest.raises(ValueError, match="factor=2.0 with final_sparsity=0.5"):
        ScaledSparsity(base, 2.0)
    assert repr(ScaledSparsity(base, 1.5)) == (
        "ScaledSparsity(ConstantSparsity(target_sparsity=0.5, begin_step=0, "
        "end_step=-1, frequency=100), factor=1.5)"
    )


_TFMOT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow_model_optimization as tfmot
    s = tfmot.sparsity.keras
    cases = json.loads(sys.argv[1])
    out = []
    for kind, kwargs, steps in cases:
        schedule = getattr(s, kind)(**kwargs)
        rows = []
        for step in range(steps):
            should, value = schedule(step)
            rows.append([bool(should), float(value)])
        out.append(rows)
    print("JSON" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_same_as_tfmot_at_every_step():
    cases = [
        ("PolynomialDecay", dict(initial_sparsity=0.1, final_sparsity=0.85, begin_step=13, end_step=250, power=3, frequency=17), 300),
        ("PolynomialDecay", dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=100, power=2, frequency=100), 130),
        ("ConstantSparsity", dict(target_sparsity=0.6, begin_step=5, end_step=200, frequency=30), 260),
        ("ConstantSparsity", dict(target_sparsity=0.3, begin_step=0, end_step=-1, frequency=10), 60),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _TFMOT_SCRIPT, json.dumps(cases)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("JSON"))
    theirs = json.loads(line[4:])
    ours_cls = {"PolynomialDecay": PolynomialDecay, "ConstantSparsity": ConstantSparsity}
    for (kind, kwargs, steps), rows in zip(cases, theirs):
        schedule = ours_cls[kind](**kwargs)
        assert len(rows) == steps
        extra = []
        for step, (their_should, their_value) in enumerate(rows):
            should, value = _at(schedule, step)
            assert value == pytest.approx(their_value, abs=1e-6), (kind, step)
            if should != their_should:
                extra.append(step)
                assert should and not their_should
        # The only difference: we also prune at end_step (when tfmot skips it).
        end = kwargs["end_step"]
        spans_align = end >= 0 and (end - kwargs["begin_step"]) % kwargs["frequency"] == 0
        assert extra == ([] if end < 0 or spans_align else [end])
    assert np.isfinite(theirs[0][-1][1])
