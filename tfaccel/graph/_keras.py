"""Every private Keras name the graph core reads, in one place.

Keras 3 has no public API to list the call events (nodes) of a functional
model, nor a layer's own call count. These functions read the attributes
Keras' own `Functional` and `clone_model` use. `tests/graph/test_keras_names.py`
fails the day one of them changes.
"""

from __future__ import annotations

import keras

__all__ = [
    "flatten_layers",
    "inbound_nodes",
    "inputs_struct",
    "is_functional",
    "nodes_by_depth",
    "outputs_struct",
    "producer",
]


def is_functional(model) -> bool:
    """Whether `model` holds a graph of nodes (functional or Sequential)."""
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")
    )


def nodes_by_depth(model) -> dict:
    """`{depth: [Node]}` of a functional model (deepest = closest to inputs)."""
    return model._nodes_by_depth


def inbound_nodes(operation) -> list:
    """Every call event of `operation` (in any graph), oldest first."""
    return list(getattr(operation, "_inbound_nodes", []))


def producer(tensor):
    """`(operation, node_index, tensor_index)` that made a symbolic tensor."""
    history = tensor._keras_history
    return history.operation, history.node_index, history.tensor_index


def inputs_struct(model):
    """The nested structure of a functional model's inputs (list, dict, ...)."""
    return model._inputs_struct


def outputs_struct(model):
    """The nested structure of a functional model's outputs."""
    return model._outputs_struct


def flatten_layers(model) -> list:
    """Every layer inside `model`, nested models and wrapped layers included."""
    return list(model._flatten_layers(include_self=False, recursive=True))
