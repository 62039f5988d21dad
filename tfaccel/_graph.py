"""Read the wiring of a functional Keras model (who consumes whose output)."""

from __future__ import annotations

import keras

__all__ = ["all_layers", "consumers", "as_functional"]


def all_layers(model: keras.Model) -> list:
    """Every layer inside `model`, nested models and wrapped layers included."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def as_functional(model: keras.Model) -> keras.Model:
    """`model` itself if functional, else a functional view of a Sequential.

    The view shares the Sequential's layers and adds no nodes to them.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(
                "A Sequential model must be built with a known input shape "
                "(start it with `keras.Input(...)`). "
                f"Received: an unbuilt model {model.name!r}"
            )
        inputs, outputs = model.inputs, model.outputs
        return keras.Model(
            inputs[0] if len(inputs) == 1 else inputs,
            outputs[0] if len(outputs) == 1 else outputs,
            name=model.name,
        )
    if not hasattr(model, "_nodes_by_depth") or not model.inputs:
        raise ValueError(
            "Expected a Sequential or functional Keras model (a subclassed "
            "model has no graph to rewrite: build it with the functional API). "
            f"Received: model {model.name!r} of class {type(model).__name__}"
        )
    return model


def consumers(model: keras.Model) -> dict[int, list]:
    """Map `id(layer)` to the layers consuming its output inside `model`.

    A layer whose output is also a model output gets the model itself in its
    list, and a layer called more than once appears once per call, so
    "exactly one consumer" means "safe to fuse into the consumer".
    """
    result: dict[int, list] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is None or node.is_input:
                continue
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                result.setdefault(id(producer), []).append(node.operation)
    for tensor in model.outputs:
        result.setdefault(id(tensor._keras_history.operation), []).append(model)
    return result


def calls(layer) -> int:
    """How many times `layer` is called in the graphs it belongs to."""
    return len(getattr(layer, "_inbound_nodes", []))
