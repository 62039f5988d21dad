"""Float ops inside an integer TFLite body, each with its Keras layer.

`int8_coverage` counts compute ops only (conv, fully connected, ...): a
float MUL/ADD left by a BatchNormalization that was not folded, or a float
recurrent cell, hides behind "100% int8". This module lists *every* op of
the integer body that does not run on integers: the body is what lies
between the first quantized activation (the input's QUANTIZE, an int8 model
input, an int8 embedding lookup) and the model outputs. QUANTIZE / DEQUANTIZE ops are the
conversions themselves and are not listed; integer index arithmetic
(int32 shapes, bool masks) is integer.

Each op is attributed to the Keras layer it came from through the names of
its output tensors (then of its constant inputs): the converter names
tensors after the TF name scopes Keras opens for each layer call, for
example `mlp_1/dense_1/MatMul` for layer `dense` of model `mlp` (the trace
for export appends TF's `_<n>` uniquifier to each scope). With the model's
layer names (as `export_tflite` knows them, wrapped layers included) the
deepest scope naming a layer wins: `quant_dense_1/dense_1/...` is `dense`,
the layer a `QuantizeWrapper` holds. Without them (`inspect_tflite`), the
uniquifier is dropped from the first scope below the model's.

`NO_INT8_KERNEL` lists the builtin ops TFLite has no int8 kernel for:
those stay float in any int8 file and are reported as such, not as islands
a better quantization could remove.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

__all__ = ["NO_INT8_KERNEL", "float_ops", "layer_of"]

#: Builtin TFLite ops with no int8 kernel (float only, or float and int32):
#: they run in float in any int8 file.
NO_INT8_KERNEL = frozenset(
    {
        "CEIL",
        "COS",
        "CUMSUM",
        "DIV",
        "FLOOR",
        "LOG",
        "POW",
        "ROUND",
        "SIN",
        "SQRT",
        "SQUARE",
    }
)

#: The conversion ops at the borders of (and between) integer regions.
_CONVERSIONS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_QUANTIZED = frozenset({"int8", "uint8", "int16"})
_SUFFIX = re.compile(r"_\d+$")


def _is_float(label: str) -> bool:
    return label.startswith("float")


def layer_of(names: list[str], layer_names: Collection[str] | None = None) -> str | None:
    """The Keras layer a TFLite tensor came from, read from its name(s).

    Example:

    >>> layer_of(["mlp_1/dense_1_2/MatMul;mlp_1/dense_1_2/Relu"], {"dense", "dense_1"})
    'dense_1'
    >>> layer_of(["m_1/quant_fc_1/fc_1/MatMul"], {"quant_fc", "fc"})
    'fc'
    >>> layer_of(["text_1/bilstm_1/forward_lstm_1/lstm_cell_3/mul"])
    'bilstm'

    Args:
        names: tensor names to try in order (a fused op's name joins several
            with `;`; the first that names a layer wins).
        layer_names: the model's layer names, when known.

    Returns:
        The layer name, or None when no name carries one.
    """
    for name in names:
        for part in name.split(";"):
            scopes = part.split("/")[1:-1]  # below the model's scope, above the op's
            if not scopes:
                continue
            if layer_names is None:
                return _SUFFIX.sub("", scopes[0])
            found = None
            for scope in scopes:  # the deepest known layer: a wrapped one
                for candidate in (_SUFFIX.sub("", scope), scope):
                    if candidate in layer_names:
                        found = candidate
                        break
            if found is not None:
                return found
    return None


def float_ops(
    ops: list[dict],
    labels: list[str],
    dtype_of: Callable[[int], str],
    name_of: Callable[[int], str],
    is_constant: Callable[[int], bool],
    graph_inputs: Collection[int],
    graph_outputs: Collection[int],
    layer_names: Collection[str] | None = None,
) -> list[dict] | None:
    """Every non-integer op of the integer body, in execution order.

    Args:
        ops: the interpreter's op details, in execution order.
        labels: each op's activation dtype label (`"int8"`, `"float32"`,
            `"float32/int8"` for a hybrid op), as `inspect_tflite` counts.
        dtype_of, name_of: a tensor index's dtype name and name.
        is_constant: whether a tensor index is a constant (a weight).
        graph_inputs, graph_outputs: the model's input and output tensors.
        layer_names: the Keras model's layer names, when known.

    Returns:
        None when the file has no integer body (a float32, float16 or
        dynamic-range file: nothing enters integers), else a list of
        `{"op", "dtype", "layer", "tensor", "int8_kernel"}` dicts, empty
        when every op of the body is integer. `int8_kernel` is False for an
        op TFLite has no int8 kernel for (`NO_INT8_KERNEL`).
    """
    # The integer body starts at every quantized activation: the output of
    # the input's QUANTIZE, an int8 model input, an int8 embedding lookup.
    reached = {
        int(t)
        for op in ops
        for t in op["outputs"]
        if dtype_of(int(t)) in _QUANTIZED
    }
    reached.update(t for t in graph_inputs if dtype_of(t) in _QUANTIZED)
    if not reached:
        return None
    in_body = [False] * len(ops)
    for i, op in enumerate(ops):  # execution order is topological
        if any(int(t) in reached for t in op["inputs"]):
            in_body[i] = True
            reached.update(int(t) for t in op["outputs"])
    # Drop what only leads away from the outputs, and the final DEQUANTIZE.
    needed = set(int(t) for t in graph_outputs)
    for i in reversed(range(len(ops))):
        op = ops[i]
        if any(int(t) in needed for t in op["outputs"]):
            needed.update(int(t) for t in op["inputs"] if int(t) >= 0)
        else:
            in_body[i] = False
    result = []
    for i, op in enumerate(ops):
        name = op["op_name"]
        if not in_body[i] or name in _CONVERSIONS or not _is_float(labels[i]):
            continue
        outputs = [int(t) for t in op["outputs"]]
        constants = [int(t) for t in op["inputs"] if int(t) >= 0 and is_constant(int(t))]
        names = [name_of(t) for t in outputs + constants]
        result.append(
            {
                "op": name,
                "dtype": labels[i],
                "layer": layer_of(names, layer_names),
                "tensor": name_of(outputs[0]) if outputs else "",
                "int8_kernel": name not in NO_INT8_KERNEL,
            }
        )
    return result
