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
