"""The model-surgery core: read any Keras 3 graph, rebuild it from a plan.

`read(model)` gives the call nodes of a Sequential or functional model
(layers, `keras.ops` operation nodes, keyword calls, shared layers, nested
models); `rebuild(model, plan)` replays that graph with each node replaced
as the plan says and carries the weights over; `selector(spec)` is the one
parser of "which layers". Pruning, channel pruning, quantization and export
are plans over this package; no feature walks a graph on its own.
"""

from tfaccel.graph.reader import (
    OUTPUT,
    Graph,
    Node,
    all_layers,
    as_functional,
    read,
    tensor_name,
)
from tfaccel.graph.rebuild import (
    IDENTITY,
    Replacement,
    copy_layer,
    copy_weights,
    rebuild,
)
from tfaccel.graph.select import LayerSelector, SelectionError, Selector, selector

__all__ = [
    "IDENTITY",
    "OUTPUT",
    "Graph",
    "LayerSelector",
    "Node",
    "Replacement",
    "SelectionError",
    "Selector",
    "all_layers",
    "as_functional",
    "copy_layer",
    "copy_weights",
    "read",
    "rebuild",
    "selector",
    "tensor_name",
]
