"""`benchmark_tflite`: invoke() latency of a `.tflite` file with LiteRT."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfaccel.export.validate import validate_tflite

__all__ = ["benchmark_tflite"]


def _random_input(detail: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    shape = [d if d > 0 else 1 for d in detail.get("shape_signature", detail["shape"])]
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.standard_normal(shape).astype(dtype)


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
) -> list[dict[str, Any]]:
    """Measures `invoke()` latency of a TFLite file with ai_edge_litert.

    The file is checked by `validate_tflite` first, then run with XNNPACK
    (LiteRT's default delegate) on random inputs of each input's dtype, one
    fresh interpreter per thread count.

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

    Returns:
        One dict per thread count: `threads`, `runs`, `median_ms`, `p90_ms`,
        `min_ms`, `mean_ms`.

    Raises:
        ValueError: `runs < 1`, `warmup < 0`, a thread count < 1, or the
            file is not a valid TFLite model (`InvalidTFLiteError`).
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
        for detail in interpreter.get_input_details():
            signature = detail.get("shape_signature", detail["shape"])
            if any(d <= 0 for d in signature):
                interpreter.resize_tensor_input(
                    detail["index"], [d if d > 0 else 1 for d in signature]
                )
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], _random_input(detail, rng))
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
