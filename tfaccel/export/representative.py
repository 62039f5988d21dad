"""Normalize representative and verification data for TFLite export.

Users hand `export_tflite` data in many shapes: a NumPy array of samples, a
`tf.data.Dataset` of `(x, y)` batches (the one they trained on), a generator
of batches, or the TFLite-style callable yielding `[x]` lists. This module
turns all of them into one array per model input, stacked along the batch
axis and checked against the model's input signature, so that calibration
and verification see exactly the same validated samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "__array__") or isinstance(value, (int, float, np.number))


def _input_specs(model) -> list[tuple[str, tuple, str]]:
    """`(name, shape, dtype)` for each model input, batch dimension included."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "Argument `model` must be a built Keras model with known inputs "
            "(a functional or Sequential model, or a subclassed model called "
            f"once). Received: model={model!r} with no inputs."
        )
    specs = []
    for tensor in inputs:
        dtype = str(getattr(tensor, "dtype", "float32"))
        specs.append((tensor.name, tuple(tensor.shape), dtype))
    return specs


def _split_element(element: Any, specs: list, argname: str) -> list[Any]:
    """One dataset element -> one array-like per model input (labels dropped)."""
    n = len(specs)
    if isinstance(element, Mapping):
        names = [name for name, _, _ in specs]
        if all(name in element for name in names):
            return [element[name] for name in names]
        if n == 1 and len(element) == 1:
            return list(element.values())
        raise ValueError(
            f"Argument `{argname}` yielded a dict whose keys do not name the "
            f"model inputs. Expected keys: {names}. Received keys: "
            f"{sorted(element)}."
        )
    if isinstance(element, (tuple, list)):
        if not element:
            raise ValueError(
                f"Argument `{argname}` yielded an empty {type(element).__name__}. "
                "Expected an array (or a tuple `(x, y)` or list `[x]`)."
            )
        if n > 1 and len(element) == n and all(_is_array_like(e) for e in element):
            return list(element)
        first = element[0]
        if isinstance(first, (tuple, list, Mapping)):
            return _split_element(first, specs, argname)
        if n == 1:
            # `[x]` (TFLite style) or `(x, y)` / `(x, y, sample_weight)`.
            return [first]
        raise ValueError(
            f"Argument `{argname}` must give {n} arrays per element for a model "
            f"with {n} inputs. Received: a {type(element).__name__} of "
            f"{len(element)} items."
        )
    return [element]


def _check_array(value: Any, spec: tuple, argname: str) -> np.ndarray:
    name, shape, dtype = spec
    try:
        array = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - reported with the argument name
        raise TypeError(
            f"Argument `{argname}` must hold numeric arrays. Received: a value "
            f"of type {type(value).__name__} ({e})."
        ) from e
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(
            f"Argument `{argname}` must hold numeric arrays for input "
            f"'{name}' (dtype {dtype}). Received: an array of dtype "
            f"{array.dtype}."
        )
    if array.ndim == len(shape) - 1:
        array = array[None, ...]  # a single sample without batch axis
    expected = "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
    if array.ndim != len(shape) or any(
        d is not None and d != a for d, a in zip(shape[1:], array.shape[1:])
    ):
        raise ValueError(
            f"Argument `{argname}` has the wrong shape for input '{name}'. "
            f"Expected batches of shape {expected} (or single samples of shape "
            f"{expected.replace('(None, ', '(', 1)}). Received: shape "
            f"{tuple(array.shape)}."
        )
    array = array.astype(dtype, copy=False)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"Argument `{argname}` must contain only finite values. Received: "
            f"{bad} NaN/inf value(s) for input '{name}'."
        )
    return array


def _elements(data: Any, specs: list) -> Any:
    """An iterable over batches, or the whole data as a single element."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        return data.as_numpy_iterator()
    if isinstance(data, Mapping) or _is_array_like(data):
        return [data]
    if isinstance(data, (tuple, list)) and len(specs) > 1 and len(data) == len(specs):
        if all(_is_array_like(d) for d in data):
            return [list(data)]  # one array per input
    if callable(data):
        return data()
    return data


def normalize_data(
    data: Any, model, argname: str, max_samples: int | None = None
) -> list[np.ndarray] | None:
    """Stack `data` into one validated array per model input.

    Args:
        data: `None`, a NumPy array (or tensor) of samples, a dict keyed by
            input name, a `tf.data.Dataset`, a generator or iterable of
            batches (each an array, `[x]`, `(x, y)` or dict), or a callable
            returning such an iterable (the TFLite `representative_dataset`
            convention).
        model: the Keras model whose inputs the data must match.
        argname: the argument name used in error messages.
        max_samples: keep at most this many samples (`None`: all).

    Returns:
        `None` when `data` is `None`, else a list with one array of shape
        `(num_samples, ...)` per model input, cast to the input dtype.

    Raises:
        TypeError: non-numeric data.
        ValueError: wrong shape, NaN/inf values, or no samples at all.
    """
    if data is None:
        return None
    specs = _input_specs(model)
    try:
        elements = iter(_elements(data, specs))
    except TypeError as e:
        raise TypeError(
            f"Argument `{argname}` must be a NumPy array, a tf.data.Dataset, or "
            f"an iterable of batches. Received: {type(data).__name__}."
        ) from e
    chunks: list[list[np.ndarray]] = [[] for _ in specs]
    count = 0
    for element in elements:
        arrays = [
            _check_array(value, spec, argname)
            for value, spec in zip(_split_element(element, specs, argname), specs)
        ]
        sizes = {len(a) for a in arrays}
        if len(sizes) != 1:
            raise ValueError(
                f"Argument `{argname}` gave inputs with different batch sizes "
                f"in one element. Received batch sizes: {sorted(sizes)}."
            )
        for chunk, array in zip(chunks, arrays):
            chunk.append(array)
        count += sizes.pop()
        if max_samples is not None and count >= max_samples:
            break
    if count == 0:
        raise ValueError(
            f"Argument `{argname}` is empty. Expected at least one sample. "
            f"Received: {type(data).__name__} with no samples."
        )
    stacked = [np.concatenate(chunk, axis=0) for chunk in chunks]
    if max_samples is not None:
        stacked = [a[:max_samples] for a in stacked]
    return stacked
