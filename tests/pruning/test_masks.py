"""Mask functions: exact zero counts, N:M groups, XLA compatibility."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfaccel.pruning.masks import nm_mask, parse_structure, unstructured_mask

# TensorFlow flushes subnormal floats to zero on CPU, so they tie with 0.
weights = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
    elements=st.floats(-4, 4, width=32, allow_subnormal=False),
)


@settings(max_examples=30, deadline=None)
@given(weights, st.floats(0.0, 0.99))
def test_unstructured_exact_zero_count(w, sparsity):
    mask = unstructured_mask(w, sparsity).numpy()
    k = min(int(np.round(np.float64(sparsity) * w.size)), w.size - 1)
    assert mask.shape == w.shape
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == k
    # Every kept weight is at least as large as every pruned one.
    if 0 < k < w.size:
        assert np.abs(w[mask == 1]).min() >= np.abs(w[mask == 0]).max()


@pytest.mark.parametrize("size, sparsity", [(100, 0.9999), (40, 0.99), (1, 0.6)])
def test_unstructured_keeps_at_least_one_weight(size, sparsity):
    # tfmot keeps one weight too: an all-zero tensor kills its layer.
    w = -np.arange(1, size + 1, dtype=np.float32)
    mask = unstructured_mask(w, sparsity).numpy()
    assert int(mask.sum()) == 1
    assert mask[np.argmax(np.abs(w))] == 1


def test_unstructured_ties_are_deterministic_by_index():
    w = np.ones((2, 3), np.float32)
    mask = unstructured_mask(w, 0.5).numpy()
    np.testing.assert_array_equal(mask.ravel(), [0, 0, 0, 1, 1, 1])


def test_unstructured_keep_keeps_pruned_weights_pruned():
    w = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], np.float32)
    keep = np.array([0, 1, 1, 1, 1, 1], np.float32)  # the largest was pruned
    mask = unstructured_mask(w, 0.5, keep=keep).numpy()
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 0, 0])


@st.composite
def nm_cases(draw):
    n, m = draw(st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8)]))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    shape.insert(axis % (len(shape) + 1), m * draw(st.integers(1, 3)))
    w = draw(hnp.arrays(np.float32, shape, elements=st.floats(-4, 4, width=32, allow_subnormal=False)))
    return w, n, m, axis % len(shape)


@settings(max_examples=30, deadline=None)
@given(nm_cases())
def test_nm_every_group_holds(case):
    w, n, m, axis = case
    mask = nm_mask(w, n, m, axis=axis).numpy()
    assert mask.shape == w.shape
    groups = np.moveaxis(mask, axis, -1).reshape(-1, m)
    np.testing.assert_array_equal(groups.sum(-1), n)
    mags = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
    for g, mag in zip(groups, mags):
        assert mag[g == 1].min() >= mag[g == 0].max()


def test_nm_errors():
    w = np.ones((6, 3), np.float32)
    with pytest.raises(ValueError, match=r"m=4 to divide the size of axis 0 \(6\)"):
        nm_mask(w, 2, 4, axis=0)
    with pytest.raises(ValueError, match=r"0 < n <= m. Received: n=5, m=4"):
        nm_mask(w, 5, 4, axis=0)
    with pytest.raises(ValueError, match=r"axis.*Received: axis=2"):
        nm_mask(w, 1, 3, axis=2)


def test_parse_structure():
    assert parse_structure("unstructured") is None
    assert parse_structure("2:4") == (2, 4)
    for bad in ("2-4", "4:2", "0:4", "block", 3, "a:b"):
        with pytest.raises(ValueError, match=r"'unstructured' or an 'N:M'.*Received: structure="):
            parse_structure(bad)


def test_masks_compile_with_xla_for_any_sparsity():
    w = tf.constant(np.random.default_rng(0).normal(size=(16, 8)).astype("float32"))

    @tf.function(jit_compile=True)
    def both(sparsity):
        return unstructured_mask(w, sparsity), nm_mask(w, 2, 4, axis=0)

    for sparsity in (0.25, 0.5, 0.8):
        mask, nm = both(tf.constant(sparsity))
        assert int((mask.numpy() == 0).sum()) == round(sparsity * 128)
        assert int(nm.numpy().sum()) == 64
    # One compiled program serves every sparsity value (no top_k with a variable k).
    assert both.experimental_get_tracing_count() == 1


def test_python_float_sparsity_is_not_rounded_through_float32():
    # Just below 2.5/11: float64 gives 2.4999... zeros; through float32 it was
    # 2.5000001 and rounded to 3 (hypothesis found such a case).
    sparsity = float(np.nextafter(2.5 / 11, 0))
    mask = unstructured_mask(np.ones(11, np.float32), sparsity).numpy()
    assert int((mask == 0).sum()) == round(sparsity * 11) == 2
