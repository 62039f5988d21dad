"""What a QAT train step keeps for its backward pass (issue 17's memory):
an activation quantizer keeps a boolean mask of "inside the range" (a byte
per value), not its float input. Its gradient values are tested against the
op in test_fake_quant_gradient.py."""

import tensorflow as tf

from tfaccel.quantization import fake_quant_activation


def test_activation_gradient_reads_a_mask_not_the_input():
    spec = tf.TensorSpec((4, 8), "float32")

    @tf.function
    def grad(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fake_quant_activation(x, -1.0, 2.0, range_gradient=False)
        return tape.gradient(y, x, output_gradients=dy)

    graph = grad.get_concrete_function(spec, spec).graph
    x = graph.inputs[0]
    readers = {op.type for op in x.consumers()}
    # The forward: the op, the two comparisons of the mask, the custom
    # gradient's identity. No backward op reads `x` (it would keep it).
    assert readers <= {"FakeQuantWithMinMaxVars", "Greater", "Less", "IdentityN"}, readers
    assert "Relu6Grad" not in {op.type for op in graph.get_operations()}


def test_activation_gradient_is_zero_outside_the_range_even_for_infinite_dy():
    # The mask multiplies the gradient (no zero tensor filled for a select),
    # with the select's result: 0 outside the range, whatever dy holds there.
    x = tf.constant([-3.0, -0.5, 0.0, 1.0, 5.0])
    dy = tf.constant([float("inf"), 2.0, -3.0, float("nan"), -float("inf")])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fake_quant_activation(x, -1.0, 2.0, range_gradient=False)
    g = tape.gradient(y, x, output_gradients=dy).numpy()
    assert g[0] == 0.0 and g[4] == 0.0  # outside: 0, not inf * 0 = nan
    assert g[1] == 2.0 and g[2] == -3.0  # inside: dy itself
    assert g[3] != g[3]  # a NaN inside the range still reaches x
    graph_ops = {
        op.type
        for op in tf.function(
            lambda x, dy: tf.gradients(
                fake_quant_activation(x, -1.0, 2.0, range_gradient=False), x, dy
            )
        )
        .get_concrete_function(tf.TensorSpec((5,)), tf.TensorSpec((5,)))
        .graph.get_operations()
    }
    assert "MulNoNan" in graph_ops and "SelectV2" not in graph_ops


def test_an_accidental_zero_costs_no_mask_and_a_pruned_kernel_keeps_its_zeros():
    # ResNet50 (`weights=None`) had three kernels with one exact zero from
    # the initializer, and each got a float mask of its size (17 MB).
    import keras
    import numpy as np

    from tfaccel.quantization import QuantizeWrapper, quantize
    from tfaccel.quantization.quantize import PRESERVED_SPARSITY

    inputs = keras.Input((16,))
    x = keras.layers.Dense(256, name="dense")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(256, name="sparse")(x))
    kernel = model.get_layer("dense").kernel.numpy()
    kernel[0, 0] = 0.0  # 1 of 4,096
    model.get_layer("dense").kernel.assign(kernel)
    sparse = model.get_layer("sparse").kernel.numpy()
    sparse.flat[: int(np.ceil(sparse.size * PRESERVED_SPARSITY))] = 0.0  # 1%: pruned
    model.get_layer("sparse").kernel.assign(sparse)
    qat = quantize(model)
    wrappers = {w.layer.name: w for w in qat.layers if isinstance(w, QuantizeWrapper)}
    assert not wrappers["dense"].preserve_sparsity
    assert not any(v.path.endswith("mask") for v in wrappers["dense"].weights)
    assert wrappers["sparse"].preserve_sparsity
    np.testing.assert_array_equal(wrappers["sparse"].mask.numpy() == 0, sparse == 0)
