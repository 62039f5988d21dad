"""Which output channels flow where: the channel groups of a model graph.

Channel pruning may remove output channel `c` of a Conv/Dense layer (or
unit `c` of an LSTM) only if every op that reads it can drop it too: a
consumer Conv/Dense (or SeparableConv2D: its depthwise filters and
pointwise rows of `c`; or an LSTM/GRU/SimpleRNN: its kernel's row `c`)
loses input channel `c`, a channel-wise op (BatchNormalization, an activation, pooling,
`x + 3.0`, `x * (1 / 6)`, `keras.ops.sigmoid`) keeps it apart from the
others, an elementwise merge of two tensors (`Add`, `x * gate`) joins it
with channel `c` of the other input into one *group* that is removed
together or not at all. Anything else that reads the channel (a Reshape, a
LayerNormalization, an attention layer, a `keras.ops` call it cannot reason
about, a nested model, a model output) *blocks* its group, with a reason.

`ChannelGraph` computes this once over `tfaccel.graph.read(model)`: no
tracing, no changes to the model. `prune_channels` uses it to pick layers,
`shrink` to slice them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfaccel.graph import OUTPUT, Graph, Node, read
from tfaccel.pruning.recurrent_channels import (
    RECURRENT,
    is_recurrent,
    is_unit_producer,
    unit_count,
)

__all__ = ["ChannelGraph", "SEPARABLE", "UNPRUNABLE", "channel_count", "is_prunable"]

UNPRUNABLE = -1  # label of a channel no producer owns

PRUNABLE = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Dense,
)
DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# Consumers that read every input channel into new output channels, as a
# Conv/Dense does, without producing prunable channels themselves.
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)

# Layers that act on each channel separately (labels pass through unchanged).
_CHANNELWISE = (
    keras.layers.BatchNormalization,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.Identity,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
)
_MERGE_LAYERS = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Average,
    keras.layers.Multiply,
    keras.layers.Maximum,
    keras.layers.Minimum,
)
# `keras.ops` operations (class names) computing each element on its own.
_ELEMENTWISE_OPS = frozenset(
    {
        "Abs", "Absolute", "Cast", "Ceil", "Clip", "Cos", "Elu", "Erf", "Exp",
        "Floor", "Gelu", "HardSigmoid", "HardSilu", "HardSwish", "LeakyRelu",
        "Log", "Log1p", "Negative", "Relu", "Relu6", "Round", "Rsqrt", "Selu",
        "Sigmoid", "Sign", "Silu", "Sin", "Softplus", "Softsign", "Sqrt",
        "Square", "Swish", "Tanh",
    }
)
# Binary `keras.ops` operations: with a scalar constant they are channel-wise,
# with two tensors of the same channels an elementwise merge.
_BINARY_OPS = frozenset(
    {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum"}
)
_NOT_ELEMENTWISE = ("softmax", "log_softmax", "sparsemax", "glu")


def is_prunable(layer) -> bool:
    """Whether `layer` produces channels that can be pruned (and sliced).

    Exact types: DepthwiseConv2D/SeparableConv/transposed convs are not
    channel producers here (depthwise channels follow their input). An
    `LSTM` (or `Bidirectional(LSTM)`, concatenated) produces its units
    (`tfaccel.pruning.recurrent_channels`).
    """
    if type(layer) in PRUNABLE:
        return getattr(layer, "groups", 1) == 1
    return is_unit_producer(layer)


def channel_count(layer) -> int:
    """How many output channels a prunable layer has."""
    if type(layer) in PRUNABLE:
        return int(layer.kernel.shape[-1])
    return unit_count(layer)


def channels_last(layer) -> bool:
    """Whether `layer` keeps channels on the last axis."""
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def norm_axis_is_last(norm, rank: int) -> bool:
    """Whether a BatchNormalization normalizes the last axis of a rank-`rank` input."""
    axis = norm.axis if isinstance(norm.axis, int) else norm.axis[0]
    return axis in (-1, rank - 1)


def _is_scalar(value) -> bool:
    if isinstance(value, (bool, int, float, np.number)) or value is None:
        return True
    return isinstance(value, np.ndarray) and value.size == 1


def describe(node: Node) -> str:
    """`'name' (Class)` for a layer, `'name' (keras.ops Class)` for an op."""
    kind = type(node.operation).__name__
    if not node.is_layer:
        kind = f"keras.ops {kind}"
    return f"{node.name!r} ({kind})"


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []
        self.pinned: list[bool] = []  # merged with a channel nobody can remove

    def new(self) -> int:
        self.parent.append(len(self.parent))
        self.pinned.append(False)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        if a == UNPRUNABLE and b == UNPRUNABLE:
            return
        if a == UNPRUNABLE or b == UNPRUNABLE:
            self.pinned[self.find(b if a == UNPRUNABLE else a)] = True
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.pinned[ra] = self.pinned[ra] or self.pinned[rb]


class ChannelGraph:
    """Every output channel of the producers, followed through a model.

    Internal to channel pruning. `labels[id(tensor)]` is an int array with
    one label per last-axis position (`UNPRUNABLE` for channels no producer
    owns); `uf` merges labels joined by elementwise merges; `blocked[root]`
    lists why a group cannot be removed; `owner[label] = (producer,
    channel)`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(3, name="a")(inputs)
    >>> x = keras.layers.LayerNormalization(name="norm")(x + 1.0)
    >>> analysis = ChannelGraph(keras.Model(inputs, keras.layers.Dense(2)(x)))
    >>> analysis.reasons(analysis.graph.model.get_layer("a"))
    ["'norm' (LayerNormalization) is not a layer tfaccel can shrink through"]

    Args:
        model: a Sequential or functional model.
        is_producer: which layers start new channel labels (default: every
            prunable Conv/Dense layer).
    """

    def __init__(
        self, model: keras.Model, is_producer: Callable[[Any], bool] = is_prunable
    ):
        self.graph: Graph = read(model)
        self.is_producer = is_producer
        self.uf = _UnionFind()
        self.labels: dict[int, np.ndarray] = {}
        self.owner: dict[int, tuple[Any, int]] = {}
        self.blocked: dict[int, list[str]] = {}
        for node in self.graph.nodes:
            self._visit(node)
        for tensor in self.graph.outputs:
            self._block([self.get(tensor)], "it reaches a model output")

    # -- labels -----------------------------------------------------------
    def get(self, tensor) -> np.ndarray:
        """The labels of `tensor`'s last axis."""
        key = id(tensor)
        if key not in self.labels:
            self.labels[key] = np.full(int(tensor.shape[-1]), UNPRUNABLE)
        return self.labels[key]

    def roots(self, labels: np.ndarray) -> np.ndarray:
        return np.array(
            [UNPRUNABLE if x == UNPRUNABLE else self.uf.find(int(x)) for x in labels]
        )

    def _block(self, labels: list, reason: str) -> None:
        for label in {int(x) for x in np.concatenate(labels) if x != UNPRUNABLE}:
            self.blocked.setdefault(self.uf.find(label), []).append(reason)

    # -- rules --------------------------------------------------------------
    def _visit(self, node: Node) -> None:
        operation = node.operation
        in_labels = [self.get(t) for t in node.inputs]
        has_labels = any((lab != UNPRUNABLE).any() for lab in in_labels)
        if len(self.graph.calls(operation)) > 1:
            # Its calls would need the same slice: never worth the risk.
            out, reason = None, "is a shared layer"
        else:
            out, reason = self._rule(node, in_labels)
        if reason is not None and has_labels:
            self._block(in_labels, f"{describe(node)} {reason}")
        for index, tensor in enumerate(node.outputs):
            fits = out is not None and index == 0 and len(out) == tensor.shape[-1]
            self.labels[id(tensor)] = out if fits else self.get(tensor)

    def _rule(self, node: Node, in_labels) -> tuple[np.ndarray | None, str | None]:
        """`(output labels or None, reason the inputs are blocked or None)`."""
        operation = node.operation
        if isinstance(operation, keras.Model):
            return None, "is a nested model (channel pruning does not reach inside it)"
        if not node.is_layer:
            return self._op_rule(node, in_labels)
        inner = getattr(operation, "layer", operation)
        if self.is_producer(operation) or is_prunable(inner):
            return self._linear(node, inner, in_labels)
        for classes, rule in _LAYER_RULES:
            if isinstance(operation, classes):
                return rule(self, node, in_labels)
        return None, "is not a layer tfaccel can shrink through"

    def _linear(self, node: Node, inner, in_labels):
        if len(node.inputs) != 1 or not channels_last(inner):
            return None, "is channels_first or has several inputs"
        if not self.is_producer(node.operation):
            return None, None  # a consumer: slices its input channels
        labels = np.array([self.uf.new() for _ in range(channel_count(inner))])
        for channel, label in enumerate(labels):
            self.owner[int(label)] = (node.operation, channel)
        return labels, None

    def _channelwise(self, node: Node, in_labels):
        layer = node.operation
        if isinstance(layer, keras.layers.BatchNormalization):
            ok = norm_axis_is_last(layer, len(node.inputs[0].shape))
        else:
            ok = channels_last(layer)
        if len(node.inputs) != 1 or not ok:
            return None, "does not act on the last axis"
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        if activation in _NOT_ELEMENTWISE:
            return None, f"mixes channels ({activation})"
        return in_labels[0], None

    def _depthwise(self, node: Node, in_labels):
        layer = node.operation
        if layer.depth_multiplier == 1 and channels_last(layer):
            return in_labels[0], None
        return None, "has depth_multiplier != 1"

    def _separable(self, node: Node, in_labels):
        if len(node.inputs) == 1 and channels_last(node.operation):
            return None, None  # a consumer: slices its input channels
        return None, "is channels_first or has several inputs"

    def _recurrent(self, node: Node, in_labels):
        if len(node.inputs) != 1:
            return None, "is called with a mask or initial states"
        if not is_recurrent(node.operation):
            return None, "has a recurrent cell tfaccel cannot slice"
        return None, None  # a consumer: slices its kernel's input rows

    def _flatten(self, node: Node, in_labels):
        spatial = node.inputs[0].shape[1:-1]
        if all(d is not None for d in spatial) and channels_last(node.operation):
            # Channels-last flatten: feature index = position * C + channel.
            return np.tile(in_labels[0], int(np.prod(spatial, dtype=int))), None
        return None, "has an unknown spatial shape"

    def _concatenate(self, node: Node, in_labels):
        axis = node.operation.axis
        if axis in (-1, len(node.inputs[0].shape) - 1):
            return np.concatenate(in_labels), None
        return None, f"joins on axis {axis}"

    def _merge(self, node: Node, in_labels):
        widths = {int(t.shape[-1]) for t in node.inputs}
        if len(widths) != 1 or len(node.inputs) < 2:
            return None, "broadcasts"
        out = in_labels[0].copy()
        for labels in in_labels[1:]:
            for a, b in zip(out, labels):
                self.uf.union(int(a), int(b))
            out = np.where(out == UNPRUNABLE, labels, out)
        return out, None

    def _op_rule(self, node: Node, in_labels):
        name = type(node.operation).__name__
        constants = [
            value
            for value in keras.tree.flatten((node.args, node.kwargs))
            if not isinstance(value, keras.KerasTensor)
        ]
        known = name in _ELEMENTWISE_OPS or name in _BINARY_OPS
        if known and not all(_is_scalar(value) for value in constants):
            return None, "combines channels with a constant that is not a scalar"
        if known and len(node.inputs) == 1:
            return in_labels[0], None
        if name in _BINARY_OPS:
            return self._merge(node, in_labels)
        return None, "is an operation tfaccel cannot reason about"

    # -- queries ------------------------------------------------------------
    def output_labels(self, layer) -> np.ndarray | None:
        """The labels of `layer`'s (first call's) output; None if not called."""
        calls = self.graph.calls(layer)
        return self.labels.get(id(calls[0].outputs[0])) if calls else None

    def reasons(self, layer) -> list[str]:
        """Why `layer`'s channels cannot be removed (empty: they can)."""
        calls = self.graph.calls(layer)
        if len(calls) > 1:
            return [f"{describe(calls[0])} is a shared layer"]
        out = self.output_labels(layer)
        if out is None:
            return ["it is not part of the model graph"]
        reasons: list[str] = []
        for root in sorted(set(self.roots(out).tolist()) - {UNPRUNABLE}):
            for reason in self.blocked.get(root, []):
                if reason not in reasons:
                    reasons.append(reason)
        return reasons

    def group_members(self, layer) -> tuple[set[int], bool]:
        """Other producers sharing a channel group with `layer`; pinned flag."""
        roots = set(self.roots(self.output_labels(layer)).tolist())
        others = {
            id(producer)
            for label, (producer, _) in self.owner.items()
            if self.uf.find(label) in roots and producer is not layer
        }
        return others, any(self.uf.pinned[root] for root in roots - {UNPRUNABLE})

    def fusable_norm(self, layer):
        """The BatchNormalization that alone reads `layer`'s output, or None.

        It must normalize the channel axis, and `layer` must be linear: the
        wrapper then computes `norm(layer(x)) * mask`.
        """
        (node,) = self.graph.calls(layer)
        user = self.graph.only_consumer(node)
        if user is None or user is OUTPUT or not user.is_layer:
            return None
        norm = user.operation
        if (
            isinstance(norm, keras.layers.BatchNormalization)
            and len(user.inputs) == 1
            and getattr(layer, "activation", None) in (None, keras.activations.linear)
            and norm_axis_is_last(norm, len(node.outputs[0].shape))
        ):
            return norm
        return None


# Layer class -> how its output channels follow its input channels (checked
# in order; prunable Conv/Dense layers and `keras.ops` are handled first).
_LAYER_RULES = (
    (_CHANNELWISE, ChannelGraph._channelwise),
    (DEPTHWISE, ChannelGraph._depthwise),
    (SEPARABLE, ChannelGraph._separable),
    (RECURRENT, ChannelGraph._recurrent),
    ((keras.layers.Flatten,), ChannelGraph._flatten),
    (_MERGE_LAYERS, ChannelGraph._merge),
    ((keras.layers.Concatenate,), ChannelGraph._concatenate),
)
