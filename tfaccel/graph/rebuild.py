"""Rebuild a Keras model from per-node replacements, carrying weights over.

Every technique is a *plan*: a function that looks at one `Node` of the
`Graph` and says what it becomes: a wrapper, a fused layer, a smaller
layer, an identity, or a copy of itself (the default). `rebuild` does the
walking: it replays the graph on new inputs, calls each replacement with
the node's own arguments (keywords and constants included), keeps shared
layers shared, rebuilds nested models with the same plan, and copies the
weights of every layer it copied.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import keras

from tfaccel.graph import _keras
from tfaccel.graph.reader import Graph, Node, read

__all__ = [
    "IDENTITY",
    "Replacement",
    "copy_layer",
    "copy_weights",
    "loadable_config",
    "rebuild",
]


@dataclasses.dataclass
class Replacement:
    """What one node becomes in the rebuilt model.

    Attributes:
        operation: called with the node's arguments in its place (a layer,
            a wrapper, a nested model, a `keras.Operation`); None passes
            the node's first input tensor through unchanged (an identity,
            for a layer folded into the one before it).
        after: layers applied in order to the output (e.g. a quantizer).
        weights: `(source, target)` layer pairs whose weights are copied
            once the new model is built (`source`'s into `target`).
    """

    operation: Any = None
    after: Sequence[Any] = ()
    weights: Sequence[tuple[Any, Any]] = ()


#: A node that passes its first input through (see `Replacement`).
IDENTITY = Replacement()

Plan = Callable[[Node, Graph], "Replacement | Any | None"]


def copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer with `layer`'s config, built like it, without weights.

    Building before use matters for layers that cannot be built from one
    input shape (`MultiHeadAttention`): the copy is built from `layer`'s
    own build config.
    """
    new = _construct(type(layer), layer.get_config())
    build_config = layer.get_build_config() if layer.built else None
    if build_config:
        new.build_from_config(build_config)
    return new


def _init_parameters(cls: type) -> set[str]:
    """Every keyword a layer constructor chain accepts by name."""
    names = {"input_shape", "input_dim"}  # taken from `**kwargs` by Layer
    for base in cls.__mro__:
        init = base.__dict__.get("__init__")
        if init is not None and base is not object:
            names.update(inspect.signature(init).parameters)
        if base is keras.layers.Layer:
            break
    return names - {"self", "args", "kwargs"}


def _construct(cls: type, config: dict) -> keras.layers.Layer:
    """`cls.from_config(config)`, tolerating keys the constructor rejects.

    keras-hub 0.32's `ViTPatchingAndEmbedding.get_config()` returns derived
    values (`num_patches`, `num_positions`) that its `__init__` does not
    accept, so its own `from_config` fails ("Unrecognized keyword
    arguments"). Such keys are dropped and the layer is made again; the
    weights copied afterwards check that it has the same layout.
    """
    try:
        return cls.from_config(config)
    except (TypeError, ValueError):
        accepted = _init_parameters(cls)
        kept = {key: value for key, value in config.items() if key in accepted}
        if len(kept) == len(config):
            raise
        return cls.from_config(kept)


def loadable_config(layer: keras.layers.Layer) -> dict:
    """`layer.get_config()` without the keys its constructor rejects.

    What a wrapper serializes for the layer it holds, so that
    `keras.models.load_model` can make it again (see `_construct`).
    """
    config = layer.get_config()
    accepted = _init_parameters(type(layer))
    kept = {key: value for key, value in config.items() if key in accepted}
    if len(kept) == len(config):
        return config
    try:
        type(layer).from_config(config)
    except (TypeError, ValueError):
        return kept
    return config


def copy_weights(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Copy every weight of `source` into `target` (same layout)."""
    values = [variable.numpy() for variable in source.weights]
    if values:
        target.set_weights(values)


def _tensor_map(mapping: dict) -> Callable[[Any], Any]:
    def fill(value):
        if isinstance(value, keras.KerasTensor):
            return mapping[id(value)]
        return value

    return fill


class _Rebuilder:
    def __init__(self, plan: Plan | None, batch_size: int | None = None):
        self.batch_size = batch_size
        self.plan = plan
        self.replacements: dict[int, Replacement] = {}
        self.weight_pairs: list[tuple[Any, Any]] = []

    def replacement(self, node: Node, graph: Graph) -> Replacement:
        key = id(node.operation)
        if key in self.replacements:
            # A shared layer: every call uses the same new layer.
            return self.replacements[key]
        result = self.plan(node, graph) if self.plan is not None else None
        if result is None:
            result = Replacement(self.default(node))
        elif not isinstance(result, Replacement):
            result = Replacement(result)
        self.weight_pairs.extend(result.weights)
        self.replacements[key] = result
        return result

    def default(self, node: Node):
        operation = node.operation
        if node.is_model:
            return self.model(operation)
        if not node.is_layer:
            return operation  # stateless: `keras.ops` calls are reused
        new = copy_layer(operation)
        self.weight_pairs.append((operation, new))
        return new

    def model(self, model: keras.Model, input_layers=None, top=False) -> keras.Model:
        graph = read(model)
        if not graph.built and input_layers is not None:
            raise ValueError(
                f"Sequential model {model.name!r} must be built with a known "
                "input shape (start it with `keras.Input(...)`). Received: an "
                "unbuilt model"
            )
        replaced = [self.replacement(node, graph) for node in graph.nodes]
        if isinstance(model, keras.Sequential) and input_layers is None:
            layers = _sequential_layers(replaced)
            if not graph.built:
                if layers is None:
                    raise ValueError(
                        f"Sequential model {model.name!r} must be built (start it "
                        "with `keras.Input(...)`) for this rewrite. Received: an "
                        "unbuilt model"
                    )
                return keras.Sequential(layers, name=model.name)
            if layers is not None:
                new_input = _new_input(model.inputs[0], self.batch_size if top else None)
                return keras.Sequential([new_input, *layers], name=model.name)
        return self.functional(graph, replaced, input_layers, top)

    def functional(self, graph: Graph, replaced, input_layers, top=False) -> keras.Model:
        mapping: dict[int, Any] = {}
        new_inputs = []
        for tensor in graph.inputs:
            new_input = _new_input(tensor, self.batch_size if top else None)
            new_inputs.append(new_input)
            layer = input_layers(tensor) if input_layers is not None else None
            mapping[id(tensor)] = layer(new_input) if layer is not None else new_input
        for node, replacement in zip(graph.nodes, replaced):
            fill = _tensor_map(mapping)
            args = keras.tree.map_structure(fill, node.args)
            kwargs = keras.tree.map_structure(fill, node.kwargs)
            if replacement.operation is None:
                outputs = [fill(node.inputs[0])]
            else:
                outputs = replacement.operation(*args, **kwargs)
                for layer in replacement.after:
                    outputs = layer(outputs)
                outputs = keras.tree.flatten(outputs)
            for old, new in zip(node.outputs, outputs, strict=True):
                mapping[id(old)] = new
        model = graph.model
        outputs = [mapping[id(tensor)] for tensor in graph.outputs]
        return keras.Model(
            keras.tree.pack_sequence_as(_keras.inputs_struct(model), new_inputs),
            keras.tree.pack_sequence_as(_keras.outputs_struct(model), outputs),
            name=model.name,
        )


def _new_input(tensor, batch_size: int | None = None) -> keras.KerasTensor:
    """A new model input like `tensor`, with its name (as `clone_model` does:
    the exported file's input names stay the same), and `batch_size` if
    given."""
    shape = tuple(tensor.shape)
    if batch_size is not None:
        shape = (batch_size, *shape[1:])
    return keras.Input(batch_shape=shape, dtype=tensor.dtype, name=tensor.name)


def _sequential_layers(replaced: list[Replacement]) -> list | None:
    """The layers of a rebuilt Sequential, or None if it must be functional."""
    layers = []
    for replacement in replaced:
        if replacement.operation is None:
            continue
        chain = [replacement.operation, *replacement.after]
        if not all(isinstance(layer, keras.layers.Layer) for layer in chain):
            return None
        layers.extend(chain)
    return layers


def rebuild(
    model: keras.Model,
    plan: Plan | None = None,
    *,
    input_layers: Callable[[Any], Any] | None = None,
    batch_size: int | None = None,
) -> keras.Model:
    """A new model computing `model`'s graph with each node replaced by `plan`.

    `plan(node, graph)` is asked once per operation (a shared layer's later
    calls reuse the first answer) and returns a `Replacement`, a layer or
    operation to call in the node's place, or None for the default: a copy
    of a layer with its weights, the same `keras.Operation`, or a nested
    model rebuilt with the same plan. A Sequential model stays Sequential
    when every replacement is a layer.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(4, name="a")(inputs)
    >>> outputs = keras.layers.Dropout(0.5, name="drop")(x + inputs)
    >>> model = keras.Model(inputs, outputs)
    >>> plain = rebuild(model, lambda node, graph: IDENTITY if node.name == "drop" else None)
    >>> [layer.name for layer in plain.layers[1:]]
    ['a']

    Args:
        model: a Sequential or functional model (nested models inside are
            rebuilt too).
        plan: `plan(node, graph) -> Replacement | layer | None`.
        input_layers: optional `fn(input_tensor) -> layer | None`; the layer
            is applied to that model input (top level only).
        batch_size: optional fixed batch size of the new model's inputs
            (top level only; nested models take what they are called on).

    Returns:
        A new Keras model; `model` is left unchanged.
    """
    builder = _Rebuilder(plan, batch_size)
    new_model = builder.model(model, input_layers, top=True)
    for source, target in builder.weight_pairs:
        copy_weights(source, target)
    return new_model
