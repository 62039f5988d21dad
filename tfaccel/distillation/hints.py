"""From user arguments to the graphs a distillation step reads.

A `Distiller` reads two kinds of tensors: the logits of student and teacher
(`"final_output"`) and, for hint losses, the outputs of named layers. This
module checks the models and the `features` argument, resolves layer names
(a pruned or quantized layer may be named by the layer it wraps), builds the
learned projection of each hint and the *extractors*: one functional model
per network that returns `{"final_output": logits, layer_name: output, ...}`
in one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

__all__ = ["extractor", "feature_pairs", "find_layer", "projection", "single_output"]

FINAL_OUTPUT = "final_output"


def single_output(model: Any, argument: str):
    """The one symbolic output of a built Functional or Sequential model."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{argument}` must be a keras.Model. Received: "
            f"{argument} of type {type(model).__name__}"
        )
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise ValueError(
            f"`{argument}` must be a built Functional or Sequential model "
            f"(with an `Input`). Received: {argument}={model.name!r} without "
            "symbolic outputs"
        )
    if len(outputs) != 1:
        raise ValueError(
            f"`{argument}` must have a single logits output. Received: "
            f"{len(outputs)} outputs"
        )
    return outputs[0]


def feature_pairs(features: Any) -> list[tuple[str, str]]:
    """`features` (dict or list of name pairs) as `[(student, teacher), ...]`."""
    if features is None:
        return []
    if isinstance(features, Mapping):
        items = list(features.items())
    elif isinstance(features, Sequence) and not isinstance(features, str):
        items = list(features)
    else:
        items = None
    if items is None or not all(
        isinstance(p, (tuple, list))
        and len(p) == 2
        and all(isinstance(n, str) for n in p)
        for p in items
    ):
        raise ValueError(
            "`features` must be a dict {student_layer: teacher_layer} or a "
            "list of (student_layer, teacher_layer) name pairs. Received: "
            f"features={features!r}"
        )
    return [(str(s), str(t)) for s, t in items]


def find_layer(model: keras.Model, name: str, argument: str) -> keras.Layer:
    """The layer `name` of `model`, or the wrapper of a layer of that name."""
    try:
        return model.get_layer(name)
    except ValueError:
        pass
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.Layer) and inner.name == name:
            return layer
    raise ValueError(
        f"`features` names {argument} layer {name!r}, which is not in the "
        f"{argument} model {model.name!r}. Expected one of: "
        f"{[layer.name for layer in model.layers]}"
    )


def projection(index: int, s_layer: keras.Layer, t_layer: keras.Layer):
    """A built map from the student layer's width to the teacher layer's.

    A bias-free `Dense` over the last axis (a 1x1 convolution on NHWC maps)
    when the widths differ, the identity otherwise.
    """
    s_shape, t_shape = tuple(s_layer.output.shape), tuple(t_layer.output.shape)
    if len(s_shape) != len(t_shape) or s_shape[1:-1] != t_shape[1:-1]:
        raise ValueError(
            "`features` pairs must agree on every axis but the last "
            "(a learned projection maps the student width to the "
            f"teacher's). Received: student layer {s_layer.name!r} "
            f"shape={s_shape}, teacher layer {t_layer.name!r} "
            f"shape={t_shape}"
        )
    name = f"hint_projection_{index}"
    if s_shape[-1] == t_shape[-1]:
        return keras.layers.Identity(name=name)
    layer = keras.layers.Dense(t_shape[-1], use_bias=False, name=name)
    layer.build(s_shape)
    return layer


def extractor(model: keras.Model, layers: Sequence[keras.Layer]) -> keras.Model:
    """`model` returning `{"final_output": logits, layer.name: output, ...}`."""
    outputs = {FINAL_OUTPUT: model.outputs[0]}
    outputs.update({layer.name: layer.output for layer in layers})
    # One input as a tensor, several in the structure the model was built with.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.input
    return keras.Model(inputs, outputs, name=f"{model.name}_features")
