"""Channel (filter) pruning inside `fit`: masks whole output channels.

Unstructured zeros shrink files but not latency; removing whole filters does
both. `prune_channels` wraps every eligible `Conv1D`/`Conv2D`/`Conv3D`/`Dense`
in a `PruneChannels` wrapper holding one mask entry per output channel, and
`tfaccel.pruning.shrink.shrink` later rebuilds a smaller plain model.

Exactness contract: a masked channel is *exactly zero* at the wrapper's
output, so the masked model computes what the shrunken model computes.

- The wrapped layer runs with `kernel * mask` and `bias * mask` (through
  `tfaccel._substitute.substitute`: gradients reach the variables, nothing is
  assigned in the forward pass).
- A `BatchNormalization` that directly follows the layer (and is its only
  consumer) is *fused into the wrapper* (`norm=`): the wrapper computes
  `norm(layer(x)) * mask`, because a BN turns a zero channel into the
  constant `beta - gamma * mean / sqrt(var + eps)`, which a following
  3x3 'same' convolution cannot absorb exactly (zero padding). Shrinking
  splits the pair back into the two original layers.
- Without a fused BN the layer's activation must map 0 to 0 (relu, swish...).

Mask state lives in layer variables, so training is exact without callbacks:
`mask` (float32, `aggregation="none"`: every replica recomputes the same mask
from the already synchronized weights) and `step` (int64,
`aggregation="only_first_replica"`, incremented in `call` when training).
The mask is updated with `where(should_prune, new, old)` (no `tf.cond`), and
the threshold is sort based (exact count, no `top_k` with a variable `k`),
so it compiles under XLA.

Budget: `schedule` gives the fraction of output channels masked *per layer*
(`round(fraction * channels)`, at least one channel kept). With
`budget="global"` and a float fraction, `prune_channels` ranks all candidate
channels together by their criterion normalized by the layer's mean score,
masks the globally lowest `fraction` of all channels, and fixes each layer's
share as its own fraction (ranking done once, on the weights given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from tfaccel._graph import as_functional
from tfaccel._substitute import full_precision, substitute

__all__ = ["PruneChannels", "prune_channels", "channel_fractions"]

_CRITERIA = ("l1", "l2", "bn_gamma")
_PRUNABLE = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Dense,
)


def _is_prunable(layer) -> bool:
    # Exact types: DepthwiseConv2D/SeparableConv/transposed convs are not
    # channel producers here (depthwise channels follow their input).
    return type(layer) in _PRUNABLE and getattr(layer, "groups", 1) == 1


def _maps_zero_to_zero(activation) -> bool:
    if activation is None:
        return True
    value = ops.convert_to_numpy(activation(ops.zeros((1,), "float32")))
    return float(np.abs(value).max()) == 0.0


def _resolve_schedule(schedule):
    if isinstance(schedule, dict):
        return keras.saving.deserialize_keras_object(schedule)
    return schedule


@keras.saving.register_keras_serializable(package="tfaccel")
class PruneChannels(keras.layers.Wrapper):
    """Masks whole output channels of a Conv or Dense layer during training.

    Each training call increments `step`, asks `schedule(step)` for
    `(should_prune, fraction)` and, when due, masks the
    `round(fraction * scale * channels)` channels with the lowest criterion
    score. A masked channel is exactly zero at the wrapper's output (see the
    module docstring), so `shrink` can remove it without changing outputs.

    Example:

    >>> conv = keras.layers.Conv2D(4, 3, use_bias=False)
    >>> bn = keras.layers.BatchNormalization()
    >>> wrapper = PruneChannels(conv, schedule=0.5, norm=bn)
    >>> y = wrapper(np.ones((2, 5, 5, 1), "float32"), training=True)
    >>> int(ops.sum(wrapper.mask))
    2

    Args:
        layer: a `Conv1D`, `Conv2D`, `Conv3D` or `Dense` layer.
        schedule: a float fraction of channels to mask (applied from the
            first training step, every step) or a `tfaccel.schedules`
            schedule: a callable `step -> (should_prune, fraction)`.
        criterion: `"l1"` or `"l2"` norm of each filter, or `"bn_gamma"`
            (`|gamma|` of the fused `norm`).
        norm: optional `BatchNormalization` that follows `layer`; it is
            fused (computed inside the wrapper, output masked after it).
        scale: multiplies the schedule's fraction (global budgets).
        **kwargs: base layer arguments.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        schedule: Any = 0.5,
        criterion: str = "l1",
        norm: keras.layers.Layer | None = None,
        scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(layer, **kwargs)
        if not _is_prunable(layer):
            raise ValueError(
                "`layer` must be a Conv1D, Conv2D, Conv3D or Dense layer "
                f"(groups=1). Received: layer={layer!r}"
            )
        if criterion not in _CRITERIA:
            raise ValueError(
                f"`criterion` must be one of {_CRITERIA}. "
                f"Received: criterion={criterion!r}"
            )
        if norm is not None and not isinstance(norm, keras.layers.BatchNormalization):
            raise ValueError(
                "`norm` must be a BatchNormalization layer or None. "
                f"Received: norm={norm!r}"
            )
        if criterion == "bn_gamma" and (norm is None or not norm.scale):
            raise ValueError(
                "criterion='bn_gamma' needs a following BatchNormalization "
                f"with scale=True (`norm`). Received: norm={norm!r}"
            )
        activation = getattr(layer, "activation", None)
        if norm is not None and activation not in (
            None,
            keras.activations.linear,
        ):
            raise ValueError(
                "A layer fused with a BatchNormalization must have a linear "
                f"activation. Received: layer={layer.name!r} with "
                f"activation={activation!r}"
            )
        if norm is None and not _maps_zero_to_zero(activation):
            raise ValueError(
                "Channel pruning needs the layer's activation to map 0 to 0 so "
                f"that masked channels are exactly zero. Received: layer="
                f"{layer.name!r} with activation={activation!r}"
            )
        schedule = _resolve_schedule(schedule)
        if isinstance(schedule, (int, float)):
            if not 0.0 <= float(schedule) < 1.0:
                raise ValueError(
                    "`schedule` as a number must be a fraction in [0, 1). "
                    f"Received: schedule={schedule!r}"
                )
            schedule = float(schedule)
        elif not callable(schedule):
            raise ValueError(
                "`schedule` must be a float fraction or a callable "
                f"`step -> (should_prune, fraction)`. Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.criterion = criterion
        self.norm = norm
        self.scale = float(scale)

    # -- building -------------------------------------------------------
    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        out_shape = self.layer.compute_output_shape(input_shape)
        if self.norm is not None and not self.norm.built:
            self.norm.build(out_shape)
        channels = int(self.layer.kernel.shape[-1])
        self.mask = self.add_weight(
            name="mask",
            shape=(channels,),
            initializer="ones",
            trainable=False,
            dtype="float32",
            aggregation="none",
        )
        self.step = self.add_weight(
            name="step",
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="int64",
            aggregation="only_first_replica",
        )
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    @property
    def channels(self) -> int:
        return int(self.layer.kernel.shape[-1])

    # -- masks ------------------------------------------------------------
    def scores(self):
        """Criterion score of each output channel (float32, shape `(C,)`)."""
        if self.criterion == "bn_gamma":
            return ops.abs(ops.cast(self.norm.gamma, "float32"))
        kernel = ops.cast(self.layer.kernel, "float32")
        flat = ops.reshape(kernel, (-1, self.channels))
        if self.criterion == "l1":
            return ops.sum(ops.abs(flat), axis=0)
        return ops.sqrt(ops.sum(ops.square(flat), axis=0))

    def _fraction(self, step):
        if isinstance(self.schedule, float):
            return ops.convert_to_tensor(True), ops.convert_to_tensor(
                self.schedule, "float32"
            )
        should_prune, fraction = self.schedule(step)
        return ops.convert_to_tensor(should_prune), ops.cast(fraction, "float32")

    def compute_mask_from(self, fraction):
        """Mask holding zeros for the `round(fraction*scale*C)` lowest scores."""
        channels = self.channels
        count = ops.round(ops.cast(fraction, "float32") * self.scale * channels)
        count = ops.clip(count, 0.0, float(channels - 1))
        order = ops.argsort(self.scores())
        # The argsort of a permutation is its inverse: the rank of each score.
        ranks = ops.argsort(order)
        return ops.cast(ops.cast(ranks, "float32") >= count, "float32")

    def call(self, inputs, training=None):
        if training:
            # The k-th training call (k = 0, 1, ...) evaluates the schedule at
            # step k, as `PruneLowMagnitude` does: a schedule beginning at
            # step 0 masks from the first batch.
            step = ops.convert_to_tensor(self.step)
            should_prune, fraction = self._fraction(step)
            with full_precision():  # score float32 weights, not their autocast
                new_mask = self.compute_mask_from(fraction)
            mask = ops.where(should_prune, new_mask, self.mask)
            self.mask.assign(mask)
            self.step.assign(step + 1)
        else:
            mask = ops.convert_to_tensor(self.mask)
        mapping = [
            (
                self.layer.kernel,
                self.layer.kernel * ops.cast(mask, self.layer.kernel.dtype),
            )
        ]
        if getattr(self.layer, "use_bias", False):
            mapping.append(
                (
                    self.layer.bias,
                    self.layer.bias * ops.cast(mask, self.layer.bias.dtype),
                )
            )
        with substitute(mapping, owner=self.layer):
            outputs = self.layer(inputs)
        if self.norm is not None:
            outputs = self.norm(outputs, training=training)
            outputs = outputs * ops.cast(mask, outputs.dtype)
        return outputs

    # -- serialization ---------------------------------------------------
    def get_config(self):
        config = super().get_config()
        schedule = self.schedule
        if not isinstance(schedule, float):
            schedule = keras.saving.serialize_keras_object(schedule)
        config.update(
            {
                "schedule": schedule,
                "criterion": self.criterion,
                "norm": None
                if self.norm is None
                else keras.saving.serialize_keras_object(self.norm),
                "scale": self.scale,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        if config.get("norm") is not None:
            config["norm"] = keras.saving.deserialize_keras_object(config["norm"])
        return cls(**config)


# ---------------------------------------------------------------------------
# Graph analysis shared with shrink.py: which output channels flow where.
# ---------------------------------------------------------------------------

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
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_ELEMENTWISE = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Average,
    keras.layers.Multiply,
    keras.layers.Maximum,
    keras.layers.Minimum,
)
_MIXING = _PRUNABLE  # consumers that take a slice of their input channels

UNPRUNABLE = -1  # label of a channel no producer owns


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


def _channel_axis_ok(layer) -> bool:
    fmt = getattr(layer, "data_format", "channels_last")
    return fmt in (None, "channels_last")


class GraphAnalysis:
    """Traces every output channel of the producers through a model.

    Internal to `channels` and `shrink`. After `run`, `labels[id(tensor)]` is
    an int array (one label per last-axis position, `UNPRUNABLE` for channels
    no producer owns), `uf` merges labels joined by elementwise merges (Add),
    `blocked[root]` lists why a group cannot be removed (an unsupported layer
    or a model output consumes it), `owner[label] = (producer, channel)`.
    """

    def __init__(self, model: keras.Model, is_producer: Callable[[Any], bool]):
        self.model = as_functional(model)
        self.is_producer = is_producer
        self.uf = _UnionFind()
        self.labels: dict[int, np.ndarray] = {}
        self.owner: dict[int, tuple[Any, int]] = {}
        self.blocked: dict[int, list[str]] = {}
        self.calls: dict[int, list[tuple[list, Any]]] = {}  # layer -> [(inputs, out)]
        self.consumers: dict[int, int] = {}  # tensor id -> number of uses
        self.producer_of: dict[int, Any] = {}  # tensor id -> layer
        self.layer_inputs: dict[int, list] = {}
        self.layer_output_labels: dict[int, np.ndarray] = {}
        self.layer_input_labels: dict[int, list[np.ndarray]] = {}
        self.traced: keras.Model | None = None

    def _get(self, tensor) -> np.ndarray:
        key = id(tensor)
        if key not in self.labels:
            self.labels[key] = np.full(int(tensor.shape[-1]), UNPRUNABLE)
        return self.labels[key]

    def _block(self, labels: np.ndarray, reason: str) -> None:
        for label in set(int(x) for x in labels if x != UNPRUNABLE):
            self.blocked.setdefault(self.uf.find(label), []).append(reason)

    def roots(self, labels: np.ndarray) -> np.ndarray:
        return np.array(
            [UNPRUNABLE if x == UNPRUNABLE else self.uf.find(int(x)) for x in labels]
        )

    def _visit(self, layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        inputs = [
            t
            for t in keras.tree.flatten((args, kwargs))
            if isinstance(t, keras.KerasTensor)
        ]
        self.calls.setdefault(id(layer), []).append((inputs, outputs))
        for t in inputs:
            self.consumers[id(t)] = self.consumers.get(id(t), 0) + 1
        out_list = keras.tree.flatten(outputs)
        for t in out_list:
            self.producer_of[id(t)] = layer
        in_labels = [self._get(t) for t in inputs]
        self.layer_inputs[id(layer)] = inputs
        self.layer_input_labels[id(layer)] = in_labels
        has_labels = any((lab != UNPRUNABLE).any() for lab in in_labels)
        what = f"{layer.name!r} ({type(layer).__name__})"
        if len(self.calls[id(layer)]) > 1 and (has_labels or self.is_producer(layer)):
            self._block(np.concatenate(in_labels), f"{what} is a shared layer")
        out = None
        if self.is_producer(layer) or isinstance(layer, PruneChannels):
            if not _channel_axis_ok(
                layer.layer if isinstance(layer, PruneChannels) else layer
            ):
                self._block(np.concatenate(in_labels), f"{what} is channels_first")
            if self.is_producer(layer):
                out = np.array(
                    [self.uf.new() for _ in range(int(out_list[0].shape[-1]))]
                )
                for c, label in enumerate(out):
                    self.owner[int(label)] = (layer, c)
        elif isinstance(layer, _MIXING):
            if not _channel_axis_ok(layer) or getattr(layer, "groups", 1) != 1:
                self._block(in_labels[0], f"{what} is channels_first or grouped")
        elif isinstance(layer, _CHANNELWISE) and len(inputs) == 1:
            ok = _channel_axis_ok(layer)
            if isinstance(layer, keras.layers.BatchNormalization):
                axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
                ok = axis in (-1, len(inputs[0].shape) - 1)
            if ok:
                out = in_labels[0]
            else:
                self._block(in_labels[0], f"{what} does not act on the last axis")
        elif isinstance(layer, _DEPTHWISE) and len(inputs) == 1:
            if layer.depth_multiplier == 1 and _channel_axis_ok(layer):
                out = in_labels[0]
            else:
                self._block(in_labels[0], f"{what} has depth_multiplier != 1")
        elif isinstance(layer, keras.layers.Flatten) and len(inputs) == 1:
            spatial = inputs[0].shape[1:-1]
            if all(d is not None for d in spatial) and _channel_axis_ok(layer):
                # Channels-last flatten: feature index = position * C + channel.
                out = np.tile(in_labels[0], int(np.prod(spatial, dtype=int)))
            else:
                self._block(in_labels[0], f"{what} has an unknown spatial shape")
        elif isinstance(layer, _ELEMENTWISE):
            shapes = {tuple(t.shape[1:]) for t in inputs}
            if len(shapes) == 1:
                out = in_labels[0].copy()
                for lab in in_labels[1:]:
                    for a, b in zip(out, lab):
                        self.uf.union(int(a), int(b))
                    out = np.where(out == UNPRUNABLE, lab, out)
            else:
                self._block(np.concatenate(in_labels), f"{what} broadcasts")
        elif isinstance(layer, keras.layers.Concatenate):
            rank = len(inputs[0].shape)
            if layer.axis in (-1, rank - 1):
                out = np.concatenate(in_labels)
            else:
                self._block(
                    np.concatenate(in_labels), f"{what} joins on axis {layer.axis}"
                )
        elif has_labels:
            self._block(
                np.concatenate(in_labels),
                f"{what} is not a layer tfaccel can shrink through",
            )
        if out is None:
            out = np.full(int(out_list[0].shape[-1]), UNPRUNABLE)
        for t in out_list:
            self.labels[id(t)] = out
        self.layer_output_labels[id(layer)] = out
        return outputs

    def run(self) -> GraphAnalysis:
        # Tracing calls the model's own layers on new symbolic inputs, which
        # appends nodes to them; `release` removes those nodes again so the
        # layers do not look shared to later graph walks.
        self._node_counts = [
            (layer, len(layer._inbound_nodes), len(layer._outbound_nodes))
            for layer in self.model.layers
        ]
        self.traced = keras.models.clone_model(
            self.model, clone_function=lambda layer: layer, call_function=self._visit
        )
        for t in self.traced.outputs:
            self._block(self._get(t), "it reaches a model output")
        return self

    def release(self) -> None:
        """Detach the traced graph from the model's layers (call when done)."""
        for layer, inbound, outbound in getattr(self, "_node_counts", []):
            del layer._inbound_nodes[inbound:]
            del layer._outbound_nodes[outbound:]
        self._node_counts = []

    def reasons(self, layer) -> list[str]:
        """Why `layer`'s channels cannot be removed (empty: they can)."""
        out = self.layer_output_labels.get(id(layer))
        if out is None:
            return ["it is not part of the model graph"]
        reasons: list[str] = []
        for root in sorted(set(self.roots(out).tolist()) - {UNPRUNABLE}):
            for r in self.blocked.get(root, []):
                if r not in reasons:
                    reasons.append(r)
        return reasons

    def group_members(self, layer) -> tuple[set[int], bool]:
        """Other producers sharing a channel group with `layer`; pinned flag."""
        roots = set(self.roots(self.layer_output_labels[id(layer)]).tolist())
        others = set()
        pinned = False
        for label, (producer, _) in self.owner.items():
            if self.uf.find(label) in roots and producer is not layer:
                others.add(id(producer))
        for root in roots:
            pinned = pinned or self.uf.pinned[root]
        return others, pinned


def _fusable_norm(analysis: GraphAnalysis, layer):
    """The BatchNormalization that is the only consumer of `layer`'s output."""
    ((_, output),) = analysis.calls[id(layer)]
    if analysis.consumers.get(id(output), 0) != 1:
        return None
    for other_calls in analysis.calls.values():
        for inputs, out in other_calls:
            if len(inputs) == 1 and inputs[0] is output:
                consumer = analysis.producer_of[id(keras.tree.flatten(out)[0])]
                if (
                    isinstance(consumer, keras.layers.BatchNormalization)
                    and len(analysis.calls[id(consumer)]) == 1
                    and id(output) not in {id(t) for t in analysis.traced.outputs}
                    and getattr(layer, "activation", None)
                    in (None, keras.activations.linear)
                ):
                    axis = (
                        consumer.axis
                        if isinstance(consumer.axis, int)
                        else consumer.axis[0]
                    )
                    if axis in (-1, len(output.shape) - 1):
                        return consumer
    return None


def prune_channels(
    model: keras.Model,
    schedule: Any = 0.5,
    criterion: str = "l1",
    layers: Sequence[str] | Callable[[keras.layers.Layer], bool] | None = None,
    budget: str = "layer",
) -> keras.Model:
    """Returns a copy of `model` whose Conv/Dense layers mask output channels.

    Eligible layers are `Conv1D`/`Conv2D`/`Conv3D`/`Dense` whose output
    channels reach only layers `shrink` knows how to slice (convolutions,
    Dense, channel-wise layers, Flatten, pooling, elementwise merges,
    Concatenate) and never a model output. By default (`layers=None`) layers
    whose channels are joined with another producer's by an `Add` (residual
    branches) are left dense: such channels can only be removed when every
    member of the group masks them. Name them in `layers` to prune them too;
    `shrink` then removes the channels masked in every member and zeroes the
    rest of the masked ones. A `BatchNormalization` that directly follows a
    wrapped layer is fused into its `PruneChannels` wrapper.

    `model` is not modified: the returned model holds copies of its layers,
    starting from its weights.

    Example:

    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> x = keras.layers.ReLU()(x)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(x))
    >>> pruned = prune_channels(model, schedule=0.5)
    >>> [type(layer).__name__ for layer in pruned.layers][1]
    'PruneChannels'

    Args:
        model: a functional or Sequential Keras model.
        schedule: float fraction of channels to mask per layer, or a
            `tfaccel.schedules` schedule (`step -> (should_prune, fraction)`).
        criterion: `"l1"`, `"l2"` or `"bn_gamma"` (layers without a fused
            BatchNormalization fall back to `"l1"`).
        layers: a layer name or a list of names of layers to prune, or a
            predicate `layer -> bool`.
        budget: `"layer"` (every layer masks `fraction` of its channels) or
            `"global"` (rank all channels together, float `schedule` only).

    Returns:
        A new functional model with `PruneChannels` wrappers.

    Raises:
        ValueError: a named layer cannot be channel-pruned (the message names
            it and says why), or an argument is invalid.
    """
    if criterion not in _CRITERIA:
        raise ValueError(
            f"`criterion` must be one of {_CRITERIA}. Received: criterion={criterion!r}"
        )
    if budget not in ("layer", "global"):
        raise ValueError(
            f"`budget` must be 'layer' or 'global'. Received: budget={budget!r}"
        )
    if budget == "global" and not isinstance(schedule, (int, float)):
        raise ValueError(
            "budget='global' needs a float `schedule` (the global fraction). "
            f"Received: schedule={schedule!r}"
        )
    if isinstance(layers, str):
        layers = [layers]
    analysis = GraphAnalysis(model, _is_prunable).run()
    try:
        graph_layers = [
            analysis.producer_of.get(id(keras.tree.flatten(out)[0]))
            for calls in analysis.calls.values()
            for _, out in calls[:1]
        ]
        names = {layer.name for layer in graph_layers if layer is not None}
        if layers is not None and not callable(layers):
            layers = list(layers)
            unknown = sorted(set(layers) - names)
            if unknown:
                raise ValueError(
                    f"`layers` names layers that are not in the model: {unknown}. "
                    f"Received: layers={layers}"
                )
        chosen = {}
        for layer in graph_layers:
            if layer is None or not _is_prunable(layer):
                if (
                    layers is not None
                    and not callable(layers)
                    and layer is not None
                    and layer.name in layers
                ):
                    raise ValueError(
                        f"Layer {layer.name!r} ({type(layer).__name__}) cannot be "
                        "channel-pruned: only Conv1D/Conv2D/Conv3D/Dense layers "
                        "produce prunable channels."
                    )
                continue
            explicit = layers is not None and (
                layers(layer) if callable(layers) else layer.name in layers
            )
            if layers is not None and not explicit:
                continue
            reasons = analysis.reasons(layer)
            if reasons:
                if explicit:
                    raise ValueError(
                        f"Layer {layer.name!r} cannot be channel-pruned because its "
                        f"output channels reach a layer that cannot be shrunk: "
                        + "; ".join(reasons)
                    )
                continue
            others, pinned = analysis.group_members(layer)
            if not explicit and (others or pinned):
                continue
            chosen[id(layer)] = layer
        norm_of, fused = {}, set()
        for layer in chosen.values():
            norm = _fusable_norm(analysis, layer)
            norm_of[id(layer)] = norm
            if norm is not None:
                fused.add(id(norm))
        wrappers: dict[int, PruneChannels] = {}

        copies = []  # (original, copy): the pruned model owns fresh layers

        def copy(layer):
            new = layer.__class__.from_config(layer.get_config())
            copies.append((layer, new))
            return new

        def call(layer, *args, **kwargs):
            if id(layer) in chosen:
                norm = norm_of[id(layer)]
                wrapper = PruneChannels(
                    copy(layer),
                    schedule=schedule,
                    criterion=criterion
                    if (criterion != "bn_gamma" or norm is not None)
                    else "l1",
                    norm=None if norm is None else copy(norm),
                    name=f"{layer.name}_channels",
                )
                wrappers[id(layer)] = wrapper
                return wrapper(*args, **kwargs)
            if id(layer) in fused:
                return args[0]
            return copy(layer)(*args, **kwargs)
    finally:
        # Tracing added nodes to `model`'s layers; remove them even when a
        # bad argument raises, or the layers would look shared afterwards.
        analysis.release()
    pruned = keras.models.clone_model(
        analysis.model, clone_function=lambda layer: layer, call_function=call
    )
    for layer, new in copies:
        if layer.weights:
            new.set_weights([ops.convert_to_numpy(v) for v in layer.weights])
    if budget == "global" and wrappers:
        _apply_global_budget(list(wrappers.values()), float(schedule))
    return pruned


def _apply_global_budget(wrappers: list[PruneChannels], fraction: float) -> None:
    scores, owners = [], []
    for index, wrapper in enumerate(wrappers):
        s = ops.convert_to_numpy(wrapper.scores()).astype("float64")
        scores.append(s / max(float(s.mean()), 1e-12))
        owners.append(np.full(s.shape, index))
    flat, owner = np.concatenate(scores), np.concatenate(owners)
    total = int(round(fraction * flat.size))
    counts = np.zeros(len(wrappers), int)
    for position in np.argsort(flat, kind="stable"):
        if total == 0:
            break
        w = owner[position]
        if counts[w] < wrappers[w].channels - 1:
            counts[w] += 1
            total -= 1
    for wrapper, count in zip(wrappers, counts):
        wrapper.schedule = float(count) / wrapper.channels
        wrapper.scale = 1.0


def channel_fractions(model: keras.Model) -> dict[str, float]:
    """Fraction of masked output channels of each `PruneChannels` wrapper.

    Example:

    >>> pruned = prune_channels(keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(4), keras.layers.Dense(2)]))
    >>> list(channel_fractions(pruned).values())
    [0.0]
    """
    fractions = {}
    for layer in as_functional(model).layers:
        if isinstance(layer, PruneChannels):
            mask = ops.convert_to_numpy(layer.mask)
            fractions[layer.name] = float((mask == 0).mean())
    return fractions
