"""Rebuild a channel-pruned model as a smaller plain Keras model.

`shrink` removes the output channels that `PruneChannels` wrappers mask, the
matching BatchNormalization statistics, the depthwise filters that carry
them, and the matching input channels of every consumer (Conv, Dense, Dense
after a channels-last `Flatten` where feature `position * C + channel` goes,
Dense after global pooling, a SeparableConv2D's depthwise filters and the
pointwise rows they feed, an LSTM/GRU/SimpleRNN's kernel rows). A pruned
LSTM loses whole units: their columns in all four gates and their row of
the recurrent kernel (`tfaccel.pruning.recurrent_channels`); both
directions of a Bidirectional keep one number of units. Channels joined by
an elementwise merge (`Add`, `x * gate`) form a group: the group is removed only when every producer
masks it (the union of kept channels is kept); members that masked a kept
channel get that filter zeroed so outputs do not change. `Concatenate`
offsets indices. Channel-wise `keras.ops` (`x + 3.0`, `relu6`, `x * (1/6)`)
are kept as they are: they work on any number of channels.

Exactness: the masked model's removed channels are exactly zero at the
wrappers' outputs. Channel-wise ops after them (a depthwise conv's bias,
its BatchNormalization, `x + 3.0`, an activation) can turn the zero into a
constant; `shrink` measures these values (inference mode, one probe batch)
at every consumer and folds them into the consumer's bias, or into the
moving mean of a fused BatchNormalization. Where a constant cannot be
folded exactly (it is not uniform, or the consumer is a k>1 'same'-padded
convolution whose zero padding breaks uniformity, or a separable
convolution) the group is kept and zeroed instead.

Both `shrink` and `strip_channels` are plans for `tfaccel.graph.rebuild`;
the channel groups come from `tfaccel.pruning.channel_graph.ChannelGraph`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfaccel.graph import Replacement, rebuild
from tfaccel.pruning.channel_graph import (
    DEPTHWISE,
    SEPARABLE,
    UNPRUNABLE,
    ChannelGraph,
    is_prunable,
)
from tfaccel.pruning.channels import PruneChannels
from tfaccel.pruning.recurrent_channels import is_recurrent, sliced_recurrent

__all__ = ["shrink", "strip_channels"]

_TOLERANCE = 1e-5


def _np(variable) -> np.ndarray:
    return np.array(ops.convert_to_numpy(variable))


def _built(layer, config: dict, channels: int) -> keras.layers.Layer:
    """A new layer from `config`, built like `layer` with `channels` inputs."""
    new = layer.__class__.from_config(config)
    shape = list(layer.get_build_config()["input_shape"])
    shape[-1] = channels
    new.build(tuple(shape))
    return new


def sliced_layer(inner, in_keep, out_keep, constants=None, zero_out=None,
                 fold_into_norm=False):
    """A built Conv/Dense without the dropped input/output channels.

    `constants` (one value per input channel) are what the dropped input
    channels held: their contribution is folded into the bias, or returned
    as `leftover` for a following BatchNormalization (`fold_into_norm`).
    `zero_out` marks output channels to zero (masked but kept).

    Returns:
        `(layer, leftover)`.
    """
    in_keep = np.ones(inner.kernel.shape[-2], bool) if in_keep is None else in_keep
    out_keep = np.ones(inner.kernel.shape[-1], bool) if out_keep is None else out_keep
    kernel = _np(inner.kernel)
    bias = _np(inner.bias) if inner.use_bias else None
    config = inner.get_config()
    delta = leftover = None
    if constants is not None and np.any(constants[~in_keep] != 0):
        removed = kernel[..., ~in_keep, :]
        removed = removed.reshape(-1, removed.shape[-2], removed.shape[-1]).sum(0)
        delta = constants[~in_keep] @ removed
    if delta is not None:
        if bias is not None:
            bias = bias + delta
        elif fold_into_norm:
            leftover = delta
        else:
            config["use_bias"] = True
            bias = delta.astype(kernel.dtype)
    kernel = kernel[..., in_keep, :]
    if zero_out is not None:
        kernel[..., zero_out] = 0.0
        if bias is not None:
            bias = bias.copy()
            bias[zero_out] = 0.0
    key = "units" if isinstance(inner, keras.layers.Dense) else "filters"
    config[key] = int(out_keep.sum())
    new = _built(inner, config, int(in_keep.sum()))
    new.kernel.assign(kernel[..., out_keep])
    if bias is not None:
        new.bias.assign(bias[out_keep])
    return new, leftover


def sliced_norm(norm, keep, zero=None, mean_shift=None):
    """A built BatchNormalization keeping `keep` channels.

    `zero` channels get `gamma = beta = mean = 0` (output exactly 0);
    `mean_shift` is subtracted from the moving mean (a folded constant).
    """
    new = _built(norm, norm.get_config(), int(keep.sum()))
    for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
        variable = getattr(norm, attr, None)
        if variable is None:
            continue
        value = _np(variable)
        if attr == "moving_mean" and mean_shift is not None:
            value = value - mean_shift
        if zero is not None and attr != "moving_variance":
            value = value.copy()
            value[zero] = 0.0
        getattr(new, attr).assign(value[keep])
    return new


def _sliced_depthwise(layer, keep):
    new = _built(layer, layer.get_config(), int(keep.sum()))
    new.kernel.assign(_np(layer.kernel)[..., keep, :])
    if layer.use_bias:
        new.bias.assign(_np(layer.bias)[keep])
    return new


def _sliced_separable(layer, keep):
    """A SeparableConv without the dropped input channels (bias unchanged)."""
    new = _built(layer, layer.get_config(), int(keep.sum()))
    new.depthwise_kernel.assign(_np(layer.depthwise_kernel)[..., keep, :])
    rows = np.repeat(keep, layer.depth_multiplier)  # input c, multiplier m: c * M + m
    new.pointwise_kernel.assign(_np(layer.pointwise_kernel)[..., rows, :])
    if layer.use_bias:
        new.bias.assign(_np(layer.bias))
    return new


class _Removal:
    """Which channel groups are removed, and the constants consumers absorb."""

    def __init__(self, analysis: ChannelGraph):
        self.a = analysis
        self.masks = {
            id(layer): _np(layer.mask)
            for layer in analysis.graph.layers()
            if isinstance(layer, PruneChannels)
        }
        self.top = {id(layer) for layer in analysis.graph.layers()}
        self.kept_roots: set[int] = set()
        self.removed: set[int] = set()
        self.constants: dict[int, np.ndarray] = {}
        self._decide()
        if self.removed:
            self._probe()

    def _decide(self) -> None:
        all_masked: dict[int, bool] = {}
        for label, (producer, channel) in self.a.owner.items():
            root = self.a.uf.find(label)
            masked = self.masks[id(producer)][channel] == 0
            all_masked[root] = all_masked.get(root, True) and bool(masked)
        while True:
            self.removed = {
                root
                for root, masked in all_masked.items()
                if masked
                and not self.a.uf.pinned[root]
                and root not in self.a.blocked
                and root not in self.kept_roots
            }
            extra = self._unbalanced()
            if not extra:
                return
            self.kept_roots |= extra

    def _unbalanced(self) -> set[int]:
        """Roots to keep so that both directions of every Bidirectional lose
        as many units (Keras gives both one `units`): the surplus of the
        direction that would lose more, kept and zeroed."""
        extra: set[int] = set()
        for layer in self.a.graph.layers():
            if not (
                isinstance(layer, PruneChannels)
                and isinstance(layer.layer, keras.layers.Bidirectional)
            ):
                continue
            roots = self.a.roots(self.a.output_labels(layer))
            half = len(roots) // 2
            gone = [[int(r) for r in part if r in self.removed]
                    for part in (roots[:half], roots[half:])]
            surplus = len(gone[0]) - len(gone[1])
            if surplus:
                extra.update(gone[0 if surplus > 0 else 1][: abs(surplus)])
        return extra

    def keep(self, tensor) -> np.ndarray:
        roots = self.a.roots(self.a.get(tensor))
        return np.array([r == UNPRUNABLE or r not in self.removed for r in roots])

    def _probe(self) -> None:
        consumers = []
        for node in self.a.graph.nodes:
            inner = getattr(node.operation, "layer", node.operation)
            consumes = (
                is_prunable(inner) or isinstance(inner, SEPARABLE) or is_recurrent(inner)
            )
            if node.is_layer and consumes and len(node.inputs) == 1:
                if not self.keep(node.inputs[0]).all():
                    consumers.append((node, inner))
        if not consumers:
            return
        inputs = self.a.graph.inputs
        probe = keras.Model(inputs, [node.inputs[0] for node, _ in consumers])
        rng = np.random.default_rng(0)
        feed = [
            rng.standard_normal([2] + [d or 8 for d in t.shape[1:]]).astype(
                t.dtype or "float32"
            )
            for t in inputs
        ]
        values = [_np(v) for v in keras.tree.flatten(probe(feed, training=False))]
        while True:
            self._decide()
            reopened = set()
            self.constants = {}
            for (node, inner), value in zip(consumers, values):
                gone = ~self.keep(node.inputs[0])
                if not gone.any():
                    continue
                flat = value.reshape(-1, value.shape[-1])[:, gone]
                const = flat.mean(axis=0)
                spread = np.abs(flat - const).max(axis=0)
                bad = spread > _TOLERANCE * (1.0 + np.abs(const))
                nonzero = np.abs(const) > _TOLERANCE
                foldable = isinstance(inner, keras.layers.Dense) or is_recurrent(inner) or (
                    not isinstance(inner, SEPARABLE)
                    and (inner.padding == "valid" or all(k == 1 for k in inner.kernel_size))
                )
                bad = bad | (nonzero & (not foldable))
                if bad.any():
                    labels = self.a.get(node.inputs[0])[gone][bad]
                    reopened.update(int(r) for r in self.a.roots(labels))
                full = np.zeros(value.shape[-1])
                full[gone] = np.where(nonzero, const, 0.0)
                self.constants[id(node.operation)] = full
            if not reopened:
                return
            self.kept_roots |= reopened

    def plan(self, node, graph):
        """The `tfaccel.graph.rebuild` plan: each node, sliced."""
        operation = node.operation
        if not node.is_layer or id(operation) not in self.top:
            return None  # an op, or a layer inside a nested model: copied
        wrapped = isinstance(operation, PruneChannels)
        if wrapped or (is_prunable(operation) and len(node.inputs) == 1):
            inner = operation.layer if wrapped else operation
            norm = operation.norm if wrapped else None
            zero = self.masks[id(operation)] == 0 if wrapped else None
            if is_recurrent(inner):
                return sliced_recurrent(
                    inner,
                    self.keep(node.inputs[0]),
                    self.keep(node.outputs[0]),
                    self.constants.get(id(operation)),
                    zero,
                )
            layer, leftover = sliced_layer(
                inner,
                self.keep(node.inputs[0]),
                self.keep(node.outputs[0]),
                self.constants.get(id(operation)),
                zero,
                fold_into_norm=norm is not None,
            )
            if norm is None:
                return layer
            after = [sliced_norm(norm, self.keep(node.outputs[0]), zero, leftover)]
            return Replacement(layer, after=after)
        if len(node.inputs) != 1 or self.keep(node.inputs[0]).all():
            return None
        keep = self.keep(node.inputs[0])
        if isinstance(operation, keras.layers.BatchNormalization):
            return sliced_norm(operation, keep)
        if isinstance(operation, DEPTHWISE):
            return _sliced_depthwise(operation, keep)
        if isinstance(operation, SEPARABLE):
            return _sliced_separable(operation, keep)
        if is_recurrent(operation):  # a GRU/SimpleRNN or unpruned LSTM reading them
            return sliced_recurrent(
                operation, keep, None, self.constants.get(id(operation))
            )
        return None


def _check(analysis: ChannelGraph) -> None:
    problems = []
    top = {id(layer) for layer in analysis.graph.layers()}
    for _, node in analysis.graph.walk():
        if isinstance(node.operation, PruneChannels) and id(node.operation) not in top:
            problems.append(f"{node.name!r}: it is inside a nested model")
    for layer in analysis.graph.layers():
        if isinstance(layer, PruneChannels):
            reasons = analysis.reasons(layer)
            if reasons:
                problems.append(f"{layer.name!r}: " + "; ".join(reasons))
    if problems:
        raise ValueError(
            "Cannot shrink the model: the output channels of these pruned "
            "layers reach layers that cannot be sliced safely. " + " | ".join(problems)
        )


def shrink(model: keras.Model) -> keras.Model:
    """Returns a smaller plain model without the masked channels.

    The result has no `PruneChannels` wrappers: each wrapper becomes its
    original layer (and its fused BatchNormalization) with fewer filters, and
    every consumer loses the matching input channels. Before any further
    training it computes what the masked model computes (inference mode, up
    to float rounding). It is a plain model of the same kind (Sequential or
    functional): `.keras` save/load, TFLite conversion and `quantize` work
    on it.

    Example:

    >>> from tfaccel.pruning.channels import prune_channels
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> x = keras.layers.ReLU()(x)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(x))
    >>> pruned = prune_channels(model, schedule=0.5)
    >>> _ = pruned(np.ones((1, 8, 8, 1), "float32"), training=True)
    >>> small = shrink(pruned)
    >>> small.layers[1].filters
    4

    Args:
        model: a model holding `PruneChannels` wrappers (functional or
            Sequential).

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: pruned channels reach a layer that cannot be sliced safely
            (a Reshape, Lambda, custom layer, a model output...): the message
            names the pruned layers and the layers in the way.
    """
    analysis = ChannelGraph(model, lambda layer: isinstance(layer, PruneChannels))
    _check(analysis)
    return rebuild(model, _Removal(analysis).plan)


def _unwrap(node, graph):
    if isinstance(node.operation, PruneChannels):
        first, *after = node.operation.strip()
        return Replacement(first, after=after)
    return None


def strip_channels(model: keras.Model) -> keras.Model:
    """Unwraps `PruneChannels` without removing channels (masked ones zeroed).

    Same shapes as the original model; masked filters are zero in the kernel
    and bias, and a fused BatchNormalization gets `gamma = beta = mean = 0`
    for them, so outputs match the masked model exactly.

    Args:
        model: a model holding `PruneChannels` wrappers.

    Returns:
        A new `keras.Model` without wrappers.
    """
    return rebuild(model, _unwrap)
