"""`validate_tflite`: one check of an untrusted `.tflite` file before use.

(Skeleton: the full flatbuffer walk lands in the next commit; the signature
and the error type are final.)
"""

from __future__ import annotations

import os

__all__ = ["InvalidTFLiteError", "validate_tflite"]


class InvalidTFLiteError(ValueError):
    """A `.tflite` file that is not a well-formed TFLite model.

    Attributes:
        source: the file's path, or `"<bytes>"` for in-memory content.
        problem: what is wrong, without the file name.
    """

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source} is not a valid TFLite model: {problem}")
        self.source = source
        self.problem = problem


def validate_tflite(path_or_bytes: str | os.PathLike | bytes) -> bytes:
    """Reads and validates a TFLite flatbuffer; returns its bytes.

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
        with open(source, "rb") as f:
            data = f.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InvalidTFLiteError(source, "no 'TFL3' file identifier")
    return data
