"""Weight fake-quant in training: TF's ops' values and gradients, faster;
export traces the ops themselves."""

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


@pytest.mark.parametrize("mode,shape", [("per_channel", (3, 3, 16, 32)),
                                        ("depthwise", (3, 3, 16, 2)),
                                        ("per_tensor", (3, 3, 16, 32))])
def test_weight_gradient_through_the_bound_matches_the_op(mode, shape):
    rng = np.random.default_rng(0)
    w = tf.constant((rng.normal(size=shape) * 0.1).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def reference(weight):
        if mode == "per_tensor":
            bound = tf.reduce_max(tf.abs(weight))
            return tf.quantization.fake_quant_with_min_max_vars(
                weight, -bound, bound, num_bits=8, narrow_range=True)
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


@pytest.mark.parametrize("seed", range(6))
def test_forward_is_the_op_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    shape = [(3, 3, 32, 64), (1, 1, 128, 96), (3, 3, 1, 48)][seed % 3]
    # Channels of magnitudes 1e-6 .. 1e3, one all-zero (bound 1, as
    # `_weight_bound` gives it). Even seeds: the bound is max|x| (weights on
    # both nudged ends, where the op's clip would act); odd seeds: bounds
    # wider than the weights (`_weight_bound`'s floor of 1e-8).
    x = rng.normal(size=shape) * 10.0 ** rng.uniform(-6, 3, shape[-1])
    x[..., 0] = 0.0
    x = x.astype("float32")
    bound = np.abs(x.reshape(-1, shape[-1])).max(0)
    bound[0] = 1.0
    if seed % 2:
        bound = bound * rng.uniform(1.0, 3.0, shape[-1]).astype("float32")
    else:  # both ends reached in channel 1: +max and -max
        x[0, 0, 0, 1], x[-1, -1, -1, 1] = bound[1], -bound[1]
    mine = _fake_quant_per_channel(tf.constant(x), tf.constant(bound)).numpy()
    ref = _op(x, -bound, bound).numpy()
    np.testing.assert_array_equal(mine.view(np.int32), ref.view(np.int32))


def test_one_subtraction_floors_as_the_kernels_two():
    # `_fake_quant_per_channel` computes `floor(t - 126.5)` where the op
    # computes `floor((t - 127) + 0.5)`, t in [-1, 255]. The two differ by
    # under 1e-5 before the floor, so their floors can differ only for t
    # that close to a half-integer: every float32 within 4096 ulps of each
    # half-integer is checked (2 M values; the whole range was checked once).
    halves = np.arange(-0.5, 255.0, 1.0, dtype=np.float32)
    bits = halves.view(np.int32)[:, None] + np.arange(-4096, 4097, dtype=np.int32)
    t = bits.ravel().view(np.float32)
    t = t[(t >= -1.0) & (t <= 255.0)]
    two = np.floor((t - np.float32(127.0)) + np.float32(0.5))
    one = np.floor(t - np.float32(126.5))
    np.testing.assert_array_equal(one, two)
    assert t.size > 2_000_000


def _op_types(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("mode", ["per_channel", "depthwise"])
def test_conversion_traces_the_op_without_a_custom_gradient(mode):
    from tfaccel.export.prepare import conversion_contexts

    w = tf.TensorSpec((3, 3, 8, 2 if mode == "depthwise" else 16), "float32")
    training = _op_types(lambda v: fake_quant_weight(v, mode), w)
    with conversion_contexts():  # what export_tflite enters around the converter
        exported = _op_types(lambda v: fake_quant_weight(v, mode), w)
    op = "FakeQuantWithMinMaxVarsPerChannel"
    assert op not in training and "IdentityN" in training  # elementwise, custom grad
    assert op in exported and "IdentityN" not in exported


@pytest.mark.parametrize("low,high", [(0.0, 6.0), (-1.3, 2.2), (-4.0, 4.0), (0.0, 0.0)])
def test_activation_gradient_without_range_gradient_matches_the_op_inside(low, high):
    # range_gradient=False (moving-average ranges): one Relu6Grad passes the
    # gradient strictly inside the nudged range, as the op does there; the
    # forward is the op's.
    from tfaccel.quantization import fake_quant_activation

    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(-7, 7, (64, 33)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(64, 33)).astype("float32"))
    results = []
    for range_gradient in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fake_quant_activation(x, low, high, range_gradient=range_gradient)
            loss = tf.reduce_sum(y * upstream)
        results.append((y.numpy(), tape.gradient(loss, x).numpy()))
    (y_op, g_op), (y_fast, g_fast) = results
    np.testing.assert_array_equal(y_fast, y_op)
    if high > low:
        np.testing.assert_array_equal(g_fast, g_op)  # no input lies on an end
        assert 0 < np.count_nonzero(g_fast) < g_fast.size
    else:
        # An empty range's output is constant: nothing passes (the op
        # passes everything, its own special case).
        assert np.count_nonzero(g_fast) == 0 and np.count_nonzero(g_op) == g_op.size


def test_activation_export_traces_the_op_without_a_custom_gradient():
    from tfaccel.export.prepare import conversion_contexts
    from tfaccel.quantization import fake_quant_activation

    spec = tf.TensorSpec((4, 8), "float32")

    def fq(v):
        return fake_quant_activation(v, -1.0, 2.0, range_gradient=False)

    training = _op_types(fq, spec)
    with conversion_contexts():
        exported = _op_types(fq, spec)
    assert "IdentityN" in training and "IdentityN" not in exported
    assert "FakeQuantWithMinMaxVars" in exported


def test_a_layer_reads_its_kernel_bound_once():
    # Fake-quant needs the bound max|w| and the int32 bias the scale made of
    # it: one pass over each kernel computes both (a second would cost as
    # much as a third of the fake-quant forward).
    import keras

    from tfaccel import quantize

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3)(x)
    model = keras.Model(inputs, x)
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    qat = quantize(model, calibration_data=data, bn_folding="moving")
    graph = tf.function(lambda v: qat(v, training=True)).get_concrete_function(
        tf.TensorSpec((2, 8, 8, 3))
    ).graph
    kernel_bounds = [op for op in graph.get_operations()
                     if op.type == "Abs" and op.inputs[0].shape.rank == 4]
    assert len(kernel_bounds) == 2
    assert len([op for op in graph.get_operations() if op.type == "Round"]) >= 2  # the biases
