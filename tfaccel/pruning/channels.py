"""Channel (filter) pruning inside `fit`: masks whole output channels.

Unstructured zeros shrink files but not latency; removing whole filters does
both. `prune_channels` wraps every eligible `Conv1D`/`Conv2D`/`Conv3D`/`Dense`
(and `LSTM`: its units, see `tfaccel.pruning.recurrent_channels`) in a
`PruneChannels` wrapper holding one mask entry per output channel, and
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

Budget: the schedule gives the fraction of output channels masked *per
layer* (`round(fraction * channels)`, at least one channel kept). With
`budget="global"` and a float fraction, `prune_channels` ranks all candidate
channels together by their criterion normalized by the layer's mean score,
masks the globally lowest `fraction` of all channels, and gives each layer
its share as its own `ConstantSparsity` (ranking done once, on the weights
given).

Eligible layers and channel groups come from `channel_graph.ChannelGraph`
(over `tfaccel.graph.read`); the wrapping is a `tfaccel.graph.rebuild` plan.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfaccel._substitute import full_precision, substitute
from tfaccel.graph import (
    IDENTITY,
    LayerSelector,
    Replacement,
    copy_layer,
    read,
    rebuild,
    selector,
)
from tfaccel.pruning.base import PruningWrapper
from tfaccel.pruning.channel_budget import (
    channel_schedule,
    channel_scores,
    check_criterion,
    chosen_layers,
    global_schedules,
    maps_zero_to_zero,
)
from tfaccel.pruning.channel_graph import ChannelGraph, channel_count, is_prunable
from tfaccel.pruning.recurrent_channels import (
    is_unit_producer,
    masked_mapping,
    sliced_recurrent,
)
from tfaccel.pruning.registry import weight_key
from tfaccel.schedules import PruningSchedule

__all__ = ["PruneChannels", "prune_channels", "channel_fractions"]

@keras.saving.register_keras_serializable(package="tfaccel")
class PruneChannels(PruningWrapper):
    """Masks whole output channels of a Conv, Dense or LSTM layer in training.

    Each training call evaluates `schedule(step)` for `(should_prune,
    fraction)`, increments `step` and, when due, masks the
    `round(fraction * channels)` channels with the lowest criterion score.
    A masked channel is exactly zero at the wrapper's output (see the
    module docstring), so `shrink` can remove it without changing outputs.

    Example:

    >>> conv = keras.layers.Conv2D(4, 3, use_bias=False)
    >>> bn = keras.layers.BatchNormalization()
    >>> wrapper = PruneChannels(conv, schedule=0.5, norm=bn)
    >>> y = wrapper(np.ones((2, 5, 5, 1), "float32"), training=True)
    >>> int(ops.sum(wrapper.mask)), wrapper.schedule
    (2, ConstantSparsity(target_sparsity=0.5, begin_step=0, end_step=-1, frequency=1))

    Args:
        layer: a `Conv1D`, `Conv2D`, `Conv3D` or `Dense` layer, or an
            `LSTM` (a `Bidirectional` LSTM joined by `"concat"`): its units
            are masked through their candidate gate (see
            `tfaccel.pruning.recurrent_channels`).
        schedule: a `tfaccel.schedules.PruningSchedule`, or a float fraction
            of channels to mask (`ConstantSparsity(fraction, begin_step=0,
            frequency=1)`: from the first training step, every step).
        criterion: `"l1"` or `"l2"` norm of each filter, or `"bn_gamma"`
            (`|gamma|` of the fused `norm`).
        norm: optional `BatchNormalization` that follows `layer`; it is
            fused (computed inside the wrapper, output masked after it).
        scale: multiplies the schedule's fraction (kept for older code and
            configs: the schedule becomes a `ScaledSparsity`).
        **kwargs: base layer arguments.

    Raises:
        ValueError: an unsupported layer, criterion, norm or activation, or
            a fraction outside [0, 1).
        TypeError: `schedule` is neither a float nor a `PruningSchedule`.
    """

    structure = "channels"

    def __init__(
        self,
        layer: keras.layers.Layer,
        schedule: PruningSchedule | float = 0.5,
        criterion: str = "l1",
        norm: keras.layers.Layer | None = None,
        scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(layer, **kwargs)
        if not is_prunable(layer):
            raise ValueError(
                "`layer` must be a Conv1D, Conv2D, Conv3D or Dense layer "
                "(groups=1), or an LSTM (or Bidirectional LSTM joined by "
                f"'concat') returning no states. Received: layer={layer!r}"
            )
        check_criterion(criterion)
        self._recurrent = is_unit_producer(layer)
        if self._recurrent and (norm is not None or criterion == "bn_gamma"):
            raise ValueError(
                "An LSTM's units are pruned without a fused BatchNormalization: "
                "`norm` must be None and `criterion` 'l1' or 'l2'. Received: "
                f"norm={norm!r}, criterion={criterion!r}"
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
        activation = None if self._recurrent else getattr(layer, "activation", None)
        if norm is not None and activation not in (None, keras.activations.linear):
            raise ValueError(
                "A layer fused with a BatchNormalization must have a linear "
                f"activation. Received: layer={layer.name!r} with "
                f"activation={activation!r}"
            )
        if norm is None and not maps_zero_to_zero(activation):
            raise ValueError(
                "Channel pruning needs the layer's activation to map 0 to 0 so "
                f"that masked channels are exactly zero. Received: layer="
                f"{layer.name!r} with activation={activation!r}"
            )
        self.schedule = channel_schedule(schedule, scale)
        self.criterion = criterion
        self.norm = norm

    # -- building -------------------------------------------------------
    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        out_shape = self.layer.compute_output_shape(input_shape)
        if self.norm is not None and not self.norm.built:
            self.norm.build(out_shape)
        # Creation order (mask, then step) is the checkpoint layout.
        self.mask = self.add_weight(
            name="mask",
            shape=(self.channels,),
            initializer="ones",
            trainable=False,
            dtype="float32",
            aggregation="none",
        )
        self._step = self.add_weight(
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
    def step(self) -> keras.Variable:
        """The int64 count of training calls so far (variable `step`)."""
        return self._step

    @property
    def channels(self) -> int:
        return channel_count(self.layer)

    # -- masks ------------------------------------------------------------
    def scores(self):
        """Criterion score of each output channel (float32, shape `(C,)`)."""
        return channel_scores(self.layer, self.norm, self.criterion)

    def compute_mask_from(self, fraction):
        """Mask holding zeros for the `round(fraction * C)` lowest scores.

        A Bidirectional LSTM ranks each direction's units on their own:
        Keras builds both directions with one number of units, so each
        masks the same count.
        """
        scores = self.scores()
        if isinstance(self.layer, keras.layers.Bidirectional):
            half = self.channels // 2
            return ops.concatenate(
                [_lowest_masked(scores[:half], fraction),
                 _lowest_masked(scores[half:], fraction)]
            )
        return _lowest_masked(scores, fraction)

    def call(self, inputs, training=None, **kwargs):
        # `kwargs`: the `mask=None` a recurrent layer's node carries (a
        # masked call has two inputs and is never wrapped). Not a named
        # argument, so Keras does not record a mask for this wrapper.
        if training:
            # The k-th training call (k = 1, 2, ...) evaluates the schedule
            # at step k, as `PruneLowMagnitude` and tfmot do.
            step = ops.convert_to_tensor(self._step) + 1
            should_prune, fraction = self.schedule(step)
            with full_precision():  # score float32 weights, not their autocast
                new_mask = self.compute_mask_from(fraction)
            mask = ops.where(should_prune, new_mask, self.mask)
            self.mask.assign(mask)
            self._step.assign(step)
        else:
            mask = ops.convert_to_tensor(self.mask)
        if self._recurrent:
            # Masked units' candidate gates are zero: their h is exactly 0.
            mapping = masked_mapping(self.layer, mask)
        else:
            variables = [self.layer.kernel]
            if getattr(self.layer, "use_bias", False):
                variables.append(self.layer.bias)
            mapping = [(v, v * ops.cast(mask, v.dtype)) for v in variables]
        with substitute(mapping, tracked=self.layer.variables, owner=self.layer):
            outputs = self.layer(inputs, training=training)
        if self.norm is not None:
            outputs = self.norm(outputs, training=training)
            outputs = outputs * ops.cast(mask, outputs.dtype)
        return outputs

    # -- the PruningWrapper interface --------------------------------------
    def sparsity(self) -> dict[str, float]:
        """Zero fraction of the kernel the layer computes with (`kernel * mask`).

        Example:

        >>> wrapper = PruneChannels(keras.layers.Dense(4, name="d"), schedule=0.5)
        >>> _ = wrapper(np.ones((1, 3), "float32"), training=True)
        >>> wrapper.sparsity()
        {'d/kernel': 0.5}
        """
        if self._recurrent:
            mapping = masked_mapping(self.layer, ops.convert_to_tensor(self.mask))
            return {  # the kernels and recurrent kernels (2-D), not biases
                weight_key(self.layer, v): float(np.mean(ops.convert_to_numpy(value) == 0))
                for v, value in mapping
                if len(v.shape) == 2
            }
        kernel = self.layer.kernel
        value = ops.convert_to_numpy(kernel) * ops.convert_to_numpy(self.mask)
        return {weight_key(self.layer, kernel): float(np.mean(value == 0))}

    def strip(self) -> list[keras.layers.Layer]:
        """The plain layer (and the fused BatchNormalization) with masked
        channels zeroed: same shapes, same outputs at inference."""
        from tfaccel.pruning.shrink import sliced_layer, sliced_norm

        zero = ops.convert_to_numpy(self.mask) == 0
        if self._recurrent:
            return [sliced_recurrent(self.layer, zero_out=zero)]
        keep = np.ones_like(zero)
        layers = [sliced_layer(self.layer, None, keep, zero_out=zero)[0]]
        if self.norm is not None:
            layers.append(sliced_norm(self.norm, keep, zero=zero))
        return layers

    @classmethod
    def strip_model(cls, model: keras.Model) -> keras.Model:
        """`tfaccel.pruning.shrink.shrink`: removes the masked channels."""
        from tfaccel.pruning.shrink import shrink

        return shrink(model)

    # -- serialization ---------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "criterion": self.criterion,
                "norm": None
                if self.norm is None
                else keras.saving.serialize_keras_object(self.norm),
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


def _lowest_masked(scores, fraction):
    """1.0 per score, 0.0 for the `round(fraction * len)` lowest (one kept)."""
    channels = int(scores.shape[0])
    count = ops.round(ops.cast(fraction, "float32") * channels)
    count = ops.clip(count, 0.0, float(channels - 1))
    # The argsort of a permutation is its inverse: the rank of each score.
    ranks = ops.argsort(ops.argsort(scores))
    return ops.cast(ops.cast(ranks, "float32") >= count, "float32")


def prune_channels(
    model: keras.Model,
    schedule: PruningSchedule | float = 0.5,
    criterion: str = "l1",
    layers: LayerSelector = None,
    budget: str = "layer",
) -> keras.Model:
    """Returns a copy of `model` whose Conv/Dense layers mask output channels.

    Eligible layers are `Conv1D`/`Conv2D`/`Conv3D`/`Dense` (output
    channels) and `LSTM` (units; both directions of a `Bidirectional`
    joined by `"concat"`) whose outputs reach only ops `shrink` knows how
    to slice (convolutions, Dense, recurrent layers, channel-wise layers
    and `keras.ops`, Flatten, pooling, elementwise merges such as `Add` or
    `x * gate`, Concatenate) and never a model output. Recurrent layers
    whose units cannot be removed (GRU, SimpleRNN, other merges) are named
    in a warning. By default (`layers=None`) layers whose channels are
    joined with another producer's by an elementwise merge (residual
    branches, squeeze-and-excitation gates) are left dense: such channels
    can only be removed when every member of the group masks them. Select
    them in `layers` to prune them too; `shrink` then removes the channels
    masked in every member and zeroes the rest of the masked ones. A
    `BatchNormalization` that directly follows a wrapped layer is fused into
    its `PruneChannels` wrapper. Layers inside nested models are left dense.

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
            `tfaccel.schedules.PruningSchedule`.
        criterion: `"l1"`, `"l2"` or `"bn_gamma"` (layers without a fused
            BatchNormalization fall back to `"l1"`).
        layers: which layers to prune (see `tfaccel.graph.selector`): None,
            a layer name, layer, layer class or predicate `layer -> bool`,
            or a list of these.
        budget: `"layer"` (every layer masks `fraction` of its channels) or
            `"global"` (rank all channels together, float `schedule` only).

    Returns:
        A new model of the same kind (Sequential or functional) with
        `PruneChannels` wrappers.

    Raises:
        ValueError: a named layer cannot be channel-pruned (the message names
            it and says why), or an argument is invalid.
    """
    check_criterion(criterion)
    if budget not in ("layer", "global"):
        raise ValueError(
            f"`budget` must be 'layer' or 'global'. Received: budget={budget!r}"
        )
    if budget == "global" and not isinstance(schedule, (int, float)):
        raise ValueError(
            "budget='global' needs a float `schedule` (the global fraction). "
            f"Received: schedule={schedule!r}"
        )
    pick = selector(layers, "layers")
    analysis = ChannelGraph(model)
    chosen = chosen_layers(analysis, pick, model.name)
    norms = [analysis.fusable_norm(layer) for layer in chosen]
    criteria = [
        "l1" if criterion == "bn_gamma" and norm is None else criterion
        for norm in norms
    ]
    if budget == "global" and chosen:
        schedules = global_schedules(chosen, norms, criteria, float(schedule))
    else:
        schedules = {id(layer): channel_schedule(schedule) for layer in chosen}
    index = {id(layer): i for i, layer in enumerate(chosen)}
    fused = {id(norm) for norm in norms if norm is not None}

    def plan(node, graph):
        operation = node.operation
        if id(operation) in fused:
            return IDENTITY  # computed inside the wrapper before it
        if id(operation) not in index:
            return None
        i = index[id(operation)]
        pairs = [(operation, copy_layer(operation))]
        if norms[i] is not None:
            pairs.append((norms[i], copy_layer(norms[i])))
        wrapper = PruneChannels(
            pairs[0][1],
            schedule=schedules[id(operation)],
            criterion=criteria[i],
            norm=pairs[1][1] if len(pairs) > 1 else None,
            name=f"{operation.name}_channels",
        )
        return Replacement(wrapper, weights=pairs)

    return rebuild(model, plan)


def channel_fractions(model: keras.Model) -> dict[str, float]:
    """Fraction of masked output channels of each `PruneChannels` wrapper.

    Example:

    >>> pruned = prune_channels(keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(4), keras.layers.Dense(2)]))
    >>> list(channel_fractions(pruned).values())
    [0.0]
    """
    fractions = {}
    for layer in read(model).layers():
        if isinstance(layer, PruneChannels):
            mask = ops.convert_to_numpy(layer.mask)
            fractions[layer.name] = float((mask == 0).mean())
    return fractions
