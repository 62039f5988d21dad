"""Read any Keras 3 Sequential or functional model as a list of call nodes.

A Keras functional graph holds *operation* nodes as well as layers: `x + y`,
`x * gate` and `keras.ops.*` on symbolic tensors create `keras.Operation`
instances (no `built`, no weights). Layers may be called with keywords
(`MultiHeadAttention(query=q, value=v)`), shared by several calls, or be
whole nested models. `read` presents all of that uniformly: a `Graph` of
`Node`s in execution order, each with its operation, its call arguments and
who consumes its outputs. Every feature that looks at a model's wiring
(fusion plans for QAT, channel groups for channel pruning) reads it here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import keras

from tfaccel.graph import _keras

__all__ = [
    "Graph",
    "Node",
    "OUTPUT",
    "all_layers",
    "as_functional",
    "read",
    "tensor_name",
]

#: Stands for "the model's output" among a node's consumers.
OUTPUT = "<model output>"


@dataclasses.dataclass(eq=False)
class Node:
    """One call of an operation inside a model.

    Attributes:
        operation: what was called: a `keras.layers.Layer`, a nested
            `keras.Model`, or a `keras.Operation` (an operator or
            `keras.ops` call on symbolic tensors).
        args: the positional call arguments (symbolic tensors and constants).
        kwargs: the keyword call arguments (`query=`, `mask=`, ...).
        inputs: every symbolic tensor among `args` and `kwargs`, flattened.
        outputs: the symbolic tensors the call produced, flattened.
        call_index: 0 for an operation's first call in this model, 1 for
            its second (a shared layer), ...
    """

    operation: Any
    args: tuple
    kwargs: dict
    inputs: list
    outputs: list
    call_index: int
    keras_node: Any = dataclasses.field(repr=False, default=None)

    @property
    def is_layer(self) -> bool:
        """Whether the operation is a layer (it may hold weights)."""
        return isinstance(self.operation, keras.layers.Layer)

    @property
    def is_model(self) -> bool:
        """Whether the operation is a nested Sequential or functional model."""
        return _keras.is_functional(self.operation)

    @property
    def name(self) -> str:
        return self.operation.name


class Graph:
    """The call nodes of one Sequential or functional model, in order.

    Nested models appear as a single node; `read` them for their inside.
    """

    def __init__(self, model: keras.Model):
        self.nodes: list[Node] = []
        self._producers: dict[int, Node] = {}
        self._consumers: dict[int, list] = {}
        self._calls: dict[int, list[Node]] = {}
        if is_unbuilt_sequential(model):
            # No tensors yet: a chain of layers, each called once.
            self.model = model
            for layer in model.layers:
                node = Node(layer, (), {}, [], [], 0)
                self._calls[id(layer)] = [node]
                self.nodes.append(node)
            return
        self.model = as_functional(model)
        keras_nodes = []
        for depth in sorted(_keras.nodes_by_depth(self.model), reverse=True):
            for keras_node in _keras.nodes_by_depth(self.model)[depth]:
                if keras_node.operation is None or keras_node.is_input:
                    continue
                keras_nodes.append(keras_node)
        for keras_node in keras_nodes:
            calls = self._calls.setdefault(id(keras_node.operation), [])
            node = Node(
                operation=keras_node.operation,
                args=keras_node.arguments.args,
                kwargs=keras_node.arguments.kwargs,
                inputs=list(keras_node.input_tensors),
                outputs=list(keras_node.outputs),
                call_index=len(calls),
                keras_node=keras_node,
            )
            calls.append(node)
            self.nodes.append(node)
            for tensor in node.outputs:
                self._producers[id(tensor)] = node
        for node in self.nodes:
            for tensor in node.inputs:
                producer = self._producers.get(id(tensor))
                if producer is not None:
                    self._consumers.setdefault(id(producer), []).append(node)
        for tensor in self.model.outputs:
            producer = self._producers.get(id(tensor))
            if producer is not None:
                self._consumers.setdefault(id(producer), []).append(OUTPUT)

    @property
    def built(self) -> bool:
        """False for an unbuilt Sequential model (nodes carry no tensors)."""
        return not is_unbuilt_sequential(self.model)

    @property
    def inputs(self) -> list:
        """The model's input tensors, flattened."""
        return list(self.model.inputs)

    @property
    def outputs(self) -> list:
        """The model's output tensors, flattened."""
        return list(self.model.outputs)

    def producer(self, tensor) -> Node | None:
        """The node that computed `tensor`; None for a model input."""
        return self._producers.get(id(tensor))

    def consumers(self, node: Node) -> list:
        """Nodes reading any output of `node`, once per read; `OUTPUT` too."""
        return list(self._consumers.get(id(node), []))

    def calls(self, operation) -> list[Node]:
        """The nodes calling `operation` in this model (a shared layer: 2+)."""
        return list(self._calls.get(id(operation), []))

    def only_consumer(self, node: Node) -> Node | None:
        """The single node reading `node`'s outputs, if exactly one does.

        None when several nodes (or the model output) read it, or when
        either operation is called more than once: only then may the two be
        fused into one op.
        """
        users = self.consumers(node)
        if len(users) != 1 or users[0] is OUTPUT:
            return None
        user = users[0]
        if len(self.calls(node.operation)) != 1 or len(self.calls(user.operation)) != 1:
            return None
        return user

    def layers(self) -> list:
        """Unique operations that are layers, in call order (no nesting)."""
        seen, result = set(), []
        for node in self.nodes:
            if node.is_layer and id(node.operation) not in seen:
                seen.add(id(node.operation))
                result.append(node.operation)
        return result

    def walk(self) -> Iterator[tuple[Graph, Node]]:
        """`(graph, node)` for every node here and inside nested models."""
        for node in self.nodes:
            yield self, node
            if node.is_model:
                yield from read(node.operation).walk()


def read(model: keras.Model) -> Graph:
    """Read `model` (Sequential or functional, possibly nested) as a `Graph`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(4, name="a")(inputs)
    >>> outputs = keras.layers.Dense(4, name="b")(x + inputs)
    >>> graph = read(keras.Model(inputs, outputs))
    >>> [(node.name, node.is_layer) for node in graph.nodes]
    [('a', True), ('add', False), ('b', True)]

    An unbuilt Sequential model (no `keras.Input`) reads as its chain of
    layers, without tensors (`graph.built` is False).

    Raises:
        ValueError: for a subclassed model (it has no graph).
    """
    return Graph(model)


def is_unbuilt_sequential(model) -> bool:
    """Whether `model` is a Sequential model without a known input shape."""
    return isinstance(model, keras.Sequential) and (not model.built or not model.inputs)


def as_functional(model: keras.Model) -> keras.Model:
    """`model` itself if functional, else a functional view of a Sequential.

    The view shares the Sequential's layers and adds no nodes to them.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
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
    if not _keras.is_functional(model) or not model.inputs:
        raise ValueError(
            "`model` must be a Sequential or functional Keras model: a "
            "subclassed model has no graph of layers to rewrite. Build it with "
            "the functional API, or wrap its layers directly (for example in "
            "`tfaccel.pruning.PruneLowMagnitude`). Received: model of type "
            f"{type(model).__name__} ({model.name!r})"
        )
    return model


def all_layers(model: keras.Model) -> list:
    """Every layer inside `model`, nested models and wrapped layers included."""
    return _keras.flatten_layers(model)


def tensor_name(tensor) -> str:
    """The name of the layer or operation that made a symbolic tensor.

    For a model input, its `InputLayer`'s name (`keras.Input(name=...)`).
    """
    operation = _keras.producer(tensor)[0]
    return operation.name if operation is not None else tensor.name
