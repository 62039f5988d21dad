"""`validate_tflite`: one check of an untrusted `.tflite` file before use.

LiteRT's interpreter and its XNNPACK delegate trust the flatbuffer they are
given: an out-of-range zero point, a scale of zero or NaN, a tensor index
past the end or a buffer that overlaps the end of the file can crash the
process, or run and return nonsense without an error. `validate_tflite`
walks the file with bounds checks on every read (its own small flatbuffer
reader, following the TFLite schema, version 3) and raises
`InvalidTFLiteError` naming the file and the first problem, *before* any
interpreter or delegate touches the bytes. `inspect_tflite`, the latency
measurement, export verification and the `tfaccel` command all call it.

Vectors are read only after their length is checked against the file size,
and each table is visited once, so the walk is linear in the file size.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

__all__ = ["InvalidTFLiteError", "validate_tflite"]

# TensorType code -> (name, bits per element, zero point range or None).
# Integer types carry zero points in their own range; others never do.
_TYPES: dict[int, tuple[str, int, tuple[int, int] | None]] = {
    0: ("float32", 32, None),
    1: ("float16", 16, None),
    2: ("int32", 32, (-(2**31), 2**31 - 1)),
    3: ("uint8", 8, (0, 255)),
    4: ("int64", 64, (-(2**63), 2**63 - 1)),
    5: ("string", 0, None),
    6: ("bool", 8, None),
    7: ("int16", 16, (-(2**15), 2**15 - 1)),
    8: ("complex64", 64, None),
    9: ("int8", 8, (-128, 127)),
    10: ("float64", 64, None),
    11: ("complex128", 128, None),
    12: ("uint64", 64, (0, 2**64 - 1)),
    13: ("resource", 0, None),
    14: ("variant", 0, None),
    15: ("uint32", 32, (0, 2**32 - 1)),
    16: ("uint16", 16, (0, 2**16 - 1)),
    17: ("int4", 4, (-8, 7)),
    18: ("bfloat16", 16, None),
    19: ("int2", 2, (-2, 1)),
    20: ("uint4", 4, (0, 15)),
    21: ("float8_e4m3fn", 8, None),
    22: ("float8_e5m2", 8, None),
}
_SCHEMA_VERSION = 3
# A tensor over 2 GiB cannot be described by a flatbuffer model that runs
# here; such shapes only make `allocate_tensors` try to allocate terabytes.
_MAX_TENSOR_BYTES = 2**31
_MAX_RANK = 16


class InvalidTFLiteError(ValueError):
    """A `.tflite` file that is not a well-formed TFLite model.

    Example:

    >>> try:
    ...     validate_tflite(b"not a model")
    ... except InvalidTFLiteError as e:
    ...     print(e.problem)
    the content is 11 bytes, too short for a TFLite flatbuffer

    Attributes:
        source: the file's path, or `"<bytes>"` for in-memory content.
        problem: what is wrong, without the file name.
    """

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source} is not a valid TFLite model: {problem}")
        self.source = source
        self.problem = problem

    def __reduce__(self):  # picklable across the CLI's child processes
        return (type(self), (self.source, self.problem))


class _Problem(Exception):
    """Internal: raised by the reader, turned into `InvalidTFLiteError`."""


class _Buffer:
    """Bounds-checked little-endian reads of flatbuffer primitives."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def read(self, fmt: str, pos: int, what: str) -> Any:
        width = struct.calcsize(fmt)
        if pos < 0 or pos + width > self.size:
            raise _Problem(f"{what} at byte {pos} lies outside the file")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int, what: str) -> _Table:
        vtable = pos - self.read("<i", pos, what)
        vtable_size = self.read("<H", vtable, f"{what} (vtable)")
        table_size = self.read("<H", vtable + 2, f"{what} (vtable)")
        if vtable_size < 4 or vtable_size % 2 or vtable + vtable_size > self.size:
            raise _Problem(f"{what} has a corrupt vtable")
        if pos + table_size > self.size:
            raise _Problem(f"{what} at byte {pos} lies outside the file")
        return _Table(self, pos, vtable, vtable_size, table_size, what)


class _Table:
    """One flatbuffer table; fields are looked up by vtable slot."""

    def __init__(self, buf: _Buffer, pos, vtable, vtable_size, table_size, what):
        self.buf, self.pos, self.what = buf, pos, what
        self.vtable, self.vtable_size, self.table_size = vtable, vtable_size, table_size

    def _field(self, slot: int) -> int:
        """Absolute position of field `slot` (0-based), or 0 when absent."""
        entry = 4 + 2 * slot
        if entry + 2 > self.vtable_size:
            return 0
        offset = self.buf.read("<H", self.vtable + entry, self.what)
        if offset and offset >= self.table_size:
            raise _Problem(f"{self.what} field {slot} lies outside its table")
        return self.pos + offset if offset else 0

    def scalar(self, slot: int, fmt: str, default: Any = 0) -> Any:
        pos = self._field(slot)
        return self.buf.read(fmt, pos, self.what) if pos else default

    def _target(self, slot: int, what: str) -> int | None:
        pos = self._field(slot)
        if not pos:
            return None
        return pos + self.buf.read("<I", pos, what)

    def table(self, slot: int, what: str) -> _Table | None:
        pos = self._target(slot, what)
        return None if pos is None else self.buf.table(pos, what)

    def vector(self, slot: int, fmt: str, what: str) -> list[Any]:
        """The elements of a vector of scalars (`[]` when absent)."""
        start, length = self._vector(slot, struct.calcsize(fmt), what)
        return list(struct.unpack_from(f"<{length}{fmt[-1]}", self.buf.data, start))

    def length(self, slot: int, what: str) -> int:
        return self._vector(slot, 1, what)[1]

    def tables(self, slot: int, what: str) -> list[_Table]:
        start, length = self._vector(slot, 4, what)
        return [
            self.buf.table(start + 4 * i + self.buf.read("<I", start + 4 * i, what),
                           f"{what}[{i}]")
            for i in range(length)
        ]

    def _vector(self, slot: int, width: int, what: str) -> tuple[int, int]:
        pos = self._target(slot, what)
        if pos is None:
            return 0, 0
        length = self.buf.read("<I", pos, what)
        if pos + 4 + length * width > self.buf.size:
            raise _Problem(f"{what} claims {length:,} elements past the end of the file")
        return pos + 4, length


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise _Problem(problem)


def _check_quantization(q: _Table, what: str, dtype: int, shape: list[int]) -> None:
    name, bits, zero_range = _TYPES[dtype]
    scales = q.vector(2, "<f", f"{what} scales")
    zero_points = q.vector(3, "<q", f"{what} zero points")
    for label, values in (("min", q.vector(0, "<f", what)),
                          ("max", q.vector(1, "<f", what))):
        for v in values:
            _check(math.isfinite(v), f"{what} has a non-finite quantization {label}: {v}")
    for s in scales:
        _check(math.isfinite(s) and s > 0,
               f"{what} has quantization scale {s}; scales must be finite and > 0")
    if zero_points:
        _check(len(zero_points) == len(scales),
               f"{what} has {len(scales)} scales but {len(zero_points)} zero points")
    if zero_points and zero_range is not None:
        # TFLite's int16/int32/int64 quantization is symmetric (zero point 0).
        low, high = zero_range if bits <= 8 else (0, 0)
        for z in zero_points:
            _check(low <= z <= high,
                   f"{what} ({name}) has zero point {z}, outside [{low}, {high}]")
    dim = q.scalar(6, "<i", 0)
    _check(0 <= dim < max(len(shape), 1),
           f"{what} has quantized_dimension {dim} for a rank-{len(shape)} tensor")
    if len(scales) > 1:
        _check(shape[dim] == len(scales),
               f"{what} has {len(scales)} per-channel scales for dimension {dim} "
               f"of size {shape[dim]}")


def _buffer_sizes(model: _Table, size: int) -> list[int | None]:
    """Byte size of each buffer's data (None: empty)."""
    sizes: list[int | None] = []
    for i, buffer in enumerate(model.tables(4, "buffers")):
        length = buffer.length(0, f"buffers[{i}].data")
        offset = buffer.scalar(1, "<Q", 0)
        external = buffer.scalar(2, "<Q", 0)
        if offset > 1:
            _check(offset + external <= size,
                   f"buffers[{i}] spans bytes {offset}..{offset + external}, past "
                   f"the end of the {size}-byte file")
            length = external
        sizes.append(length or None)
    return sizes


def _check_tensor(t: _Table, what: str, buffers: list[int | None]) -> None:
    dtype = t.scalar(1, "<b", 0)
    _check(dtype in _TYPES, f"{what} has unknown type code {dtype}")
    shape = t.vector(0, "<i", f"{what} shape")
    _check(len(shape) <= _MAX_RANK, f"{what} has rank {len(shape)} > {_MAX_RANK}")
    _check(all(d >= 0 for d in shape), f"{what} has a negative dimension: {shape}")
    signature = t.vector(7, "<i", f"{what} shape_signature")
    if signature:
        _check(len(signature) == len(shape) and all(d >= -1 for d in signature),
               f"{what} has shape_signature {signature} for shape {shape}")
    name, bits, _ = _TYPES[dtype]
    elements = math.prod(shape)
    _check(elements * max(bits, 8) // 8 <= _MAX_TENSOR_BYTES,
           f"{what} has shape {shape}: over {_MAX_TENSOR_BYTES:,} bytes")
    index = t.scalar(2, "<I", 0)
    _check(index < len(buffers),
           f"{what} uses buffer {index}, but the file has {len(buffers)} buffers")
    data_bytes = buffers[index]
    sparse = t.table(6, f"{what} sparsity") is not None
    if data_bytes is not None and bits and not sparse and bits >= 8:
        expected = elements * bits // 8
        _check(data_bytes == expected,
               f"{what} ({name}{shape}) needs {expected} bytes of data, its buffer "
               f"{index} holds {data_bytes}")
    q = t.table(4, f"{what} quantization")
    if q is not None:
        _check_quantization(q, what, dtype, shape)


def _check_indices(values: list[int], n: int, what: str, optional: bool) -> None:
    low = -1 if optional else 0
    for v in values:
        _check(low <= v < n, f"{what} refers to tensor {v}; valid: 0..{n - 1}")


def _check_model(buf: _Buffer) -> None:
    _check(buf.size >= 8 and buf.data[4:8] == b"TFL3",
           "no 'TFL3' file identifier at bytes 4..8")
    model = buf.table(buf.read("<I", 0, "root offset"), "model")
    version = model.scalar(0, "<I", 0)
    _check(version == _SCHEMA_VERSION,
           f"schema version {version}; expected {_SCHEMA_VERSION}")
    codes = model.tables(1, "operator_codes")
    for i, code in enumerate(codes):
        builtin = max(code.scalar(0, "<b", 0), code.scalar(3, "<i", 0))
        _check(builtin >= 0, f"operator_codes[{i}] has builtin code {builtin}")
        code.length(1, f"operator_codes[{i}].custom_code")
    buffers = _buffer_sizes(model, buf.size)
    subgraphs = model.tables(2, "subgraphs")
    _check(len(subgraphs) > 0, "it has no subgraph")
    checked: set[int] = set()
    for g, subgraph in enumerate(subgraphs):
        where = f"subgraphs[{g}]"
        tensors = subgraph.tables(0, f"{where}.tensors")
        for i, tensor in enumerate(tensors):
            if tensor.pos not in checked:  # a shared table is checked once
                checked.add(tensor.pos)
                tensor.length(3, f"{where}.tensors[{i}].name")
                _check_tensor(tensor, f"tensor {i} of subgraph {g}", buffers)
        n = len(tensors)
        _check_indices(subgraph.vector(1, "<i", where), n, f"{where} input", False)
        _check_indices(subgraph.vector(2, "<i", where), n, f"{where} output", False)
        for k, op in enumerate(subgraph.tables(3, f"{where}.operators")):
            what = f"operator {k} of subgraph {g}"
            index = op.scalar(0, "<I", 0)
            _check(index < len(codes),
                   f"{what} uses opcode {index}, but the file has {len(codes)}")
            for slot, role in ((1, "input"), (2, "output"), (8, "intermediate")):
                values = op.vector(slot, "<i", f"{what} {role}s")
                _check_indices(values, n, f"{what} {role}", optional=role == "input")
            op.table(4, f"{what} options")
            op.length(5, f"{what} custom options")
    for i, signature in enumerate(model.tables(7, "signature_defs")):
        g = signature.scalar(4, "<I", 0)
        _check(g < len(subgraphs),
               f"signature_defs[{i}] refers to subgraph {g} of {len(subgraphs)}")
        n = subgraphs[g].length(0, "tensors")
        for slot in (0, 1):
            for entry in signature.tables(slot, f"signature_defs[{i}] tensors"):
                _check_indices([entry.scalar(1, "<I", 0)], n,
                               f"signature_defs[{i}]", optional=False)
    for i, meta in enumerate(model.tables(6, "metadata")):
        index = meta.scalar(1, "<I", 0)
        _check(index < len(buffers), f"metadata[{i}] uses missing buffer {index}")


def validate_tflite(path_or_bytes: str | os.PathLike | bytes) -> bytes:
    """Reads and validates a TFLite flatbuffer; returns its bytes.

    Checks, without running anything: the `TFL3` identifier and schema
    version; that every table, vector, string and buffer lies inside the
    file; tensor types, shapes and sizes (constant data matching its shape);
    quantization (scales finite and > 0, as many zero points as scales, zero
    points within the tensor dtype's range, a valid quantized dimension);
    and that operator, subgraph, signature and metadata indices point at
    things that exist.

    Example:

    >>> import keras, os, tempfile
    >>> from tfaccel.export import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> _ = export_tflite(model, path, verify=False)
    >>> data = validate_tflite(path)
    >>> validate_tflite(data[:100])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tfaccel.export.validate.InvalidTFLiteError: <bytes> is not a valid TFLite model: ...

    Args:
        path_or_bytes: a `.tflite` file path, or the model's bytes.

    Returns:
        The file's bytes, safe to hand to a LiteRT interpreter.

    Raises:
        InvalidTFLiteError: the content is not a well-formed TFLite model.
        FileNotFoundError: the path does not exist.
        IsADirectoryError: the path is a directory.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, source = bytes(path_or_bytes), "<bytes>"
    else:
        source = os.fspath(path_or_bytes)
        if os.path.isdir(source):
            raise IsADirectoryError(
                f"expected a .tflite file. Received a directory: {source}"
            )
        with open(source, "rb") as f:
            data = f.read()
    if len(data) < 16:
        raise InvalidTFLiteError(
            source, f"the content is {len(data)} bytes, too short for a TFLite flatbuffer"
        )
    try:
        _check_model(_Buffer(data))
    except _Problem as e:
        raise InvalidTFLiteError(source, str(e)) from None
    return data
