"""Run a `.tflite` file with LiteRT's interpreter, on float data.

Every file is checked by `tfaccel.export.validate.validate_tflite` before
the interpreter reads it (the interpreter trusts its input), and the
validated bytes, not the path, are what the interpreter gets.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["FileRunner", "run_tflite", "signature_runner"]


def signature_runner(path: str | os.PathLike):
    """Validate the file at `path` and return its default signature runner.

    The runner invokes the file as it is: a file with a fused LSTM keeps
    its state between calls (see `FileRunner`, which resets it).

    Raises:
        tfaccel.export.validate.InvalidTFLiteError: not a well-formed file.
        ValueError: the file has no signature to run.
    """
    return FileRunner(path).signature


class FileRunner:
    """A validated file's default signature, run on any number of samples.

    Each invocation starts from a reset state: variable tensors (the state
    a fused LSTM keeps between invocations) are zeroed first, so every
    chunk of samples is independent. A file whose inputs have a fixed
    batch size (a fused LSTM's file has 1) is fed chunks of that size, the
    last one padded by repeating its last sample.

    Example:

    >>> runner = FileRunner("model.tflite")                  # doctest: +SKIP
    >>> outputs = runner({"input": x}, batch_size=256)       # doctest: +SKIP

    Args:
        path: the `.tflite` file (validated before the interpreter reads it).

    Raises:
        tfaccel.export.validate.InvalidTFLiteError: not a well-formed file.
        ValueError: the file has no signature to run.
    """

    def __init__(self, path: str | os.PathLike):
        from ai_edge_litert.interpreter import Interpreter

        from tfaccel.export.validate import validate_tflite

        path = os.fspath(path)
        self._interpreter = Interpreter(model_content=validate_tflite(path))
        if not self._interpreter.get_signature_list():
            raise ValueError(f"The TFLite file {path!r} has no signature to run.")
        self._interpreter.allocate_tensors()  # reset_all_variables needs them
        self.signature = self._interpreter.get_signature_runner()
        self.input_details = self.signature.get_input_details()
        self.output_details = self.signature.get_output_details()
        batches = {
            int(d["shape_signature"][0]) if len(d["shape_signature"]) else -1
            for d in self.input_details.values()
        }
        #: The batch size the file's inputs fix, or None (any).
        self.fixed_batch = batches.pop() if len(batches) == 1 and -1 not in batches else None

    def __call__(self, feed: dict, batch_size: int = 256) -> dict:
        """Outputs by signature name, for `feed` (inputs by signature name,
        already in the file's dtypes), invoked `batch_size` samples at a time
        (or the file's fixed batch size)."""
        step = self.fixed_batch or batch_size
        count = len(next(iter(feed.values())))
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.output_details}
        for start in range(0, count, step):
            part = {name: x[start : start + step] for name, x in feed.items()}
            size = len(next(iter(part.values())))
            if self.fixed_batch and size < step:
                part = {
                    name: np.concatenate([x, np.repeat(x[-1:], step - size, axis=0)])
                    for name, x in part.items()
                }
            self._interpreter.reset_all_variables()
            result = self.signature(**part)
            for name in chunks:
                chunks[name].append(result[name][:size])
        return {name: np.concatenate(c, axis=0) for name, c in chunks.items()}


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
        batch_size: how many samples to feed per invocation (a file with
            a fixed batch size, such as one with a fused LSTM, is fed that
            many). Every invocation starts from a reset state.

    Returns:
        The float32 outputs, batch first.

    Raises:
        tfaccel.export.validate.InvalidTFLiteError: not a valid TFLite file.
        ValueError: the file has several inputs or outputs, or none to run.
    """
    runner = FileRunner(path)
    in_details, out_details = runner.input_details, runner.output_details
    if len(in_details) != 1 or len(out_details) != 1:
        raise ValueError(
            "`run_tflite` runs single-input, single-output files. Received a "
            f"file with inputs {list(in_details)} and outputs {list(out_details)}."
        )
    (in_name, in_d), = in_details.items()
    (out_name, out_d), = out_details.items()
    result = runner({in_name: to_file_dtype(np.asarray(x), in_d)}, batch_size)
    return from_file_dtype(result[out_name], out_d)
