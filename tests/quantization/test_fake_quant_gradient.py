"""The per-channel weight fake-quant's gradient equals TF's op's."""

import numpy as np
import pytest
import tensorflow as tf

from tfaccel.quantization.quantizers import _fake_quant_per_channel, fake_quant_weight


def _op(x, low, high):
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, low, high, num_bits=8, narrow_range=True
    )


def _grads(fn, x, low, high, upstream):
    with tf.GradientTape() as tape:
        tape.watch([x, low, high])
        loss = tf.reduce_sum(fn(x, low, high) * upstream)
    return [g.numpy() for g in tape.gradient(loss, [x, low, high])]


@pytest.mark.parametrize("seed", range(4))
def test_gradient_matches_the_op_with_clipped_entries(seed):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(3, 3, 8, 16)).astype("float32"))
    # Ranges narrower than the data, some not containing zero: every branch
    # (inside, below, above, zero point clamped) is hit.
    low = tf.constant(rng.uniform(-1.5, 0.3, 16).astype("float32"))
    high = tf.constant((low.numpy() + rng.uniform(0.05, 2.0, 16)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(3, 3, 8, 16)).astype("float32"))
    mine = _grads(_fake_quant_per_channel, x, low, high, upstream)
    ref = _grads(_op, x, low, high, upstream)
    assert np.any(mine[1] != 0) and np.any(mine[2] != 0)  # clipping happened
    np.testing.assert_array_equal(mine[0], ref[0])  # the weight's: exact
    for a, b in zip(mine[1:], ref[1:]):  # per-channel sums: up to their order
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode,shape", [("per_channel", (3, 3, 16, 32)),
                                        ("depthwise", (3, 3, 16, 2))])
def test_weight_gradient_through_the_bound_matches_the_op(mode, shape):
    rng = np.random.default_rng(0)
    w = tf.constant((rng.normal(size=shape) * 0.1).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def reference(weight):
        flat = weight if mode == "per_channel" else tf.reshape(weight, (3, 3, -1))
        bound = tf.reduce_max(tf.abs(flat), axis=[0, 1, 2][: len(flat.shape) - 1])
        return tf.reshape(_op(flat, -bound, bound), weight.shape)

    results = []
    for fn in (lambda v: fake_quant_weight(v, mode), reference):
        with tf.GradientTape() as tape:
            tape.watch(w)
            y = fn(w)
            loss = tf.reduce_sum(y * upstream)
        results.append((y.numpy(), tape.gradient(loss, w).numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
