"""`export_tflite`: convert a Keras model to TFLite, verify it, write it.

One call accepts every model tfaccel produces: a float model, a pruned model
(its `PruneLowMagnitude` / `PruneChannels` wrappers are stripped first), a
quantization-aware model from `tfaccel.quantization.quantize` (int8 without
representative data: its fake-quant ranges are learned), a combination of
both, and a `keras.distillation.Distiller` (its student is exported).

Verification is part of export, not an afterthought: the converted bytes are
written to a temporary file next to `path`, that file is run with LiteRT's
interpreter and compared with the Keras model, and only a file that meets
the user's tolerance is renamed onto `path` (`os.replace`, atomic on POSIX
and Windows). A failing export never leaves a partial file or clobbers the
file already at `path`.
"""

from __future__ import annotations

import contextlib
import io
import numbers
import os
import stat
import tempfile
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfaccel import _graph
from tfaccel.export.inspect import analyze
from tfaccel.export.report import ExportReport
from tfaccel.export.representative import normalize_data

_QUANTIZATIONS = (None, "int8", "float16", "dynamic")
_IO_TYPES = (None, "int8", "uint8", "float32")
_TOLERANCE_KEYS = ("min_agreement", "max_error")


class VerificationError(RuntimeError):
    """The exported file does not match the Keras model within `tolerance`.

    The file was not written to `path`; `report` holds the figures measured
    on the rejected file.
    """

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


def _check_choice(value: Any, choices: tuple, argname: str) -> None:
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(
            f"Argument `{argname}` must be one of {shown}. "
            f"Received: {argname}={value!r}"
        )


def _check_tolerance(tolerance: Any) -> dict[str, float]:
    if tolerance is None:
        return {}
    if not isinstance(tolerance, Mapping):
        raise TypeError(
            "Argument `tolerance` must be a dict with keys 'min_agreement' "
            "and/or 'max_error', e.g. {'min_agreement': 0.99}. "
            f"Received: tolerance={tolerance!r}"
        )
    unknown = sorted(set(tolerance) - set(_TOLERANCE_KEYS))
    if unknown or not tolerance:
        raise ValueError(
            "Argument `tolerance` accepts the keys 'min_agreement' and "
            f"'max_error'. Received: tolerance={dict(tolerance)!r}"
        )
    checked = {}
    for key, value in tolerance.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"Argument `tolerance['{key}']` must be a number. Received: {value!r}"
            )
        low, high = (0.0, 1.0) if key == "min_agreement" else (0.0, float("inf"))
        if not low <= value <= high:
            raise ValueError(
                f"Argument `tolerance['{key}']` must be in [{low}, {high}]. "
                f"Received: {value!r}"
            )
        checked[key] = float(value)
    return checked


def _open_temp(path: str) -> tuple[int, str]:
    """Create the temporary file next to `path`: fails fast if unwritable."""
    if os.path.isdir(path):
        raise ValueError(
            "Argument `path` must be a file path, not a directory. "
            f"Received: path={path!r}"
        )
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkstemp(
            dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
        )
    except OSError as e:
        # OSError(errno, ...) keeps the subclass: PermissionError, ...
        raise OSError(
            e.errno,
            "Argument `path` must be a writable file path (its directory is "
            f"created if missing). Received: path={path!r} ({e.strerror or e})",
        ) from e


def _final_mode(path: str) -> int:
    """Keep an existing file's permissions; else the umask's default."""
    if os.path.exists(path):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _unwrap_student(model, notes: list[str]):
    import keras

    student = getattr(model, "student", None)
    if isinstance(student, keras.Model) and hasattr(model, "teacher"):
        notes.append(
            f"{type(model).__name__}: exported its student "
            f"'{student.name}' (the teacher is not exported)."
        )
        return student
    return model


def _strip_pruning(model, notes: list[str]):
    from tfaccel.pruning import PruneChannels, PruneLowMagnitude, strip_pruning

    layers = _graph.all_layers(model)
    wrapped = [layer for layer in layers if isinstance(layer, PruneLowMagnitude)]
    channels = [layer for layer in layers if isinstance(layer, PruneChannels)]
    if channels:
        # strip_pruning rebuilds a channel-pruned model smaller (`shrink`).
        notes.append(
            f"Stripped {len(channels)} PruneChannels wrapper(s) before "
            "conversion; masked channels are removed (a smaller model)."
        )
    if wrapped:
        notes.append(
            f"Stripped {len(wrapped)} PruneLowMagnitude wrapper(s) before "
            "conversion; pruned weights are stored dense (zeros compress: see "
            "gzip_bytes)."
        )
    return strip_pruning(model) if wrapped or channels else model


def _float32_policies(config, key: str | None = None):
    """`config` with every mixed-precision dtype policy replaced by float32.

    A plain string is a policy only as a `dtype` value: layer names such as
    "mixed_1" must stay (the functional config refers to layers by name).
    """
    if isinstance(config, dict):
        if (
            config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy")
            and str(config.get("config", {}).get("name", "")).startswith("mixed_")
        ):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _float32_policies(v, k) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_policies(v, key) for v in config]
    if key == "dtype" and isinstance(config, str) and config.startswith("mixed_"):
        return "float32"
    return config


def _as_float32(model, notes: list[str]):
    """A float32 twin of a mixed-precision model, with the same weights.

    Training in bfloat16/float16 is a training-time choice: the file (float32
    or int8) is made from the float32 variables, as the model would run with
    a float32 policy.
    """
    import keras

    policies = {layer.dtype_policy.name for layer in _graph.all_layers(model)}
    if not any(name.startswith("mixed_") for name in policies):
        return model
    config = _float32_policies(keras.saving.serialize_keras_object(model))
    # Sub-layers that wrappers create themselves take the global policy.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        twin = keras.saving.deserialize_keras_object(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    twin.set_weights(model.get_weights())
    notes.append(
        f"Mixed-precision model ({', '.join(sorted(policies))}): exported "
        "from a float32 copy with the same weights."
    )
    return twin


def _is_quantized(model) -> bool:
    from tfaccel.quantization import is_quantized

    return bool(is_quantized(model))


def _converter(
    model,
    quantization: str | None,
    qat: bool,
    representative: list[np.ndarray] | None,
    input_type: str | None,
    output_type: str | None,
    converter_options: Mapping[str, Any] | None,
):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8" and not qat:
        names = [t.name for t in model.inputs]

        def representative_dataset():
            # One sample per step: the calibrator sizes its inputs once.
            for i in range(len(representative[0])):
                sample = [x[i : i + 1] for x in representative]
                yield sample if len(sample) == 1 else dict(zip(names, sample))

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if input_type is not None:
        converter.inference_input_type = tf.as_dtype(input_type)
    if output_type is not None:
        converter.inference_output_type = tf.as_dtype(output_type)
    for key, value in (converter_options or {}).items():
        if not hasattr(converter, key):
            raise ValueError(
                "Argument `converter_options` must name attributes of "
                f"tf.lite.TFLiteConverter. Received: unknown key {key!r}"
            )
        setattr(converter, key, value)
    return converter


def _keras_outputs(model, inputs: list[np.ndarray], batch: int = 256) -> dict:
    """Keras outputs keyed like the TFLite signature outputs."""
    import keras

    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs[0]), batch):
        x = [a[start : start + batch] for a in inputs]
        out = model(x[0] if len(x) == 1 else x, training=False)
        if isinstance(out, Mapping):
            named = {str(k): v for k, v in out.items()}
        else:
            flat = keras.tree.flatten(out)
            named = {f"output_{i}": v for i, v in enumerate(flat)}
        for key, value in named.items():
            chunks.setdefault(key, []).append(keras.ops.convert_to_numpy(value))
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def _to_file_dtype(x: np.ndarray, details: dict) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer) or np.issubdtype(x.dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero_point = details["quantization"]
    if not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def _from_file_dtype(y: np.ndarray, details: dict) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
        scale, zero_point = details["quantization"]
        if scale:
            return (y.astype(np.float32) - zero_point) * np.float32(scale)
    return y.astype(np.float32)


def _tflite_outputs(
    file: str, model, inputs: list[np.ndarray], keys: list[str], batch: int = 256
) -> dict:
    """Run the file on `inputs`, outputs dequantized and keyed like `keys`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=file)
    if not interpreter.get_signature_list():
        raise ValueError(f"The TFLite file {file!r} has no signature to run.")
    runner = interpreter.get_signature_runner()
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()
    in_names = [t.name for t in model.inputs]
    if set(in_names) != set(in_details):
        in_names = list(in_details)  # same order as the Keras inputs
    out_names = keys if set(keys) == set(out_details) else list(out_details)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for start in range(0, len(inputs[0]), batch):
        feed = {
            name: _to_file_dtype(a[start : start + batch], in_details[name])
            for name, a in zip(in_names, inputs)
        }
        result = runner(**feed)
        for key, name in zip(keys, out_names):
            chunks[key].append(_from_file_dtype(result[name], out_details[name]))
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def _verify(file: str, model, inputs: list[np.ndarray]) -> dict[str, Any]:
    expected = _keras_outputs(model, inputs)
    got = _tflite_outputs(file, model, inputs, list(expected))
    agreements, max_err, abs_sum, count = [], 0.0, 0.0, 0
    for key, want in expected.items():
        have = got[key].reshape(want.shape)
        want = want.astype(np.float32)
        diff = np.abs(have - want)
        # A NaN on one side is an infinite error (`max` would skip it);
        # equal values (the same inf, NaN on both sides) are no error.
        diff[np.isnan(diff)] = np.inf
        diff[(have == want) | (np.isnan(have) & np.isnan(want))] = 0.0
        max_err = max(max_err, float(diff.max()) if diff.size else 0.0)
        abs_sum += float(diff.sum())
        count += diff.size
        if want.ndim >= 2 and want.shape[-1] > 1:
            agreements.append(
                float(np.mean(np.argmax(have, -1) == np.argmax(want, -1)))
            )
    return {
        "agreement": min(agreements) if agreements else None,
        "max_abs_error": max_err,
        "mean_abs_error": abs_sum / count if count else 0.0,
        "num_samples": len(inputs[0]),
    }


def _tolerance_failures(report: ExportReport, tolerance: dict) -> list[str]:
    failures = []
    if "min_agreement" in tolerance:
        if report.agreement is None:
            failures.append(
                "min_agreement was set but no output is classification-like "
                "(last dimension > 1)"
            )
        elif report.agreement < tolerance["min_agreement"]:
            failures.append(
                f"top-1 agreement {report.agreement:.4f} < min_agreement "
                f"{tolerance['min_agreement']}"
            )
    if "max_error" in tolerance and report.max_abs_error > tolerance["max_error"]:
        failures.append(
            f"max abs error {report.max_abs_error:.4g} > max_error "
            f"{tolerance['max_error']}"
        )
    return failures


def export_tflite(
    model,
    path: str | os.PathLike,
    quantization: str | None = None,
    representative_data: Any = None,
    *,
    input_type: str | None = None,
    output_type: str | None = None,
    verify: bool = True,
    verification_data: Any = None,
    tolerance: Mapping[str, float] | None = None,
    max_samples: int = 500,
    converter_options: Mapping[str, Any] | None = None,
) -> ExportReport:
    """Convert a Keras model to a TFLite file, check it, and report on it.

    The model may be a plain float model, a pruned model (its
    `PruneLowMagnitude` wrappers are stripped first, `PruneChannels` ones
    by `strip_pruning`'s rebuild of a smaller model), a model returned by
    `tfaccel.quantization.quantize` (exported as int8 from its learned
    ranges, no representative data needed), both, or a
    `keras.distillation.Distiller` (its `student` is exported).

    With `verify=True` (the default) the written file is run with LiteRT's
    interpreter on `verification_data` (else on `representative_data`) and
    compared with the Keras model: top-1 agreement and absolute error of the
    dequantized outputs. If `tolerance` is not met a `VerificationError` is
    raised and nothing is written to `path`: the bytes go to a temporary
    file in the same directory, are verified there, and only then replace
    `path` atomically. Any error leaves an existing file at `path` untouched.

    Example:

    >>> import keras, numpy as np, tempfile, os
    >>> from tfaccel.export import export_tflite
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.random.default_rng(0).random((64, 4), dtype="float32")
    >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
    >>> report = export_tflite(model, path, "int8", representative_data=x,
    ...                        tolerance={"min_agreement": 0.9})
    >>> report.ops["FULLY_CONNECTED"]
    {'int8': 1}

    Args:
        model: a built Keras model (or a Distiller-like model with a
            `student`).
        path: where to write the `.tflite` file. Missing parent directories
            are created.
        quantization: `None` (float32), `"float16"` (float16 weights),
            `"dynamic"` (int8 weights, float activations) or `"int8"` (full
            integer). For a float model `"int8"` calibrates post-training on
            `representative_data`; a `quantize()`d model needs none, and
            `None` exports it as `"int8"` too.
        representative_data: calibration samples for `"int8"`: a NumPy array,
            a `tf.data.Dataset` (of `x` or `(x, y)` batches), an iterable of
            batches or a callable returning one. Also used for verification
            when `verification_data` is not given.
        input_type: with `"int8"`, the file's input dtype: `"int8"`,
            `"uint8"` or `"float32"` (default: float32, the file quantizes).
        output_type: the same for outputs.
        verify: run the file and compare it with the Keras model.
        verification_data: samples for verification, in the forms accepted
            for `representative_data`.
        tolerance: `{"min_agreement": float, "max_error": float}` (either
            key): limits the verification must meet.
        max_samples: the most samples used for calibration and verification.
        converter_options: extra `tf.lite.TFLiteConverter` attributes to set.

    Returns:
        An `ExportReport` for the written file.

    Raises:
        ValueError: an invalid argument (unknown `quantization`, bad data,
            `path` a directory, `"int8"` on a float model without
            representative data, ...).
        TypeError: non-numeric data, or a `tolerance` of the wrong type.
        OSError: `path` cannot be written (raised before converting).
        RuntimeError: the TFLite converter failed.
        VerificationError: the file did not meet `tolerance`.
    """
    import keras

    _check_choice(quantization, _QUANTIZATIONS, "quantization")
    _check_choice(input_type, _IO_TYPES, "input_type")
    _check_choice(output_type, _IO_TYPES, "output_type")
    limits = _check_tolerance(tolerance)
    if limits and not verify:
        raise ValueError(
            "Argument `tolerance` needs verify=True. Received: "
            f"tolerance={dict(tolerance)!r} with verify=False"
        )
    if (
        isinstance(max_samples, bool)
        or not isinstance(max_samples, numbers.Integral)
        or max_samples < 1
    ):
        raise ValueError(
            "Argument `max_samples` must be a positive integer. "
            f"Received: max_samples={max_samples!r}"
        )
    max_samples = int(max_samples)
    path = os.fspath(path)

    notes: list[str] = []
    model = _unwrap_student(model, notes)
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a keras.Model (or a Distiller with a "
            f"`student`). Received: model of type {type(model).__name__}"
        )
    qat = _is_quantized(model)
    if qat:
        if quantization is None:
            quantization = "int8"
            notes.append(
                "Model is quantization-aware (quantize()): exported as int8 "
                "from its learned ranges."
            )
        elif quantization != "int8":
            raise ValueError(
                "Argument `quantization` must be 'int8' (or None) for a "
                "quantization-aware model from tfaccel.quantization.quantize. "
                f"Received: quantization={quantization!r}"
            )
    for argname, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in (None, "float32") and quantization != "int8":
            raise ValueError(
                f"Argument `{argname}`={value!r} requires quantization='int8'. "
                f"Received: quantization={quantization!r}"
            )
    model = _strip_pruning(model, notes)
    model = _as_float32(model, notes)

    representative = normalize_data(
        representative_data, model, "representative_data", max_samples
    )
    if quantization == "int8" and not qat and representative is None:
        raise ValueError(
            "quantization='int8' on a float model needs calibration data: pass "
            "`representative_data` (e.g. a few hundred training samples), or "
            "quantize() the model and train it first (QAT needs none). "
            "Received: representative_data=None"
        )
    samples = None
    if verify:
        samples = normalize_data(
            verification_data, model, "verification_data", max_samples
        )
        if samples is None:
            samples = representative
        if samples is None:
            if limits:
                raise ValueError(
                    "Argument `tolerance` needs samples to verify on: pass "
                    "`verification_data` or `representative_data`. Received: "
                    "neither."
                )
            notes.append(
                "Verification skipped: no verification_data or "
                "representative_data to run the file on."
            )
    else:
        notes.append("Verification disabled (verify=False).")
    if qat and representative is not None and quantization == "int8":
        notes.append(
            "representative_data not used for calibration: the "
            "quantization-aware model carries its own ranges."
        )

    mode = _final_mode(path)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            converter = _converter(
                model,
                quantization,
                qat,
                representative,
                input_type,
                output_type,
                converter_options,
            )
            start = time.perf_counter()
            try:
                # The converter prints the SavedModel signature it exports.
                # Two converter-internal warnings the user can do nothing
                # about: TF1 `quantized_input_stats` (unused by this API), and
                # the calibrator's own use of the deprecated tf.lite.Interpreter.
                with (
                    contextlib.redirect_stdout(io.StringIO()),
                    warnings.catch_warnings(),
                ):
                    warnings.filterwarnings(
                        "ignore", message="Statistics for quantized inputs"
                    )
                    warnings.filterwarnings(
                        "ignore",
                        message=r"\s*Warning: tf.lite.Interpreter is deprecated",
                    )
                    data = converter.convert()
            except Exception as e:
                raise RuntimeError(
                    f"TFLite conversion failed (quantization={quantization!r}): "
                    f"{e}. Nothing was written to {path!r}."
                ) from e
            seconds = time.perf_counter() - start
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        report = analyze(data, path)
        report.quantization = quantization or "float32"
        report.conversion_seconds = seconds
        report.notes = notes
        if samples is not None:
            figures = _verify(tmp, model, samples)
            for key, value in figures.items():
                setattr(report, key, value)
            failures = _tolerance_failures(report, limits)
            if failures:
                report.notes.append(
                    "Rejected, not written: " + "; ".join(failures) + "."
                )
                raise VerificationError(
                    f"The TFLite export does not meet the tolerance "
                    f"{limits!r}: " + "; ".join(failures) + f" (on "
                    f"{report.num_samples} samples). Nothing was written to "
                    f"{path!r}.",
                    report,
                )
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return report


def run_tflite(path: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run a single-input, single-output `.tflite` file on float data.

    Quantizes float inputs for int8/uint8 input types and dequantizes integer
    outputs with the file's own scale and zero point, so results compare
    directly with the Keras model's outputs.

    Example:

    >>> logits = run_tflite("model_int8.tflite", x_test)  # doctest: +SKIP
    >>> accuracy = (logits.argmax(-1) == y_test).mean()   # doctest: +SKIP

    Args:
        path: the `.tflite` file.
        x: a numpy array, batch first.
        batch_size: how many samples to feed per invocation.

    Returns:
        The float32 outputs, batch first.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path))
    runner = interpreter.get_signature_runner()
    in_details = runner.get_input_details()
    out_details = runner.get_output_details()
    if len(in_details) != 1 or len(out_details) != 1:
        raise ValueError(
            "`run_tflite` runs single-input, single-output files. Received a "
            f"file with inputs {list(in_details)} and outputs {list(out_details)}."
        )
    (in_name, in_d), = in_details.items()
    (out_name, out_d), = out_details.items()
    x = np.asarray(x)
    chunks = []
    for start in range(0, len(x), batch_size):
        result = runner(**{in_name: _to_file_dtype(x[start : start + batch_size], in_d)})
        chunks.append(_from_file_dtype(result[out_name], out_d))
    return np.concatenate(chunks, axis=0)
