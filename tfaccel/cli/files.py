"""Safe loading of untrusted inputs, and output paths that cannot clobber them.

Every file the command line reads is checked before a library parses it:
`.keras` archives through their zip central directory (no member is
inflated except `config.json`, whose size is checked first), `.tflite`
files by `tfaccel.export.validate_tflite`, `.npy` files with
`allow_pickle=False`. Model files are loaded with
`keras.models.load_model(path, safe_mode=True)`: a file that would run
arbitrary Python code (a `Lambda` layer) is refused, never executed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any

from tfaccel.cli._common import (
    EXIT_BAD_MODEL_FILE,
    CliError,
    first_line,
    native_stderr_silenced,
)

# A .keras archive holds three members (config.json, metadata.json,
# model.weights.h5). Deflate expands at most ~1032:1, float weights hardly
# compress; a large member expanding over `_MAX_RATIO` is a zip bomb, and
# is refused from the central directory alone, before anything inflates.
_MAX_MEMBERS = 1000
_MAX_RATIO = 200
_BOMB_FLOOR = 64 * 2**20
_MAX_CONFIG_BYTES = 64 * 2**20

_SAFE_MODE_REFUSAL = "Requested the deserialization of a"
_UNKNOWN_CLASS = re.compile(
    r"Could not (?:locate|deserialize) (?:class|function) '([^']+)'"
)


def _register_tfaccel_objects() -> None:
    """Imports tfaccel's subpackages so their layers deserialize by name.

    `keras.models.load_model` resolves `"tfaccel>..."` class names through
    the registry filled by `register_keras_serializable` when a module is
    imported; a QAT or pruned model fails to load unless these ran first.
    """
    for name in (
        "tfaccel.schedules",
        "tfaccel.pruning",
        "tfaccel.quantization",
        "tfaccel.distillation",
    ):
        importlib.import_module(name)


def _bad(message: str) -> CliError:
    return CliError(message, EXIT_BAD_MODEL_FILE)


def check_keras_archive(path: str) -> dict[str, Any]:
    """Checks a `.keras` file without inflating its weights; returns its config.

    Raises:
        CliError: with code 3 for a missing file, a directory, a wrong
            extension, a non-zip or truncated file, a zip bomb, a missing or
            corrupt `config.json`.
    """
    if os.path.isdir(path):
        raise _bad(
            f"expected a .keras model file, received a directory: {path} "
            "(SavedModel directories are not supported; save with "
            "model.save('model.keras'))"
        )
    if not os.path.exists(path):
        raise _bad(f"model file not found: {path}")
    if not path.endswith(".keras"):
        raise _bad(
            "expected a Keras v3 model file ending in '.keras'. "
            f"Received: {path} (re-save it with model.save('model.keras'))"
        )
    if not zipfile.is_zipfile(path):
        raise _bad(f"{path} is not a .keras zip archive (truncated or corrupt file?)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > _MAX_MEMBERS:
                raise _bad(
                    f"refusing {path}: {len(members):,} archive members (a .keras "
                    f"file holds a handful; at most {_MAX_MEMBERS} are read)"
                )
            for info in members:
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > _BOMB_FLOOR and ratio > _MAX_RATIO:
                    raise _bad(
                        f"refusing {path}: member {info.filename!r} would inflate "
                        f"{info.compress_size:,} bytes to {info.file_size:,} "
                        f"({ratio:,.0f}:1), a zip bomb"
                    )
            names = {info.filename for info in members}
            if "config.json" not in names:
                raise _bad(f"{path} is a zip archive but not a .keras model "
                           "(no config.json)")
            if archive.getinfo("config.json").file_size > _MAX_CONFIG_BYTES:
                raise _bad(f"refusing {path}: its config.json is over "
                           f"{_MAX_CONFIG_BYTES:,} bytes")
            # Reading to the end checks the member's CRC.
            config = archive.read("config.json")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if isinstance(e, CliError):
            raise
        raise _bad(f"{path} is a corrupt .keras archive: {first_line(e)}") from None
    try:
        return json.loads(config)
    except ValueError as e:
        raise _bad(f"{path} is a corrupt .keras archive: config.json is not "
                   f"JSON ({first_line(e)})") from None


def _load_failure(path: str, error: Exception) -> CliError:
    """The message for a model that Keras could not rebuild, cause first."""
    text = str(error)
    if _SAFE_MODE_REFUSAL in text:
        return _bad(
            f"refusing to load {path}: it contains a Lambda layer or other "
            "serialized Python code, which could run arbitrary code "
            "(Keras safe mode). Rebuild the model without Lambda layers, "
            "or export it from Python if you trust the file."
        )
    unknown = _UNKNOWN_CLASS.search(text)
    if unknown:
        return _bad(
            f"cannot load {path}: unknown class {unknown.group(1)!r} (not a Keras "
            "or tfaccel class; load it from Python after importing the module "
            "that registers it with keras.saving.register_keras_serializable)"
        )
    # Keras wraps the cause: "... could not be deserialized properly ...
    # Exception encountered: <cause>"; the cause is what the user needs.
    cause = text.rsplit("Exception encountered:", 1)[-1].strip() or text
    return _bad(f"cannot load {path}: {type(error).__name__}: {cause.splitlines()[0]}")


def load_model_safely(path: str) -> Any:
    """Loads a `.keras` file with safe mode on, or raises `CliError` (exit 3).

    The archive is checked first (`check_keras_archive`), because Keras
    reports a truncated or non-zip file as "File not found", which misleads
    users, and a zip bomb should be refused before anything inflates.

    Args:
        path: path of a Keras v3 `.keras` file.

    Returns:
        The loaded `keras.Model`.

    Raises:
        CliError: with code 3 when the file is missing, not a `.keras` zip
            archive, truncated, a zip bomb, or refused by safe mode.
    """
    check_keras_archive(path)
    with native_stderr_silenced():
        import keras

    _register_tfaccel_objects()
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001 - every failure is a bad file here
        raise _load_failure(path, e) from None


def load_array(path: str, option: str) -> Any:
    """Samples from a `.npy` file, or from an `.npz` archive for several inputs.

    An `.npy` file holds one numeric array with a leading sample axis. An
    `.npz` archive holds one such array per model input: saved by name
    (`np.savez(f, a=xa, b=xb)`, a dict keyed by input name) or by position
    (`np.savez(f, xa, xb)`, a list in the order of `model.inputs`).
    Anything else is a `CliError` (exit 2).
    """
    import numpy as np

    if not os.path.isfile(path):
        raise CliError(f"{option}: file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
        else:
            arrays = None
    except ValueError as e:
        raise CliError(
            f"{option}: expected a .npy file holding a numeric array, or an "
            f".npz archive of one array per model input. Received: {path} "
            f"({first_line(e)})"
        ) from None
    except OSError as e:
        raise CliError(f"{option}: cannot read {path}: {first_line(e)}") from None
    if arrays is None:
        return _samples(loaded, option, path)
    if not arrays:
        raise CliError(f"{option}: expected at least one array. Received: the "
                       f".npz archive {path} is empty")
    checked = {key: _samples(a, option, f"{path}[{key!r}]") for key, a in arrays.items()}
    positional = [f"arr_{i}" for i in range(len(checked))]
    if sorted(checked) == sorted(positional):
        return [checked[key] for key in positional]  # np.savez(f, xa, xb)
    return checked


def _samples(array: Any, option: str, where: str) -> Any:
    import numpy as np

    if not np.issubdtype(array.dtype, np.number) or array.ndim < 1:
        raise CliError(
            f"{option}: expected a numeric array with a leading sample axis. "
            f"Received: dtype={array.dtype}, shape={array.shape} from {where}"
        )
    if len(array) == 0:
        raise CliError(f"{option}: expected at least one sample. Received: {where} "
                       "is empty")
    return array


def check_tflite_file(path: str) -> bytes:
    """The validated bytes of a `.tflite` file, or `CliError` (exit 3)."""
    from tfaccel.export.validate import InvalidTFLiteError, validate_tflite

    if os.path.isdir(path):
        raise _bad(f"expected a .tflite file, received a directory: {path}")
    if not os.path.isfile(path):
        raise _bad(f"TFLite file not found: {path}")
    try:
        return validate_tflite(path)
    except InvalidTFLiteError as e:
        hint = " (not a TFLite flatbuffer)" if "'TFL3'" in e.problem else ""
        raise _bad(f"{e}{hint}") from None
    except OSError as e:
        raise _bad(f"cannot read {path}: {first_line(e)}") from None


def check_outputs(outputs: Sequence[tuple[str, str]],
                  inputs: Sequence[tuple[str, str]]) -> None:
    """Refuses output paths that are empty, directories, below a file,
    equal to an input (after resolving links), or repeated.

    Args:
        outputs: `(option, path)` for each file the command will write.
        inputs: `(option, path)` for each file it reads.

    Raises:
        CliError: with code 2, naming both options when paths collide.
    """
    for option, path in outputs:
        if not path or not os.path.basename(path):
            raise CliError(f"{option}: expected a file path. Received: {path!r}")
        if os.path.isdir(path):
            raise CliError(f"{option}: expected a file path. Received a directory: "
                           f"{path}")
        ancestor = existing_ancestor(path)
        if not os.path.isdir(ancestor):
            raise CliError(f"{option}: {ancestor} is not a directory. Received: {path}")
    seen: list[tuple[str, str, str, tuple]] = []
    for role, entries in (("input", inputs), ("output", outputs)):
        for option, path in entries:
            identity = _identity(path)
            for other_role, other_option, other_path, other in seen:
                if other == identity and "output" in (role, other_role):
                    raise CliError(
                        f"{option}: refusing to write over the {other_role} "
                        f"{other_option}: {path} and {other_path} are the same file"
                    )
            seen.append((role, option, path, identity))


def _identity(path: str) -> tuple:
    """The same value for two names of one file (links, hard links, ../)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def existing_ancestor(path: str) -> str:
    """The nearest existing directory (or file) at or above `path`'s parent."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and `os.replace`
    (creating missing parent directories, as `export_tflite` does)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tfaccel-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
