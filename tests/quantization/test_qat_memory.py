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
