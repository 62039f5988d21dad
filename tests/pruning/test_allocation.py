"""Sparsity allocation: `allocate` and `prune(..., allocation="erk")`."""

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tiny_models import make_cnn
from tfaccel.pruning import PruneLowMagnitude, allocate, prune, sparsity, strip_pruning
from tfaccel.schedules import ConstantSparsity, PolynomialDecay, ScaledSparsity

shapes_st = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=3),
    st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=4).map(tuple),
             min_size=1, max_size=3),
    min_size=1,
    max_size=6,
)


def _size(layer_shapes):
    return sum(math.prod(shape) for shape in layer_shapes)


@settings(max_examples=60, deadline=None)
@given(shapes_st, st.floats(0.01, 0.99))
def test_erk_shares_add_up_and_follow_shape(shapes, target):
    shares = allocate(shapes, target, "erk")
    assert set(shares) == set(shapes)
    total = sum(_size(s) for s in shapes.values())
    pruned = sum(shares[k] * _size(s) for k, s in shapes.items())
    assert pruned == pytest.approx(target * total, rel=1e-9, abs=1e-6)
    assert all(0.0 <= v < 1.0 for v in shares.values())
    # Kept fraction proportional to sum(shape)/prod(shape) among pruned
    # layers; a layer left dense has a ratio at least as high as theirs.
    raw = {k: sum(sum(x) for x in s) / _size(s) for k, s in shapes.items()}
    pruned_keys = [k for k in shapes if shares[k] > 0]
    assert pruned_keys
    scales = [(1 - shares[k]) / raw[k] for k in pruned_keys]
    assert max(scales) == pytest.approx(min(scales), rel=1e-9)
    for k in set(shapes) - set(pruned_keys):
        assert raw[k] >= max(raw[j] for j in pruned_keys) - 1e-12


def test_erk_by_hand_and_uniform():
    shapes = {"small": [(3, 3, 3, 8)], "big": [(512, 1000)]}
    # small's kept share would exceed its size: it stays dense; big keeps
    # the rest of the 20% budget.
    kept = 0.2 * (216 + 512_000) - 216
    assert allocate(shapes, 0.8, "erk") == pytest.approx(
        {"small": 0.0, "big": 1 - kept / 512_000}
    )
    assert allocate(shapes, 0.8, "uniform") == {"small": 0.8, "big": 0.8}
    assert allocate(shapes, 0.0, "erk") == {"small": 0.0, "big": 0.0}


def test_allocate_errors():
    with pytest.raises(ValueError, match=r"allocation.*\('uniform', 'erk'\).*allocation='global'"):
        allocate({"a": [(2, 2)]}, 0.5, "global")
    with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\).*sparsity=1.0"):
        allocate({"a": [(2, 2)]}, 1.0)
    with pytest.raises(ValueError, match="Layer 'a' has no prunable weight elements"):
        allocate({"a": [(0, 4)]}, 0.5)


def _weighted(model):
    """Size-weighted sparsity of every pruned kernel, and the sizes."""
    sizes = {f"{w.path.split('/')[-2]}/{w.name}": int(np.prod(w.shape))
             for w in model.weights if w.name == "kernel" and "mask" not in w.path}
    per = sparsity(model)
    total = sum(sizes[k] for k in per)
    return sum(per[k] * sizes[k] for k in per) / total, per, sizes


def test_prune_erk_reaches_target_overall_and_round_trips(digits, tmp_path):
    x, y = digits[0][:64], digits[1][:64]
    model = make_cnn()
    pruned = prune(model, ConstantSparsity(0.8, frequency=1), allocation="erk")
    expected = allocate(
        {layer.name: [tuple(layer.kernel.shape)] for layer in model.layers
         if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))},
        0.8,
    )
    wrappers = {layer.name: layer for layer in pruned.layers
                if isinstance(layer, PruneLowMagnitude)}
    assert set(wrappers) == set(expected)
    for name, wrapper in wrappers.items():
        assert isinstance(wrapper.schedule, ScaledSparsity)
        assert wrapper.schedule.final_sparsity == pytest.approx(expected[name])
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    pruned.fit(x, y, batch_size=32, epochs=1, verbose=0)
    overall, per, sizes = _weighted(pruned)
    assert overall == pytest.approx(0.8, abs=len(per) / sum(sizes[k] for k in per))
    for key, value in per.items():
        layer = key.split("/")[0]
        assert value == pytest.approx(expected[layer], abs=1 / sizes[key])
    # The large conv is pruned harder than the small one: not uniform.
    assert per["conv2d_1/kernel"] > 0.9 > 0.6 > per["conv2d/kernel"]

    path = tmp_path / "erk.keras"
    pruned.save(path)
    restored = keras.models.load_model(path)
    for layer in restored.layers:
        if isinstance(layer, PruneLowMagnitude):
            assert layer.schedule == wrappers[layer.name].schedule
    assert sparsity(restored) == per
    np.testing.assert_allclose(
        strip_pruning(restored).predict(x, verbose=0),
        pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-5,
    )


def test_prune_erk_follows_a_rising_schedule(digits):
    """At every step all pruned weights together hold the schedule's value."""
    x, y = digits[0][:64], digits[1][:64]
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=6, frequency=1)
    model = make_cnn()
    factor = allocate({layer.name: [tuple(layer.kernel.shape)] for layer in model.layers
                       if hasattr(layer, "kernel")}, 0.8)["conv2d_1"] / 0.8
    assert factor > 1.1
    pruned = prune(model, schedule, allocation="erk")
    pruned.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    for step in range(4):
        pruned.train_on_batch(x[:16], y[:16])
        overall, per, sizes = _weighted(pruned)
        target = float(schedule.sparsity_at(step + 1))  # the k-th step sees k
        assert overall == pytest.approx(target, abs=len(per) / sum(sizes.values()))
        if target > 0.3:  # ... shared unevenly, in the final proportions
            assert per["conv2d_1/kernel"] == pytest.approx(target * factor, abs=0.01)


def test_prune_erk_leaves_small_layers_dense():
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(2, 3, name="tiny"),
        keras.layers.Flatten(),
        keras.layers.Dense(256, name="wide"),
        keras.layers.Dense(10, name="logits"),
    ])
    shares = allocate({layer.name: [tuple(layer.kernel.shape)]
                       for layer in model.layers if hasattr(layer, "kernel")}, 0.8)
    assert shares["tiny"] == 0.0 < shares["logits"] < shares["wide"]
    pruned = prune(model, ConstantSparsity(0.8, frequency=1), allocation="erk")
    kinds = {layer.name: type(layer).__name__ for layer in pruned.layers}
    assert kinds == {"tiny": "Conv2D", "flatten": "Flatten",
                     "wide": "PruneLowMagnitude", "logits": "PruneLowMagnitude"}
    np.testing.assert_array_equal(
        pruned.get_layer("tiny").kernel.numpy(), model.get_layer("tiny").kernel.numpy()
    )


def test_prune_allocation_errors():
    with pytest.raises(ValueError, match=r"allocation.*\('uniform', 'erk'\).*allocation='ERK'"):
        prune(make_cnn(), allocation="ERK")
    with pytest.raises(ValueError, match="N:M and channel.*Received: structure='2:4'"):
        prune(make_cnn(), structure="2:4", allocation="erk")
    with pytest.raises(ValueError, match="Received: structure='channels'"):
        prune(make_cnn(), structure="channels", allocation="erk")
    unbuilt = keras.Sequential([keras.layers.Dense(4, name="d1"), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"build the model first.*\['d1', 'dense"):
        prune(unbuilt, allocation="erk")


def test_erk_zeros_reach_the_int8_file(digits, tmp_path):
    """ERK's uneven per-layer sparsities survive QAT into the int8 file,
    and the file's overall weight sparsity is the target."""
    import tfaccel

    x, y = digits[0][:128], digits[1][:128]
    pruned = prune(make_cnn(), ConstantSparsity(0.8, frequency=1), allocation="erk")
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    pruned.fit(x, y, batch_size=32, epochs=1, verbose=0)
    expected = sorted(sparsity(pruned).values())
    qat = tfaccel.quantize(strip_pruning(pruned), calibration_data=x[:32])
    report = tfaccel.export_tflite(qat, str(tmp_path / "erk.tflite"), quantization="int8",
                                   representative_data=x[:32])
    assert report.sparsity == pytest.approx(0.8, abs=1e-3)
    np.testing.assert_allclose(sorted(report.tensor_sparsity.values()), expected, atol=1e-6)
