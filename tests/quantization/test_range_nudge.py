"""The activation range's nudge: the same float32 values in a graph as
eagerly, and read as constants in the graph handed to the converter."""

import keras
import numpy as np
import tensorflow as tf

from tfaccel.quantization import ActivationQuantizer
from tfaccel.quantization.quantizers import (
    activation_scale,
    fake_quant_activation,
    for_export,
)


def _ranges(n=150):
    rng = np.random.default_rng(0)
    after_relu = [(None, h) for h in rng.uniform(1e-4, 10, n)]
    general = list(zip(-rng.uniform(1e-4, 10, n), rng.uniform(1e-4, 10, n)))
    # A symmetric range (scale a / 127) and an image's [0, 255].
    return after_relu + general + [(-1.0, 1.0), (-2.5, 2.5), (None, 255.0)]


def test_the_nudge_is_the_same_in_a_graph_as_eagerly():
    # Grappler's constant folding rewrote `x / 255` and `(x / 255) * 255`
    # inside a graph: the nudged range and scale of a model's graph then
    # differed in the last bit from the same ops run eagerly (221 of
    # these 303 ranges), and from the constants the export hands the
    # converter.
    low_var, high_var = tf.Variable(0.0), tf.Variable(0.0)

    def nudge(low, high):
        x = tf.constant([-20.0, -1.0, 0.0, 0.3, 1.7, 9.9, 20.0])
        y = fake_quant_activation(x, low, high)
        return y, activation_scale(low, high)

    in_graph = {
        relu: tf.function(
            lambda relu=relu: nudge(0.0 if relu else tf.convert_to_tensor(low_var),
                                    tf.convert_to_tensor(high_var)))
        for relu in (True, False)
    }
    differ = []
    for low, high in _ranges():
        relu = low is None
        low_var.assign(0.0 if relu else low)
        high_var.assign(high)
        eager = nudge(0.0 if relu else tf.constant(low, tf.float32),
                      tf.constant(high, tf.float32))
        graph = in_graph[relu]()
        if not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(eager, graph)):
            differ.append((low, high))
    assert differ == []


def test_the_export_graph_reads_each_range_as_two_constants():
    inputs = keras.Input((4,))
    q = ActivationQuantizer(name="q")
    r = ActivationQuantizer(activation="relu6", name="r")
    model = keras.Model(inputs, r(q(inputs)))
    q.range_min.assign(-1.3)
    q.range_max.assign(2.9)
    r.range_max.assign(2.3)  # after a ReLU: the closed-form nudge in a graph
    x = tf.constant([[-2.0, -0.5, 0.77, 3.0]])
    with for_export():
        assert q.inference_range() == (np.float32(-1.3), np.float32(2.9))
        assert r.inference_range() == (0.0, np.float32(2.3))
        graph = tf.function(lambda v: model(v, training=False)).get_concrete_function(
            tf.TensorSpec((1, 4), tf.float32)).graph
        fake_quants = [o for o in graph.get_operations() if o.type == "FakeQuantWithMinMaxVars"]
        assert len(fake_quants) == 2
        for op in fake_quants:
            assert [t.op.type for t in op.inputs[1:]] == ["Const", "Const"]
        exported = model(x, training=False)
    # The model's own graph, reading the variables, computes the same.
    trained = tf.function(lambda v: model(v, training=False))(x)
    np.testing.assert_array_equal(exported, trained)
    np.testing.assert_array_equal(
        tf.function(lambda: r.inference_scale())(), r.inference_scale())
    # Nothing about the ranges is cached: a new range is read at the next trace.
    q.range_max.assign(5.1)
    with for_export():
        assert q.inference_range()[1] == np.float32(5.1)
