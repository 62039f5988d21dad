"""`inspect_tflite`: the structural facts of any `.tflite` file.

The file is loaded with LiteRT's interpreter using the builtin op resolver
*without* default delegates: XNNPACK would take ownership of the constant
weights and hide them from `get_tensor`, and we need them to count zeros.
"""

from __future__ import annotations

import collections
import gzip
import os
from collections.abc import Collection
from typing import Any

import numpy as np

from tfaccel.export.islands import float_ops
from tfaccel.export.report import ExportReport
from tfaccel.export.validate import InvalidTFLiteError, validate_tflite

# Op name -> input index of its weight tensor.
_WEIGHT_INPUT = {
    "CONV_2D": 1,
    "CONV_3D": 1,
    "DEPTHWISE_CONV_2D": 1,
    "FULLY_CONNECTED": 1,
    "TRANSPOSE_CONV": 1,
    "BATCH_MATMUL": 1,
    "EMBEDDING_LOOKUP": 1,
}
# Ops whose arithmetic int8 coverage counts.
_COMPUTE_OPS = frozenset(_WEIGHT_INPUT) - {"EMBEDDING_LOOKUP"}
_INTEGER_ACTIVATIONS = frozenset({"int8", "uint8"})


def _interpreter(data: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=data,
        experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        ),
    )
    interpreter.allocate_tensors()
    return interpreter


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _zero_fraction(values: np.ndarray, details: dict) -> tuple[int, int]:
    """(zeros, size); a quantized value is zero when it equals its zero point."""
    values = np.asarray(values)
    params = details.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []))
    zero_points = np.asarray(params.get("zero_points", []))
    if np.issubdtype(values.dtype, np.integer) and scales.size:
        if zero_points.size > 1 and values.ndim:
            axis = int(params.get("quantized_dimension", 0))
            shape = [1] * values.ndim
            shape[axis] = zero_points.size
            zero = zero_points.reshape(shape)
        else:
            zero = zero_points.reshape(()) if zero_points.size else 0
        return int(np.count_nonzero(values == zero)), int(values.size)
    return int(values.size - np.count_nonzero(values)), int(values.size)


def _io(details: list[dict]) -> list[dict[str, Any]]:
    return [
        {
            "name": d["name"],
            "shape": [int(s) for s in d.get("shape_signature", d["shape"])],
            "dtype": _dtype_name(d["dtype"]),
        }
        for d in details
    ]


def _infer_quantization(ops: dict, constant_dtypes: set[str]) -> str:
    labels = collections.Counter()
    for op, by_dtype in ops.items():
        if op in _COMPUTE_OPS:
            labels.update(by_dtype)
    if not labels:
        return "float16" if "float16" in constant_dtypes else "float32"
    if set(labels) <= _INTEGER_ACTIVATIONS | {"int16"}:
        return "int8"
    if any("/" in label for label in labels):
        return "dynamic"
    if set(labels) == {"float32"}:
        return "float16" if "float16" in constant_dtypes else "float32"
    return "mixed"


def analyze(
    data: bytes,
    path: str | None = None,
    layer_names: Collection[str] | None = None,
) -> ExportReport:
    """The structural report of TFLite flatbuffer `data` (see `inspect_tflite`).

    `layer_names` (the Keras model's, when known) attributes float ops to
    layers exactly (see `tfaccel.export.islands.layer_of`).
    """
    interpreter = _interpreter(data)
    ops_details = interpreter._get_ops_details()
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}

    def tensor(index: int) -> dict:
        if index not in tensors:
            tensors[index] = interpreter._get_tensor_details(index, 0)
        return tensors[index]

    produced = {}
    for op in ops_details:
        for out in op["outputs"]:
            produced[int(out)] = op
    graph_inputs = {int(d["index"]) for d in interpreter.get_input_details()}

    def is_constant(index: int) -> bool:
        return index >= 0 and index not in produced and index not in graph_inputs

    def weight_source(index: int) -> int | None:
        """The constant behind a weight input, looking through DEQUANTIZE."""
        if is_constant(index):
            return index
        op = produced.get(index)
        if op is not None and op["op_name"] == "DEQUANTIZE":
            source = int(op["inputs"][0])
            return source if is_constant(source) else None
        return None

    ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    weights: dict[int, str] = {}
    constant_dtypes: set[str] = set()
    labels: list[str] = []
    for op in ops_details:
        name = op["op_name"]
        inputs = [int(i) for i in op["inputs"] if int(i) >= 0]
        for i in inputs:
            if is_constant(i):
                constant_dtypes.add(_dtype_name(tensor(i)["dtype"]))
        variable_inputs = [i for i in inputs if not is_constant(i)]
        first = (variable_inputs or inputs or [None])[0]
        label = _dtype_name(tensor(first)["dtype"]) if first is not None else "none"
        position = _WEIGHT_INPUT.get(name)
        if position is not None and len(op["inputs"]) > position:
            raw = int(op["inputs"][position])
            source = weight_source(raw) if raw >= 0 else None
            if source is not None:
                weights[source] = name
                weight_dtype = _dtype_name(tensor(source)["dtype"])
                if name == "EMBEDDING_LOOKUP":
                    label = weight_dtype
                elif (
                    source == raw
                    and weight_dtype != label
                    and label.startswith("float")
                    and weight_dtype in _INTEGER_ACTIVATIONS
                ):
                    label = f"{label}/{weight_dtype}"  # hybrid (dynamic range)
        ops[name][label] += 1
        labels.append(label)

    tensor_sparsity: dict[str, float] = {}
    zeros = total = 0
    for index in sorted(weights):
        details = tensor(index)
        z, n = _zero_fraction(interpreter.get_tensor(index), details)
        zeros += z
        total += n
        key = details["name"] or f"tensor_{index}"
        tensor_sparsity[key] = z / n if n else 0.0

    compute = [
        (label, count)
        for op, by_dtype in ops.items()
        if op in _COMPUTE_OPS
        for label, count in by_dtype.items()
    ]
    n_compute = sum(count for _, count in compute)
    int8 = sum(count for label, count in compute if label in _INTEGER_ACTIVATIONS)
    ops_plain = {op: dict(by_dtype) for op, by_dtype in ops.items()}
    islands = float_ops(
        ops_details,
        labels,
        dtype_of=lambda index: _dtype_name(tensor(index)["dtype"]),
        name_of=lambda index: tensor(index)["name"],
        is_constant=is_constant,
        graph_inputs=graph_inputs,
        graph_outputs={int(d["index"]) for d in interpreter.get_output_details()},
        layer_names=layer_names,
    )
    return ExportReport(
        path=path,
        quantization=_infer_quantization(ops_plain, constant_dtypes),
        bytes=len(data),
        gzip_bytes=len(gzip.compress(data, compresslevel=9, mtime=0)),
        sparsity=(zeros / total) if total else None,
        tensor_sparsity=tensor_sparsity,
        ops=ops_plain,
        int8_coverage=(int8 / n_compute) if n_compute else None,
        float_ops=islands,
        inputs=_io(interpreter.get_input_details()),
        outputs=_io(interpreter.get_output_details()),
    )


def inspect_tflite(path: str | os.PathLike | bytes) -> ExportReport:
    """Read the structure of a `.tflite` file.

    Counts ops by type and activation dtype, measures size and gzip size,
    the fraction of zero weights in the conv / fully-connected / depthwise /
    embedding weight tensors, int8 coverage (the fraction of compute ops
    running on int8) and, for an integer file, `float_ops`: every op between
    the input's QUANTIZE and the output's DEQUANTIZE that is not integer,
    with the Keras layer its tensor names point to (see
    `tfaccel.export.islands`). The parity fields of the returned report stay `None`:
    only `export_tflite` knows the Keras model to compare with.

    Example:

    >>> import keras, tempfile, os
    >>> from tfaccel.export import export_tflite, inspect_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> _ = export_tflite(model, path, verify=False)
    >>> inspect_tflite(path).ops
    {'FULLY_CONNECTED': {'float32': 1}}

    Args:
        path: path of a `.tflite` file, or its bytes.

    Returns:
        An `ExportReport` with `quantization` inferred from the file:
        `"int8"` (all compute ops integer), `"dynamic"` (hybrid ops),
        `"float16"` (float16 weights), `"float32"`, or `"mixed"`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is a directory, or the content is not a
            well-formed TFLite model (`validate_tflite` runs first, so a
            crafted file is refused before the interpreter reads it).
    """
    where = None if isinstance(path, (bytes, bytearray)) else os.fspath(path)
    if where is not None and os.path.isdir(where):
        raise ValueError(
            "Argument `path` must be a .tflite file. Received: "
            f"path={where!r}, which is a directory."
        )
    try:
        # Untrusted bytes are checked before the interpreter parses them.
        data = validate_tflite(path)
        return analyze(data, where)
    except (InvalidTFLiteError, RuntimeError, ValueError) as e:
        problem = e.problem if isinstance(e, InvalidTFLiteError) else str(e)
        raise ValueError(
            "Argument `path` must hold a TFLite flatbuffer model. Received: "
            f"path={where if where is not None else '<bytes>'!r} ({problem})."
        ) from e
