"""Run a `.tflite` file with LiteRT's interpreter, on float data.

Every file is checked by `tfaccel.export.validate.validate_tflite` before
the interpreter reads it (the interpreter trusts its input), and the
validated bytes, not the path, are what the interpreter gets.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["run_tflite", "signature_runner"]


def signature_runner(path: str | os.PathLike):
    """Validate the file at `path` and return its default signature runner.

    Raises:
        tfaccel.export.validate.InvalidTFLiteError: not a well-formed file.
        ValueError: the file has no signature to run.
    """
    from ai_edge_litert.interpreter import Interpreter

    from tfaccel.export.validate import validate_tflite

    path = os.fspath(path)
    interpreter = Interpreter(model_content=validate_tflite(path))
    if not interpreter.get_signature_list():
        raise ValueError(f"The TFLite file {path!r} has no signature to run.")
    return interpreter.get_signature_runner()


def to_file_dtype(x: np.ndarray, details: dict) -> np.ndarray:
    """Float `x` quantized to the file input's dtype (scale, zero point)."""
    dtype = np.dtype(details["dtype"])
    if not np.issubdtype(dtype, np.integer) or np.issubdtype(x.dtype, np.integer):
        return x.astype(dtype, copy=False)
    scale, zero_point = details["quantization"]
    if not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def from_file_dtype(y: np.ndarray, details: dict) -> np.ndarray:
    """A file output dequantized to float32."""
    if np.issubdtype(y.dtype, np.integer):
        scale, zero_point = details["quantization"]
        if scale:
            return (y.astype(np.float32) - zero_point) * np.float32(scale)
    return y.astype(np.float32)


def run_tflite(path: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run a single-input, single-output `.tflite` file on float data.

    Quantizes float inputs for int8/uint8 input types and dequantizes integer
    outputs with the file's own scale and zero point, so results compare
    directly with the Keras model's outputs. The file is validated first.

    Example:

    >>> logits = run_tflite("model_int8.tflite", x_test)  # doctest: +SKIP
    >>> accuracy = (logits.argmax(-1) == y_test).mean()   # doctest: +SKIP

    Args:
        path: the `.tflite` file.
        x: a numpy array, batch first.
        batch_size: how many samples to feed per invocation.

    Returns:
        The float32 outputs, batch first.

    Raises:
        tfaccel.export.validate.InvalidTFLiteError: not a valid TFLite file.
        ValueError: the file has several inputs or outputs, or none to run.
    """
    runner = signature_runner(path)
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
        result = runner(**{in_name: to_file_dtype(x[start : start + batch_size], in_d)})
        chunks.append(from_file_dtype(result[out_name], out_d))
    return np.concatenate(chunks, axis=0)
