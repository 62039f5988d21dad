"""Smoke test of the benchmark harness (benchmarks/common.py), not a benchmark."""

import importlib.util
import math
import os

import keras
import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "common.py")


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_are_medians_of_per_round_ratios(common):
    calls = []

    def runner(name, times):
        rounds = iter(times)

        def run():
            calls.append(name)
            return next(rounds)

        return name, run

    # Per-round medians: base 1, 2, 4 ; other 3, 2, 4 -> ratios 3, 1, 1.
    base = runner("base", [[1.0, 1.0, 5.0], [2.0], [4.0, 4.0]])
    other = runner("other", [[3.0], [2.0, 2.0, 0.5], [4.0]])
    result = common.interleaved_step_times([base, other], repeats=3, warmup=0)
    assert result["ratio"] == {"base": 1.0, "other": 1.0}
    assert result["median_step_s"]["base"] == 3.0  # median of 1,1,5,2,4,4
    assert result["steps"] == {"base": 6, "other": 5}
    # The order rotates every round, so no runner always goes first.
    assert calls == ["base", "other", "other", "base", "base", "other"]


def test_rejects_a_single_runner(common):
    with pytest.raises(ValueError, match="at least 2 runners. Received: 1"):
        common.interleaved_step_times([("a", lambda: [1.0])], repeats=1)


def test_times_real_fit_steps_of_tiny_models(common):
    x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
    y = np.arange(64) % 10
    small = common.compile_classifier(common.make_cnn(keras, filters=(2,)), keras)
    big = common.compile_classifier(common.make_cnn(keras, filters=(32, 64)), keras)
    cb = keras.callbacks.Callback
    result = common.interleaved_step_times(
        [("small", common.fit_round(small, x, y, cb, steps=4, batch=16)),
         ("big", common.fit_round(big, x, y, cb, steps=4, batch=16))],
        repeats=2, warmup=1)
    # 2 rounds x (4 steps - the dropped first step of each fit).
    assert result["steps"] == {"small": 6, "big": 6}
    for seconds in result["median_step_s"].values():
        assert 0 < seconds < 2 and math.isfinite(seconds)
    assert result["ratio"]["small"] == 1.0
    assert 0.2 < result["ratio"]["big"] < 50
    low, high = result["ratio_iqr"]["big"]
    assert low <= result["ratio"]["big"] <= high
