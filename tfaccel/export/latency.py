"""`benchmark_tflite`: invoke() latency of a `.tflite` file with LiteRT."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfaccel.export.validate import validate_tflite

__all__ = ["benchmark_tflite"]


def _table_rows(interpreter: Any) -> int | None:
    """The fewest rows of any table a GATHER reads (token ids index them)."""
    try:
        ops = interpreter._get_ops_details()
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    except (AttributeError, RuntimeError, ValueError):
        return None
    rows = [
        int(tensors[op["inputs"][0]]["shape"][0])
        for op in ops
        if op["op_name"] in ("GATHER", "EMBEDDING_LOOKUP")
        and op["inputs"][0] in tensors
        and len(tensors[op["inputs"][0]]["shape"])
    ]
    return min(rows) if rows else None


def _random_input(
    detail: dict[str, Any], rng: np.random.Generator, rows: int | None = None
) -> np.ndarray:
    shape = [d if d > 0 else 1 for d in detail.get("shape_signature", detail["shape"])]
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        # Integer inputs are indices more often than not: with a GATHER in
        # the file, stay within its smallest table (ids out of range abort).
        info = np.iinfo(dtype)
        low, high = (0, rows) if rows else (info.min, int(info.max) + 1)
        return rng.integers(low, high, size=shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)


def _given_inputs(details: list[dict], inputs: Any) -> list[np.ndarray | None]:
    """`inputs` (an array, a list in input order, a dict by name) per input."""
    if inputs is None:
        return [None] * len(details)
    if isinstance(inputs, Mapping):
        values = []
        for detail in details:
            name = detail["name"].split(":")[0]
            keys = [k for k in inputs if name == k or name.endswith(f"_{k}")]
            if not keys:
                raise ValueError(
                    f"Argument `inputs` has no array for the file's input {name!r}. "
                    f"Received: keys {sorted(inputs)}"
                )
            values.append(np.asarray(inputs[max(keys, key=len)]))
        return values
    arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if len(arrays) != len(details):
        raise ValueError(
            f"Argument `inputs` must hold one array per input of the file "
            f"({len(details)}). Received: {len(arrays)} array(s)"
        )
    return [np.asarray(a) for a in arrays]


def _timings(interpreter: Any, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def benchmark_tflite(
    path: str | os.PathLike | bytes,
    threads: Sequence[int] = (1,),
    runs: int = 50,
    warmup: int = 5,
    inputs: Any = None,
) -> list[dict[str, Any]]:
    """Measures `invoke()` latency of a TFLite file with ai_edge_litert.

    The file is checked by `validate_tflite` first, then run with XNNPACK
    (LiteRT's default delegate), one fresh interpreter per thread count, on
    `inputs` when given, else on random inputs of each input's dtype (integer
    inputs of a file with a GATHER are drawn from `[0, rows)` of its
    smallest table, so token ids stay in range).

    Example:

    >>> import keras, os, tempfile
    >>> from tfaccel.export import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> _ = export_tflite(model, path, verify=False)
    >>> rows = benchmark_tflite(path, threads=[1, 2], runs=5)
    >>> [row["threads"] for row in rows]
    [1, 2]

    Args:
        path: the `.tflite` file, or its bytes.
        threads: interpreter thread counts to measure, one row each.
        runs: timed invocations per thread count (>= 1).
        warmup: untimed invocations first (XNNPACK packs weights lazily).
        inputs: optional real inputs, one batch (e.g. `x[:1]`): an array, a
            list in the order of the file's inputs, or a dict keyed by input
            name (`"token_ids"` matches the file's
            `"serving_default_token_ids:0"`). A dynamic input is resized to it.

    Returns:
        One dict per thread count: `threads`, `runs`, `median_ms`, `p90_ms`,
        `min_ms`, `mean_ms`.

    Raises:
        ValueError: `runs < 1`, `warmup < 0`, a thread count < 1, `inputs`
            that do not match the file's inputs, or the file is not a valid
            TFLite model (`InvalidTFLiteError`).
        RuntimeError: LiteRT refuses to prepare or run the model.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(
            "Arguments `runs` and `warmup` must be >= 1 and >= 0. "
            f"Received: runs={runs}, warmup={warmup}"
        )
    if not threads or any(int(n) < 1 for n in threads):
        raise ValueError(f"Argument `threads` must be integers >= 1. Received: {threads}")
    data = validate_tflite(path)
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    rows = []
    for n in threads:
        interpreter = Interpreter(model_content=data, num_threads=int(n))
        details = interpreter.get_input_details()
        given = _given_inputs(details, inputs)
        for detail, value in zip(details, given):
            signature = detail.get("shape_signature", detail["shape"])
            if value is not None and tuple(value.shape) != tuple(detail["shape"]):
                interpreter.resize_tensor_input(detail["index"], list(value.shape))
            elif value is None and any(d <= 0 for d in signature):
                interpreter.resize_tensor_input(
                    detail["index"], [d if d > 0 else 1 for d in signature]
                )
        interpreter.allocate_tensors()
        table_rows = _table_rows(interpreter)
        for detail, value in zip(details, given):
            if value is None:
                value = _random_input(detail, rng, table_rows)
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        times = _timings(interpreter, runs, warmup)
        rows.append(
            {
                "threads": int(n),
                "runs": runs,
                "median_ms": statistics.median(times),
                "p90_ms": float(np.percentile(times, 90)),
                "min_ms": min(times),
                "mean_ms": statistics.fmean(times),
            }
        )
    return rows
