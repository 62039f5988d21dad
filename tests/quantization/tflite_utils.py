"""Convert with the TFLite converter and read the file back (test helper).

The QAT tests convert with the bare converter, not `tfaccel.export`, so they
test `quantize` alone: `Optimize.DEFAULT` and no representative data set, so
every int8 scale comes from the QAT model's fake-quant ops. They convert in
`export_tflite`'s conversion contexts (fake-quant ops traced bare): the same
graph, without the training gradients SavedModel would otherwise trace.
"""

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfaccel.export.prepare import conversion_contexts

KERNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


def to_int8_tflite(model, int8_io=True):
    # The converter's own path, in the contexts `export_tflite` converts in
    # (fake-quant ops traced bare, without their training gradients).
    with conversion_contexts():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return converter.convert()


def interpreter(content):
    it = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    return it


def ops_with_tensors(it):
    """[(op_name, [input tensor details], [output tensor details])]."""
    details = {t["index"]: t for t in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        ins = [details[i] for i in op["inputs"] if i >= 0]
        outs = [details[i] for i in op["outputs"] if i >= 0]
        out.append((op["op_name"], ins, outs))
    return out


def float_ops(it):
    """Ops (other than QUANTIZE/DEQUANTIZE) touching a float32 tensor."""
    bad = []
    for name, ins, outs in ops_with_tensors(it):
        if name in BOUNDARY_OPS:
            continue
        if any(t["dtype"] == np.float32 for t in ins + outs):
            bad.append(name)
    return bad


def predict_int8(it, x):
    """Run an int8-in/int8-out model over `x`, returning dequantized outputs."""
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    it.resize_tensor_input(inp["index"], (len(x),) + tuple(x.shape[1:]))
    it.allocate_tensors()
    q = np.clip(np.round(x / in_scale + in_zero), -128, 127).astype(np.int8)
    it.set_tensor(inp["index"], q)
    it.invoke()
    y = it.get_tensor(out["index"]).astype(np.float32)
    return (y - out_zero) * out_scale


def file_disagreement(qat, x):
    """Share of output values where the int8 file (default interpreter, as
    apps run it) and the QAT model differ by a step or more."""
    want = qat.predict(x, verbose=0)
    it = Interpreter(model_content=to_int8_tflite(qat, int8_io=False))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    got = []
    for row in x:
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        got.append(it.get_tensor(out["index"])[0])
    last = qat.layers[-1]
    step = float(getattr(last, "output_quantizer", last).inference_scale())
    return float(np.mean(np.abs(np.array(got) - want) > step / 2))
