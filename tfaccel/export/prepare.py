"""The chain of "prepare for export" steps that features register into.

`export_tflite` knows no feature by name: each feature that wraps a model
for training registers a step that undoes it for export, and
`prepare_for_export` runs the steps that apply, in order. A step returns the
model to export and appends notes for the `ExportReport`.

Registered steps (by `order`):

- 0 `"distiller"` (`tfaccel/distillation/export_step.py`): a
  `keras.distillation.Distiller` exports its student.
- 10 `"strip_pruning"` (`tfaccel/pruning/export_step.py`): pruning wrappers
  are stripped.
- 20 `"float32"` (here): a mixed-precision model exports from a float32 twin
  with the same weights.
- 25 `"fuse_lstm"` (`tfaccel/export/fused_lstm.py`; off with
  `export_tflite(..., fuse_lstm=False)`): each LSTM (also inside
  `Bidirectional`) that TFLite's fused `UNIDIRECTIONAL_SEQUENCE_LSTM` can
  run becomes one such op, and the file's batch size 1.
- 30 `"unroll_recurrent"` (`tfaccel/export/recurrent.py`): LSTM, GRU and
  SimpleRNN loops (also inside `Bidirectional`) are unrolled over their
  fixed number of timesteps, which TFLite's builtin ops (int8 included)
  can run.

Each feature package imports its step module, so the steps are registered
whenever `tfaccel` is imported (importing `tfaccel.export` imports `tfaccel`
first).

Features may also register a *conversion context*
(`register_conversion_context`): a context manager entered while the
converter traces the prepared model, for a graph that differs from the
training one only in what conversion never uses (a custom gradient, for
example, which SavedModel would otherwise trace and store).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

from tfaccel import graph

__all__ = [
    "conversion_contexts",
    "functional_view",
    "prepare_for_export",
    "register_conversion_context",
    "register_export_step",
]


@dataclasses.dataclass(frozen=True)
class _Step:
    name: str
    applies: Callable
    apply: Callable
    order: int
    option: str | None = None


_STEPS: dict[str, _Step] = {}
_CONTEXTS: dict[str, Callable] = {}


def register_export_step(
    name: str,
    applies: Callable,
    apply: Callable,
    order: int = 50,
    option: str | None = None,
) -> None:
    """Register a step that prepares a model for TFLite export.

    Registering a `name` again replaces its step (modules may be reloaded).

    Example:

    >>> def applies(model):
    ...     return False
    >>> def apply(model, notes):
    ...     notes.append("did nothing")
    ...     return model
    >>> register_export_step("example_noop", applies, apply, order=99)

    Args:
        name: a unique name for the step.
        applies: `fn(model) -> bool`: whether the step applies to `model`.
        apply: `fn(model, notes) -> model`: the model to export; appends
            what it did to `notes` (a list of str shown in the report).
        order: steps run by increasing `order` (ties: registration order).
        option: the name of an `export_tflite` keyword that switches the
            step off when false (e.g. `"fuse_lstm"`); None: always on.
    """
    _STEPS[name] = _Step(name, applies, apply, order, option)


def prepare_for_export(model, notes: list[str], options: dict | None = None):
    """Run every registered step that applies to `model`, in order.

    Args:
        model: the model given to `export_tflite`.
        notes: the report's notes; steps append to it.
        options: `{option: bool}`; a step registered with an `option`
            runs unless that option is false.

    Returns:
        The model to convert.
    """
    options = options or {}
    for step in sorted(_STEPS.values(), key=lambda s: s.order):
        if step.option is not None and not options.get(step.option, True):
            continue
        if step.applies(model):
            model = step.apply(model, notes)
    return model


def register_conversion_context(name: str, factory: Callable) -> None:
    """Register a context manager to enter while the converter traces a model.

    Registering a `name` again replaces its factory.

    Example:

    >>> register_conversion_context("example_noop", contextlib.nullcontext)

    Args:
        name: a unique name for the context.
        factory: `fn() -> context manager`, called once per conversion.
    """
    _CONTEXTS[name] = factory


@contextlib.contextmanager
def conversion_contexts():
    """Every registered conversion context, entered in registration order."""
    with contextlib.ExitStack() as stack:
        for factory in list(_CONTEXTS.values()):
            stack.enter_context(factory())
        yield


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


def _policies(model) -> set[str]:
    return {layer.dtype_policy.name for layer in graph.all_layers(model)}


def _is_mixed(model) -> bool:
    import keras

    return isinstance(model, keras.Model) and any(
        name.startswith("mixed_") for name in _policies(model)
    )


def _as_float32(model, notes: list[str]):
    """A float32 twin of a mixed-precision model, with the same weights.

    Training in bfloat16/float16 is a training-time choice: the file (float32
    or int8) is made from the float32 variables, as the model would run with
    a float32 policy. The twin is rebuilt from the in-memory model's own
    config with `safe_mode=False`: a `Lambda` layer in it is the user's own
    code, already running in this process (a `.keras` file is loaded in safe
    mode before it ever gets here).
    """
    import keras

    config = _float32_policies(keras.saving.serialize_keras_object(model))
    # Sub-layers that wrappers create themselves take the global policy.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        twin = keras.saving.deserialize_keras_object(config, safe_mode=False)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    twin.set_weights(model.get_weights())
    notes.append(
        f"Mixed-precision model ({', '.join(sorted(_policies(model)))}): "
        "exported from a float32 copy with the same weights."
    )
    return twin


register_export_step("float32", _is_mixed, _as_float32, order=20)


def functional_view(model, input_shape=None, notes: list[str] | None = None):
    """`model` itself if it has inputs, else a functional model around it.

    A subclassed model has no `inputs`, which conversion and verification
    need: it is called on a `keras.Input` of `input_shape` (one sample,
    without the batch axis), or of the shape it was first built with
    (`model.get_build_config()`, set by its first call or `build`).

    Raises:
        ValueError: neither `input_shape` nor a build shape is known, or the
            model has several inputs and no `input_shape` list.
    """
    import keras

    try:
        if model.inputs:
            return model
    except (AttributeError, ValueError):
        pass
    if input_shape is None:
        built = (model.get_build_config() or {}) if model.built else {}
        shape = built.get("input_shape")
        if not isinstance(shape, (list, tuple)) or not shape or isinstance(
            shape[0], (list, tuple, dict)
        ):
            raise ValueError(
                f"Model '{model.name}' ({type(model).__name__}) has no known "
                "inputs: call it once on a batch (or `build` it) before "
                "exporting, or pass `input_shape=` (one sample's shape, "
                f"without the batch axis). Received: input_shape={input_shape!r}"
            )
        input_shape = tuple(shape[1:])
    if not isinstance(input_shape, (list, tuple)) or not all(
        isinstance(d, int) or d is None for d in input_shape
    ):
        raise ValueError(
            "Argument `input_shape` must be one sample's shape, a tuple of "
            f"ints without the batch axis. Received: input_shape={input_shape!r}"
        )
    inputs = keras.Input(tuple(input_shape), name="input")
    view = keras.Model(inputs, model(inputs), name=model.name)
    if notes is not None:
        notes.append(
            f"Subclassed model '{model.name}': exported through a functional "
            f"view with input shape {tuple(input_shape)}."
        )
    return view
