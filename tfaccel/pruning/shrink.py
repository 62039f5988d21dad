"""Rebuild a channel-pruned model as a smaller plain Keras model.

`shrink` removes the output channels that `PruneChannels` wrappers mask, the
matching BatchNormalization statistics, the depthwise filters that carry
them, and the matching input channels of every consumer (Conv, Dense, Dense
after a channels-last `Flatten` where feature `position * C + channel` goes,
Dense after global pooling). Channels joined by an elementwise merge (`Add`)
form a group: the group is removed only when every producer masks it (the
union of kept channels is kept); members that masked a kept channel get
that filter zeroed so outputs do not change. `Concatenate` offsets indices.

Exactness: the masked model's removed channels are exactly zero at the
wrappers' outputs. Channel-wise layers after them (a depthwise conv's bias,
its BatchNormalization, an activation) can turn the zero into a constant;
`shrink` measures these values (inference mode, one probe batch) at every
consumer and folds them into the consumer's bias, or into the moving mean of
a fused BatchNormalization. Where a constant cannot be folded exactly (it is
not uniform, or the consumer is a k>1 'same'-padded convolution whose zero
padding breaks uniformity) the group is kept and zeroed instead.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfaccel.pruning.channels import (
    _DEPTHWISE,
    UNPRUNABLE,
    GraphAnalysis,
    PruneChannels,
    _is_prunable,
)

__all__ = ["shrink", "strip_channels"]

_TOLERANCE = 1e-5


def _np(variable) -> np.ndarray:
    return np.array(ops.convert_to_numpy(variable))


class _Plan:
    """Which channel groups are removed, and the constants consumers absorb."""

    def __init__(self, analysis: GraphAnalysis, remove: bool):
        self.a = analysis
        self.masks = {}
        for layer_calls in analysis.calls.values():
            for _, out in layer_calls[:1]:
                layer = analysis.producer_of[id(keras.tree.flatten(out)[0])]
                if isinstance(layer, PruneChannels):
                    self.masks[id(layer)] = _np(layer.mask)
        self.kept_roots: set[int] = set()
        self.removed: set[int] = set()
        if remove:
            self._decide()
        self.constants: dict[int, np.ndarray] = {}
        if self.removed:
            self._probe()

    def _decide(self) -> None:
        all_masked: dict[int, bool] = {}
        for label, (producer, channel) in self.a.owner.items():
            root = self.a.uf.find(label)
            masked = self.masks[id(producer)][channel] == 0
            all_masked[root] = all_masked.get(root, True) and bool(masked)
        self.removed = {
            root
            for root, masked in all_masked.items()
            if masked
            and not self.a.uf.pinned[root]
            and root not in self.a.blocked
            and root not in self.kept_roots
        }

    def keep(self, labels: np.ndarray) -> np.ndarray:
        roots = self.a.roots(labels)
        return np.array([r == UNPRUNABLE or r not in self.removed for r in roots])

    def _consumers(self):
        for layer_calls in self.a.calls.values():
            inputs, out = layer_calls[0]
            layer = self.a.producer_of[id(keras.tree.flatten(out)[0])]
            inner = layer.layer if isinstance(layer, PruneChannels) else layer
            if _is_prunable(inner):
                yield layer, inner, inputs[0]

    def _probe(self) -> None:
        consumers = [
            (layer, inner, tensor)
            for layer, inner, tensor in self._consumers()
            if not self.keep(self.a.labels[id(tensor)]).all()
        ]
        if not consumers:
            return
        traced = self.a.traced
        probe = keras.Model(traced.inputs, [t for _, _, t in consumers])
        rng = np.random.default_rng(0)
        feed = [
            rng.standard_normal(
                [2] + [d if d is not None else 8 for d in t.shape[1:]]
            ).astype(t.dtype or "float32")
            for t in traced.inputs
        ]
        values = probe(feed, training=False)
        values = [_np(v) for v in keras.tree.flatten(values)]
        while True:
            self._decide()
            reopened = set()
            self.constants = {}
            for (layer, inner, tensor), value in zip(consumers, values):
                labels = self.a.labels[id(tensor)]
                gone = ~self.keep(labels)
                if not gone.any():
                    continue
                flat = value.reshape(-1, value.shape[-1])[:, gone]
                const = flat.mean(axis=0)
                spread = np.abs(flat - const).max(axis=0)
                bad = spread > _TOLERANCE * (1.0 + np.abs(const))
                nonzero = np.abs(const) > _TOLERANCE
                kernel = getattr(inner, "kernel_size", (1,))
                if isinstance(inner, keras.layers.Dense):
                    foldable = True
                else:
                    foldable = inner.padding == "valid" or all(k == 1 for k in kernel)
                bad = bad | (nonzero & (not foldable))
                if bad.any():
                    roots = self.a.roots(labels[gone][bad])
                    reopened.update(int(r) for r in roots)
                full = np.zeros(value.shape[-1])
                full[gone] = np.where(nonzero, const, 0.0)
                self.constants[id(layer)] = full
            if not reopened:
                return
            self.kept_roots |= reopened


def _check(analysis: GraphAnalysis) -> None:
    problems = []
    for layer_calls in analysis.calls.values():
        _, out = layer_calls[0]
        layer = analysis.producer_of[id(keras.tree.flatten(out)[0])]
        if isinstance(layer, PruneChannels):
            reasons = analysis.reasons(layer)
            if reasons:
                problems.append(f"{layer.name!r}: " + "; ".join(reasons))
    if problems:
        raise ValueError(
            "Cannot shrink the model: the output channels of these pruned "
            "layers reach layers that cannot be sliced safely. " + " | ".join(problems)
        )


def _rebuilt_linear(inner, in_keep, out_keep, constants, zero_out):
    """New Conv/Dense with sliced kernel/bias; folds `constants` (or returns it)."""
    kernel = _np(inner.kernel)
    bias = _np(inner.bias) if inner.use_bias else None
    delta = None
    if constants is not None and np.any(constants[~in_keep] != 0):
        removed = kernel[..., ~in_keep, :]
        removed = removed.reshape(-1, removed.shape[-2], removed.shape[-1]).sum(0)
        delta = constants[~in_keep] @ removed
    kernel = kernel[..., in_keep, :]
    if zero_out is not None:
        kernel[..., zero_out] = 0.0
    config = inner.get_config()
    key = "units" if isinstance(inner, keras.layers.Dense) else "filters"
    config[key] = int(out_keep.sum())
    return kernel, bias, delta, config, key


def _build_linear(inner, x, in_keep, out_keep, constants, zero_out, fold_into_norm):
    kernel, bias, delta, config, _ = _rebuilt_linear(
        inner, in_keep, out_keep, constants, zero_out
    )
    leftover = None
    if delta is not None:
        if bias is not None:
            bias = bias + delta
        elif fold_into_norm:
            leftover = delta
        else:
            config["use_bias"] = True
            bias = delta.astype(kernel.dtype)
    if bias is not None and zero_out is not None:
        bias = bias.copy()
        bias[zero_out] = 0.0
    new = inner.__class__.from_config(config)
    y = new(x)
    new.kernel.assign(kernel[..., out_keep])
    if bias is not None:
        new.bias.assign(bias[out_keep])
    return y, leftover


def _build_norm(norm, x, keep, zero=None, mean_shift=None):
    new = norm.__class__.from_config(norm.get_config())
    y = new(x)
    for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
        var = getattr(norm, attr, None)
        if var is None:
            continue
        value = _np(var)
        if attr == "moving_mean" and mean_shift is not None:
            value = value - mean_shift
        if zero is not None and attr in ("gamma", "beta", "moving_mean"):
            value = value.copy()
            value[zero] = 0.0
        getattr(new, attr).assign(value[keep])
    return y


def _rebuild(analysis: GraphAnalysis, plan: _Plan) -> keras.Model:
    def call(layer, *args, **kwargs):
        in_labels = analysis.layer_input_labels[id(layer)]
        out_labels = analysis.layer_output_labels[id(layer)]
        x = args[0] if args else None
        if isinstance(layer, PruneChannels) or _is_prunable(layer):
            inner = layer.layer if isinstance(layer, PruneChannels) else layer
            norm = layer.norm if isinstance(layer, PruneChannels) else None
            in_keep = plan.keep(in_labels[0])
            out_keep = plan.keep(out_labels)
            zero = None
            if isinstance(layer, PruneChannels):
                zero = plan.masks[id(layer)] == 0
            y, leftover = _build_linear(
                inner,
                x,
                in_keep,
                out_keep,
                plan.constants.get(id(layer)),
                zero,
                fold_into_norm=norm is not None,
            )
            if norm is not None:
                y = _build_norm(norm, y, out_keep, zero, leftover)
            return y
        keep = plan.keep(in_labels[0]) if len(in_labels) == 1 else None
        if keep is not None and not keep.all():
            if isinstance(layer, keras.layers.BatchNormalization):
                return _build_norm(layer, x, keep)
            if isinstance(layer, _DEPTHWISE):
                new = layer.__class__.from_config(layer.get_config())
                y = new(x)
                new.kernel.assign(_np(layer.kernel)[..., keep, :])
                if layer.use_bias:
                    new.bias.assign(_np(layer.bias)[keep])
                return y
        new = layer.__class__.from_config(layer.get_config())
        y = new(*args, **kwargs)
        if layer.weights:
            new.set_weights(layer.get_weights())
        return y

    return keras.models.clone_model(
        analysis.model, clone_function=lambda layer: layer, call_function=call
    )


def shrink(model: keras.Model) -> keras.Model:
    """Returns a smaller plain model without the masked channels.

    The result has no `PruneChannels` wrappers: each wrapper becomes its
    original layer (and its fused BatchNormalization) with fewer filters, and
    every consumer loses the matching input channels. Before any further
    training it computes what the masked model computes (inference mode, up
    to float rounding). It is a plain functional model: `.keras` save/load,
    TFLite conversion and `quantize` work on it.

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
        A new functional `keras.Model`.

    Raises:
        ValueError: pruned channels reach a layer that cannot be sliced safely
            (a Reshape, Lambda, custom layer, a model output...): the message
            names the pruned layers and the layers in the way.
    """
    analysis = GraphAnalysis(model, lambda layer: isinstance(layer, PruneChannels))
    analysis.run()
    try:
        _check(analysis)
        plan = _Plan(analysis, remove=True)
    finally:
        analysis.release()
    return _rebuild(analysis, plan)


def strip_channels(model: keras.Model) -> keras.Model:
    """Unwraps `PruneChannels` without removing channels (masked ones zeroed).

    Same shapes as the original model; masked filters are zero in the kernel
    and bias, and a fused BatchNormalization gets `gamma = beta = mean = 0`
    for them, so outputs match the masked model exactly.

    Args:
        model: a model holding `PruneChannels` wrappers.

    Returns:
        A new functional `keras.Model` without wrappers.
    """
    analysis = GraphAnalysis(model, lambda layer: isinstance(layer, PruneChannels))
    analysis.run()
    analysis.release()
    return _rebuild(analysis, _Plan(analysis, remove=False))
