"""The graph `export_tflite` hands the converter: folded kernels and int32
biases as constants, computing what the model's own graph computes."""

import keras
import numpy as np
import tensorflow as tf

from tfaccel import quantize
from tfaccel.export.prepare import conversion_contexts


def _model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Statistics away from (0, 1), so that the fold is not trivial.
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(size=n).astype("float32"))
    return model


def test_the_export_graph_holds_folded_kernels_and_biases_as_constants():
    # The fold (BatchNorm statistics into the kernel), the kernels' int8
    # bounds and the biases' rounding to the int32 grid are computed once
    # for the converter's graph, not traced as ~40 ops per layer that
    # read the variables (MobileNetV2's export graph: 3,495 ops before,
    # 1,402 after; the converter got the same file).
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 1, (32, 8, 8, 3)).astype("float32")
    qat = quantize(_model(), calibration_data=data)
    x = tf.constant(data[:4])
    spec = tf.TensorSpec((None, 8, 8, 3), tf.float32)
    with conversion_contexts():  # what export_tflite enters around the converter
        graph = tf.function(lambda v: qat(v, training=False)).get_concrete_function(spec).graph
        exported = qat(x, training=False)
    types = [op.type for op in graph.get_operations()]
    per_channel = [op for op in graph.get_operations()
                   if op.type == "FakeQuantWithMinMaxVarsPerChannel"]
    assert len(per_channel) == 2  # the Conv2D's and the depthwise kernel's
    assert "ReadVariableOp" not in types and "Rsqrt" not in types
    for op in per_channel:
        assert op.inputs[0].op.type in ("Const", "Reshape")
        if op.inputs[0].op.type == "Reshape":  # depthwise: (kh, kw, in * mult)
            assert op.inputs[0].op.inputs[0].op.type == "Const"
    assert types.count("FakeQuantWithMinMaxVars") >= 4  # input, 2 outputs, Dense
    # The model's own graph, folding the variables, computes the same
    # outputs bit for bit.
    trained = tf.function(lambda v: qat(v, training=False))(x)
    np.testing.assert_array_equal(exported, trained)
    # Nothing is cached: new statistics are read at the next trace.
    bn = qat.get_layer("quant_conv2d").batch_norm
    bn.moving_variance.assign(bn.moving_variance * 4.0)
    with conversion_contexts():
        moved = qat(x, training=False)
    np.testing.assert_array_equal(moved, tf.function(lambda v: qat(v, training=False))(x))
    assert not np.array_equal(moved, exported)


def test_affine_and_layer_norm_constants_are_traced_as_constants():
    # A Rescaling, a standalone BatchNormalization and a LayerNormalization
    # hand the file fake-quantized constants (scale, offset, gamma, beta,
    # epsilon): their per-tensor ranges and nudges are computed eagerly, not
    # traced as ~30 ops each that read the variables (KerasHub BERT's export
    # graph: 1,590 ops before, 740 after).
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255, offset=-0.5)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Reshape((36, 8))(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    rng = np.random.default_rng(2)
    for w in model.get_layer("bn").weights + model.get_layer("ln").weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    data = rng.uniform(0, 255, (32, 8, 8, 3)).astype("float32")
    qat = quantize(model, calibration_data=data)
    x = tf.constant(data[:4])
    spec = tf.TensorSpec((None, 8, 8, 3), tf.float32)
    with conversion_contexts():
        graph = tf.function(lambda v: qat(v, training=False)).get_concrete_function(spec).graph
        exported = qat(x, training=False)
    types = {op.type for op in graph.get_operations()}
    # No variable read, no range reduced or nudged in the graph.
    assert not types & {"ReadVariableOp", "Min", "Max", "DivNoNan", "Floor"}, types
    for op in graph.get_operations():
        if op.type == "FakeQuantWithMinMaxVars":
            # Ranges are constants (a per-tensor kernel's: -bound, bound).
            for t in op.inputs[1:]:
                source = t.op.inputs[0].op if t.op.type == "Neg" else t.op
                assert source.type == "Const", (op.name, t.op.type)
    trained = tf.function(lambda v: qat(v, training=False))(x)
    np.testing.assert_array_equal(exported, trained)
