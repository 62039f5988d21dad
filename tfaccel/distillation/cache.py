"""Teacher-output caching: run a frozen teacher once instead of every epoch.

The teacher of a distillation is frozen and runs in inference mode, so on a
fixed data set its outputs are the same every epoch. With
`distill(..., cache_teacher=True)` the distiller's `fit` runs the teacher once
over the in-memory inputs and *bundles* its outputs with the inputs:
`x -> {"_tfaccel_inputs": x, "_tfaccel_teacher": {"final_output": ...,
layer_name: ...}}` (inputs rather than targets, so compiled metrics still see
plain labels). Keras slices and shuffles every array of `x` together, so each
sample keeps its own teacher outputs whatever the order (the cache is keyed by
sample, not by batch position); `validation_split` and `validation_data` work
the same way.

Restrictions, by design:
- Inputs must be in memory (NumPy arrays, tensors or dicts of them); a
  `tf.data.Dataset` or generator may augment, and cached outputs of an
  augmented sample would be wrong. Those inputs raise a `ValueError`.
- No augmentation between the arrays and the teacher: the teacher saw each
  raw sample once. Random layers *inside the student* are fine: they do not
  change what the teacher sees.
- The cache lives for one `fit` call: each `fit` runs the teacher once.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

INPUTS_KEY = "_tfaccel_inputs"
TEACHER_KEY = "_tfaccel_teacher"

__all__ = [
    "bundle",
    "bundle_fit_inputs",
    "check_in_memory",
    "is_bundle",
    "teacher_outputs",
    "unbundle",
]


def check_in_memory(x: Any, argument: str = "x") -> None:
    """Raise unless `x` is NumPy arrays/tensors (possibly nested in dict/list)."""
    bad = [
        leaf
        for leaf in keras.tree.flatten(x)
        if not isinstance(leaf, (np.ndarray, tf.Tensor, keras.KerasTensor))
        and not hasattr(leaf, "__array__")
    ]
    if x is None or bad:
        kind = type(x).__name__ if x is None or not bad else type(bad[0]).__name__
        raise ValueError(
            "`cache_teacher=True` needs in-memory inputs (NumPy arrays or "
            f"tensors) so teacher outputs can be keyed by sample. Received: "
            f"{argument} of type {kind}. For a tf.data pipeline or generator "
            "(which may shuffle or augment), use `cache_teacher=False`."
        )


def teacher_outputs(
    extractor: keras.Model, x: Any, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Run `extractor` (teacher -> dict of outputs) once, in inference mode."""
    return dict(extractor.predict(x, batch_size=batch_size or 32, verbose=0))


def bundle_fit_inputs(
    extractor: keras.Model, x: Any, validation_data: Any, batch_size: int | None
) -> tuple[Any, Any]:
    """`fit`'s `x` and `validation_data` with the teacher outputs bundled in."""

    def bundled(inputs, argument):
        check_in_memory(inputs, argument)
        return bundle(inputs, teacher_outputs(extractor, inputs, batch_size))

    x = bundled(x, "x")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)):
            check_in_memory(validation_data, "validation_data")
        vx = bundled(validation_data[0], "validation_data")
        validation_data = (vx, *validation_data[1:])
    return x, validation_data


def bundle(x: Any, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inputs carrying the teacher outputs of each sample."""
    return {INPUTS_KEY: x, TEACHER_KEY: outputs}


def is_bundle(x: Any) -> bool:
    return isinstance(x, dict) and TEACHER_KEY in x and INPUTS_KEY in x


def unbundle(x: Any) -> tuple[Any, dict | None]:
    """`(inputs, teacher outputs or None)` from inputs that may be bundled."""
    if is_bundle(x):
        return x[INPUTS_KEY], x[TEACHER_KEY]
    return x, None
