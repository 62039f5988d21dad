"""One reader of the data forms tfaccel accepts, and finite-number checks.

Users hand tfaccel samples in many shapes: a NumPy array, a
`tf.data.Dataset` of `x` or `(x, y)` batches (the one they trained on), a
generator of batches, the TFLite-style callable yielding `[x]` lists, and
for a model with several inputs a list (one array per input, in the order of
`model.inputs`) or a dict keyed by input name. `calibration_data`
(`quantize`, `calibrate`), `representative_data` and `verification_data`
(`export_tflite`) all go through `iter_batches` here: the same forms are
accepted and the same errors raised, naming the argument. Every batch is
checked against the model's input signature and for NaN/inf, since a single
`inf` in calibration data becomes a quantization range the TFLite converter
crashes on.

`check_finite_weights` is the matching check on a model: every float
variable (weights, quantization ranges) must be finite before conversion.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["check_finite_weights", "iter_batches", "model_input", "normalize_data"]


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


def model_input(model, arrays: list) -> Any:
    """A batch (one array per `model.inputs`) in the structure `model` takes.

    A model built on a dict of inputs (KerasHub's `token_ids`,
    `padding_mask`, ...) lists them in `model.inputs` sorted by key and
    refuses a list when called: it gets the dict back.

    Example:

    >>> import keras
    >>> a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    >>> model = keras.Model({"x": b, "y": a}, keras.layers.Concatenate()([a, b]))
    >>> {k: v.shape for k, v in model_input(model, [np.ones((1, 3)), np.ones((1, 2))]).items()}
    {'x': (1, 3), 'y': (1, 2)}
    """
    if len(arrays) == 1:
        return arrays[0]
    try:
        structure = model.input
    except (AttributeError, ValueError):
        return arrays
    if not isinstance(structure, Mapping):
        return arrays
    index = {id(tensor): i for i, tensor in enumerate(model.inputs)}
    return {key: arrays[index[id(tensor)]] for key, tensor in structure.items()}


def _multi_input_forms(names: list[str]) -> str:
    """The accepted forms for several inputs, as error messages list them."""
    return (
        f"a list (or tuple) of {len(names)} arrays in the order of "
        f"`model.inputs` {names}, or a dict keyed by those names; either "
        "alone, inside `(x, y)`, or as the elements of a tf.data.Dataset or "
        "an iterable of batches"
    )


def _split_element(element: Any, specs: list, argname: str) -> list[Any]:
    """One dataset element -> one array-like per model input (labels dropped)."""
    n = len(specs)
    names = [name for name, _, _ in specs]
    if isinstance(element, Mapping):
        if all(name in element for name in names):
            return [element[name] for name in names]
        if n == 1 and len(element) == 1:
            return list(element.values())
        if "x" in element:  # {"x": ..., "y": ...} batches
            return _split_element(element["x"], specs, argname)
        raise ValueError(
            f"Argument `{argname}` yielded a dict whose keys do not name the "
            f"model inputs. Expected: {_multi_input_forms(names)}. Received "
            f"keys: {sorted(map(str, element))}."
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
            f"with {n} inputs: {_multi_input_forms(names)}. Received: a "
            f"{type(element).__name__} of {len(element)} items."
        )
    if n > 1:
        raise ValueError(
            f"Argument `{argname}` must give {n} arrays per element for a model "
            f"with {n} inputs: {_multi_input_forms(names)}. Received: a single "
            f"{type(element).__name__}."
        )
    return [element]


def _check_array(value: Any, spec: tuple, argname: str, where: str) -> np.ndarray:
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
    if np.issubdtype(array.dtype, np.inexact):
        finite = np.isfinite(array)
        if not finite.all():
            nans = int(np.isnan(array).sum())
            infs = int(array.size - finite.sum()) - nans
            raise ValueError(
                f"Argument `{argname}` must contain only finite values. "
                f"Received: {nans + infs} NaN/inf value(s) ({nans} NaN, {infs} "
                f"inf) for input '{name}' in {where}."
            )
    return array.astype(dtype, copy=False)


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
    if (
        isinstance(data, tuple)
        and len(data) in (2, 3)
        and isinstance(data[0], (tuple, list, Mapping))
        and all(_is_array_like(d) for d in data[1:])
    ):
        return [data]  # `(x, y)` as given to `fit`, x a list or dict of arrays
    if callable(data):
        return data()
    return data


def iter_batches(
    data: Any,
    model,
    argname: str,
    batch_size: int | None = None,
    max_samples: int | None = None,
) -> Iterator[list[np.ndarray]]:
    """Yield validated batches of `data`: one array per model input.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> batches = iter_batches(np.zeros((5, 3)), model, "x", batch_size=2)
    >>> [b[0].shape for b in batches]
    [(2, 3), (2, 3), (1, 3)]

    Args:
        data: a NumPy array (or tensor) of samples, a dict keyed by input
            name or a list with one array per input (several inputs), a
            `tf.data.Dataset`, a generator or iterable of batches (each an
            array, `[x]`, `(x, y)`, `(x, y, sample_weight)`, a dict keyed by
            input name or `{"x": ...}`), or a callable returning such an
            iterable (the TFLite `representative_dataset` convention).
        model: the Keras model whose inputs the data must match.
        argname: the argument name used in error messages.
        batch_size: split each batch into batches of at most this size
            (`None`: as given).
        max_samples: stop after this many samples (`None`: all).

    Yields:
        A list with one array of shape `(batch, ...)` per model input, cast
        to the input dtype.

    Raises:
        TypeError: non-numeric or non-iterable data.
        ValueError: wrong shape or structure, NaN/inf values (the error names
            the argument, the batch and the count), or no samples at all.
    """
    specs = _input_specs(model)
    try:
        elements = iter(_elements(data, specs))
    except TypeError as e:
        raise TypeError(
            f"Argument `{argname}` must be a NumPy array, a tf.data.Dataset, or "
            f"an iterable of batches. Received: {type(data).__name__}."
        ) from e
    count = 0
    for index, element in enumerate(elements):
        where = f"batch {index}" if not _is_array_like(data) else "the array"
        values = _split_element(element, specs, argname)
        arrays = [_check_array(v, s, argname, where) for v, s in zip(values, specs)]
        sizes = {len(a) for a in arrays}
        if len(sizes) != 1:
            raise ValueError(
                f"Argument `{argname}` gave inputs with different batch sizes "
                f"in {where}. Received batch sizes: {sorted(sizes)}."
            )
        size = sizes.pop()
        step = batch_size or max(size, 1)
        for start in range(0, size, step):
            if max_samples is not None and count >= max_samples:
                return
            stop = min(start + step, size)
            if max_samples is not None:
                stop = min(stop, start + max_samples - count)
            count += stop - start
            yield [a[start:stop] for a in arrays]
        if max_samples is not None and count >= max_samples:
            return
    if count == 0:
        raise ValueError(
            f"Argument `{argname}` is empty. Expected at least one sample. "
            f"Received: {type(data).__name__} with no samples."
        )


def normalize_data(
    data: Any, model, argname: str, max_samples: int | None = None
) -> list[np.ndarray] | None:
    """Stack `data` into one validated array per model input.

    Example:

    >>> import keras
    >>> a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    >>> model = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
    >>> as_list = normalize_data([np.ones((4, 3)), np.ones((4, 2))], model, "x")
    >>> as_dict = normalize_data({"a": np.ones((4, 3)), "b": np.ones((4, 2))},
    ...                          model, "x")
    >>> [x.shape for x in as_list] == [x.shape for x in as_dict] == [(4, 3), (4, 2)]
    True

    Args:
        data: `None`, or any form `iter_batches` accepts.
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
    batches = list(iter_batches(data, model, argname, max_samples=max_samples))
    return [np.concatenate(arrays, axis=0) for arrays in zip(*batches)]


def check_finite_weights(model, advice: str = "") -> None:
    """Raise a ValueError naming each layer variable holding NaN/inf.

    Quantization ranges (`range_min`, `range_max`) and kernels set the
    scales of an int8 file: the TFLite converter crashes the process (or
    writes garbage) on a range of `[0, inf]` or NaN, so export and
    calibration call this first.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> _ = model.layers[0].bias.assign([np.inf])
    >>> check_finite_weights(model)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Argument `model` must hold finite weights. Received: inf in .../bias...

    Args:
        model: a Keras model.
        advice: what the user can do, appended to the message.

    Raises:
        ValueError: some variable holds NaN or inf.
    """
    bad = []
    for variable in model.variables:
        if "float" not in str(variable.dtype):
            continue
        value = np.asarray(variable.numpy())
        if np.all(np.isfinite(value)):
            continue
        kind = "NaN" if np.isnan(value).any() else "inf"
        bad.append(f"{kind} in {variable.path}")
    if bad:
        ranges = any("range_m" in b for b in bad)
        hint = advice or (
            "Recalibrate the quantization ranges with "
            "tfaccel.quantization.calibrate(model, data) on finite data"
            if ranges
            else "Training probably diverged (try a lower learning rate, or "
            "keras.callbacks.TerminateOnNaN); restore finite weights"
        )
        raise ValueError(
            f"Argument `model` must hold finite weights. Received: "
            f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. {hint}."
        )
