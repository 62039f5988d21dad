"""`compare_layers`: where an int8 file parts from its QAT Keras model.

`export_tflite` verifies a file on its outputs only. When its top-1
agreement falls short, the question is which layer the int8 file first
computes differently. `compare_layers` runs the file with every
intermediate tensor kept, finds the Keras layer behind each int8 tensor
(the converter names a tensor after the layers whose ops it fused into it)
and measures, on the file's own integer grid, how many of that layer's
outputs the two sides round differently.

What it typically shows for a deep QAT network: the first layers agree
except for outputs that sit within a rounding error of a step boundary
(float arithmetic and a float bias in Keras, integer arithmetic and an
int32 bias rounded to `s_input * s_weight` in the file), and the share of
one-step differences grows with depth as each layer amplifies its inputs'
differences. To tell the two apart, each layer is also run *alone*: on
the file's own (dequantized) inputs of that layer, so only the layer's own
arithmetic differs. A layer that is right matches the file alone to a step
on a rounding boundary, however deep it sits; a modelling error differs
alone too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

__all__ = ["LayerParity", "compare_layers"]


@dataclasses.dataclass(frozen=True)
class LayerParity:
    """One layer's int8 output, the file against the Keras model.

    Attributes:
        layer: the Keras layer's name.
        op: the TFLite op that produces the tensor (e.g. `"CONV_2D"`).
        op_index: the op's position in the file's execution order.
        off_by_one: share of the outputs exactly one step apart.
        off_by_more: share of the outputs two or more steps apart.
        max_steps: the largest difference, in quantization steps.
        alone_differ: share of the outputs that differ when the Keras layer
            is given the file's own inputs of it (not the Keras model's):
            the layer's own error, without what earlier layers passed on.
            None when an input cannot be traced back to the file's tensors
            (see `compare_layers`).
        alone_max_steps: the largest difference then, in steps (or None).
    """

    layer: str
    op: str
    op_index: int
    off_by_one: float
    off_by_more: float
    max_steps: int
    alone_differ: float | None = None
    alone_max_steps: int | None = None

    @property
    def exact(self) -> float:
        """Share of the outputs on the same integer on both sides."""
        return 1.0 - self.off_by_one - self.off_by_more


def _interpreter(path: str | os.PathLike):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from tfaccel.export.validate import validate_tflite

    return Interpreter(
        model_content=validate_tflite(os.fspath(path)),
        experimental_preserve_all_tensors=True,
        # The reference kernels: what the spec computes, not a delegate's.
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
    )


def compare_layers(model: Any, path: str | os.PathLike, x: np.ndarray) -> list[LayerParity]:
    """Compare each layer's int8 output in the file with the Keras model's.

    Runs the `.tflite` file at `path` on `x` (LiteRT's reference kernels,
    every tensor kept), maps each int8 output tensor to the Keras layer of
    `model` it comes from (the last such tensor of each layer whose shape is
    the layer's output shape), and compares the file's integers with the
    Keras layer outputs quantized to the same scale and zero point: end to
    end (`off_by_one`, `off_by_more`), and with the layer alone on the
    file's own inputs (`alone_differ`): each input is a compared layer's
    tensor, or made from such tensors by layers without weights (padding,
    pooling, reshapes), which Keras computes. A layer whose only consumer
    is an `ActivationQuantizer` is compared after it, as the QAT model
    carries its value on.

    Example:

    >>> rows = compare_layers(qat_model, "model_int8.tflite", x_test[:32])  # doctest: +SKIP
    >>> [r.layer for r in rows if r.off_by_more > 0.01][:1]                  # doctest: +SKIP
    ['quant_block_1_expand']

    Args:
        model: the Keras model the file was exported from (a QAT model for
            an int8 file), single input, functional or Sequential.
        path: the `.tflite` file.
        x: a batch of float inputs (numpy), as the Keras model takes them.

    Returns:
        A list of `LayerParity` in the file's execution order; empty when no
        int8 tensor names a layer of `model`.

    Raises:
        ValueError: `model` or the file does not have exactly one input,
            or `x` does not match the file's input shape.
        tfaccel.export.validate.InvalidTFLiteError: not a valid TFLite file.
    """
    import keras

    from tfaccel.export.islands import layer_of
    from tfaccel.export.run import to_file_dtype

    if len(model.inputs) != 1:
        raise ValueError(
            "`compare_layers` takes a single-input model. Received: model with "
            f"{len(model.inputs)} inputs"
        )
    x = np.asarray(x, np.float32)
    interpreter = _interpreter(path)
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        raise ValueError(
            "`compare_layers` takes a single-input file. Received: a file with "
            f"{len(inputs)} inputs"
        )
    detail = inputs[0]
    if x.shape[1:] != tuple(detail["shape"][1:]):
        raise ValueError(
            f"`x` must be a batch of the file's input shape "
            f"{tuple(detail['shape'][1:])}. Received: x.shape={x.shape}"
        )
    interpreter.resize_tensor_input(detail["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], to_file_dtype(x, detail))
    interpreter.invoke()

    layers = {layer.name: layer for layer in model.layers}
    names_known = set(layers)
    found: dict[str, tuple[int, str, int]] = {}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - LiteRT's op table
        for index in op["outputs"]:
            tensor = interpreter._get_tensor_details(index, 0)  # noqa: SLF001
            scale, _ = tensor["quantization"]
            if np.dtype(tensor["dtype"]) != np.int8 or not scale:
                continue
            name = layer_of([tensor["name"]], names_known)
            if name is None:
                continue
            want = tuple(layers[name].output.shape[1:])
            if tuple(tensor["shape"][1:]) == want:
                found[name] = (op["index"], op["op_name"], index)
    if not found:
        return []
    names = sorted(found, key=lambda n: found[n][0])
    # The value the QAT model carries on: a layer whose only consumer is an
    # ActivationQuantizer (a pooling, an Add) is compared after it, clipped
    # to the range the file holds too.
    carried = {n: _quantizer_after(layers[n]) for n in names}
    probe = keras.Model(model.inputs, [
        (carried[n] or layers[n]).output for n in names])
    outputs = probe.predict(x, verbose=0, batch_size=len(x))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]

    # Each compared tensor's integers and grid, read once from the file.
    grids = {}
    for name in names:
        index = found[name][2]
        scale, zero_point = interpreter._get_tensor_details(index, 0)["quantization"]  # noqa: SLF001
        grids[name] = (interpreter.get_tensor(index).astype(np.int64), scale, zero_point)

    def steps(name, value):
        have, scale, zero_point = grids[name]
        # Not clipped to int8: a Keras value beyond the file's range is a difference.
        keras_q = np.round(np.asarray(value) / scale) + zero_point
        return np.abs(keras_q.astype(np.int64) - have)

    def file_value(name):
        have, scale, zero_point = grids[name]
        return ((have - zero_point) * scale).astype(np.float32)

    rows = []
    for name, want in zip(names, outputs):
        op_index, op_name, _ = found[name]
        diff = steps(name, want)
        alone = _alone(layers[name], found, file_value)
        if alone is not None and carried[name] is not None:
            alone = np.asarray(carried[name](alone, training=False))
        alone_diff = None if alone is None else steps(name, alone)
        rows.append(LayerParity(
            layer=name, op=op_name, op_index=int(op_index),
            off_by_one=float(np.mean(diff == 1)),
            off_by_more=float(np.mean(diff >= 2)),
            max_steps=int(diff.max()) if diff.size else 0,
            alone_differ=None if alone_diff is None else float(np.mean(alone_diff > 0)),
            alone_max_steps=(None if alone_diff is None
                             else int(alone_diff.max()) if alone_diff.size else 0),
        ))
    return rows


def _quantizer_after(layer):
    """The ActivationQuantizer that is the only consumer of `layer`, if any."""
    from tfaccel.quantization.activations import ActivationQuantizer

    nodes = getattr(layer, "_outbound_nodes", [])
    if len(getattr(layer, "_inbound_nodes", [])) != 1 or len(nodes) != 1:
        return None
    consumer = nodes[0].operation
    return consumer if isinstance(consumer, ActivationQuantizer) else None


def _alone(layer, found: dict, file_value, depth: int = 0) -> np.ndarray | None:
    """`layer`'s Keras output on the file's own tensors of its inputs.

    An input that no compared tensor holds but that a layer without weights
    (or an `ActivationQuantizer`) makes from them (a ZeroPadding2D the
    converter folded into the next convolution, a Reshape, a Dropout) is
    computed by that layer on the file's tensors in turn. None when the
    layer is called more than once, or an input cannot be traced back that
    way (a model input, a float op).
    """
    import keras

    from tfaccel.quantization.activations import ActivationQuantizer

    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1 or not nodes[0].input_tensors:
        return None
    node = nodes[0]
    values = {}
    for tensor in node.input_tensors:
        producer = tensor._keras_history.operation  # noqa: SLF001
        if producer.name in found:
            values[id(tensor)] = file_value(producer.name)
            continue
        # Layers with weights compute: their own rows. An ActivationQuantizer's
        # weights are its range, which the file's tensor already sits on.
        computes = getattr(producer, "weights", None) and not isinstance(
            producer, ActivationQuantizer)
        if depth >= 4 or computes or isinstance(producer, keras.layers.InputLayer):
            return None
        value = _alone(producer, found, file_value, depth + 1)
        if value is None:
            return None
        values[id(tensor)] = value
    # The call's own structure (a list for Add), its tensors replaced.
    args, kwargs = keras.tree.map_structure(
        lambda v: values[id(v)] if isinstance(v, keras.KerasTensor) else v,
        (node.arguments.args, node.arguments.kwargs),
    )
    if isinstance(layer, keras.layers.Layer):
        kwargs = {**kwargs, "training": False}
    return np.asarray(layer(*args, **kwargs))  # a `keras.ops` call: no `training`
