"""Quantization-aware layers: what the int8 TFLite model computes, in float.

`QuantizeWrapper` models one fused TFLite kernel (Conv/Depthwise/Dense with
its BatchNormalization folded in and a ReLU/ReLU6 fused). `ActivationQuantizer`
(one int8 tensor with its own scale) and `QuantizedActivation` (an
activation that TFLite runs as a separate int8 op) live in
`tfaccel.quantization.activations` and are re-exported here.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfaccel._substitute import full_precision, substitute
from tfaccel.quantization.activations import (
    ActivationQuantizer,
    QuantizedActivation,
    relu_activation,
)
from tfaccel.quantization.clusters import (
    MAX_CLUSTERS,
    ClusterPreserving,
    kernel_clusters,
)
from tfaccel.quantization.quantizers import bound_scale, exporting, quantize_bias

__all__ = [
    "ActivationQuantizer",
    "QuantizeWrapper",
    "QuantizedActivation",
    "kernel_clusters",
]

_FUSABLE = ("linear", "relu", "relu6")
_WEIGHT_MODES = ("per_tensor", "per_channel", "depthwise", "transpose")
_BN_FOLDINGS = ("moving", "batch")


def batch_moments(y):
    """Per-channel (last axis) mean and variance of `y`, across replicas.

    The forward pass reads the moving statistics, so every replica must hold
    the same ones: the batch moments are averaged across replicas (the
    BatchNorm variables use Keras' default aggregation "none"), as a
    synchronized BatchNorm does.
    """
    axes = list(range(len(y.shape) - 1))
    mean = tf.reduce_mean(y, axis=axes)
    mean_sq = tf.reduce_mean(tf.square(y), axis=axes)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        mean, mean_sq = context.all_reduce("mean", [mean, mean_sq])
    return mean, tf.maximum(mean_sq - tf.square(mean), 0.0)


def centered_moments(y):
    """Per-channel (last axis) mean and variance of `y`, across replicas.

    Two passes (mean, then the mean squared deviation), so a large mean
    does not cancel the variance, and differentiable: batch-statistics
    folding normalizes with them, as a (synchronized) BatchNorm does. As in
    `tf.nn.moments`, one `SquaredDifference` from the stop-gradient mean
    (the variance's gradient through the mean is zero): less backward work.
    """
    axes = list(range(len(y.shape) - 1))
    context = tf.distribute.get_replica_context()
    sync = context is not None and context.num_replicas_in_sync > 1
    mean = tf.reduce_mean(y, axis=axes)
    if sync:
        mean = context.all_reduce("mean", mean)
    var = tf.reduce_mean(tf.math.squared_difference(y, tf.stop_gradient(mean)), axes)
    if sync:
        var = context.all_reduce("mean", var)
    return mean, var


def input_quantizer(layer) -> ActivationQuantizer | None:
    """The quantizer whose int8 tensor `layer` reads in its functional model.

    Follows `layer`'s inbound nodes up through layers that keep the scale
    (padding, pooling, reshapes, dropout: the "passthrough" kind) to an
    `ActivationQuantizer`, or a layer's `output_quantizer`. A layer with
    several inbound nodes reads that quantizer if every node leads to it:
    a layer of a nested `Sequential` loaded from a `.keras` file has a node
    for each time the `Sequential` was built, and the links must be found
    again there, or the loaded model computes its biases and poolings off
    the int8 grid the saved one used. None where there is no single such
    producer: a layer called outside a functional model, on several
    inputs, or at call sites reading different tensors.
    """
    return _quantizer_read(layer, {}, 64)


def _quantizer_read(layer, seen: dict, depth: int) -> ActivationQuantizer | None:
    """`input_quantizer(layer)`; `seen` holds the answers for the layers
    already walked (nodes of one layer often share their producers)."""
    from tfaccel.quantization.registry import quantize_kind

    if id(layer) in seen:
        return seen[id(layer)]
    nodes = getattr(layer, "_inbound_nodes", None) or []
    found = None
    for node in nodes:
        if len(node.parent_nodes) != 1 or depth == 0:  # not a cycle: a bound
            found = None
            break
        producer = node.parent_nodes[0].operation
        output_quantizer = getattr(producer, "output_quantizer", None)
        if isinstance(producer, ActivationQuantizer):
            this = producer
        elif isinstance(output_quantizer, ActivationQuantizer):
            this = output_quantizer
        elif isinstance(producer, keras.Model) or quantize_kind(producer) != "passthrough":
            this = None
        else:
            this = _quantizer_read(producer, seen, depth - 1)
        if this is None or (found is not None and this is not found):
            found = None
            break
        found = this
    seen[id(layer)] = found
    return found


def update_moving_statistics(bn, mean, var) -> None:
    """One moving-average step of `bn`'s statistics toward `mean`, `var`."""
    m = bn.momentum
    bn.moving_mean.assign(m * bn.moving_mean + (1.0 - m) * mean)
    bn.moving_variance.assign(m * bn.moving_variance + (1.0 - m) * var)



@keras.saving.register_keras_serializable(package="tfaccel")
class QuantizeWrapper(ClusterPreserving, keras.layers.Wrapper):
    """One fused int8 TFLite kernel: Conv/Dense + folded BatchNorm + ReLU.

    The forward pass is the inference graph of the converted model: the
    BatchNormalization's moving statistics are folded into the kernel and
    bias (`w * gamma / sqrt(var + eps)`, `beta + (b - mean) * gamma /
    sqrt(var + eps)`), the folded kernel is fake-quantized to symmetric int8
    (per channel for convolutions, per tensor for Dense), ReLU/ReLU6 is
    applied and the output fake-quantized. In training the moving statistics
    keep updating from the batch statistics of the folded output divided by
    the fold scale, so no second convolution runs (averaged across replicas
    under `tf.distribute`, like a synchronized BatchNorm; a BatchNorm with
    `trainable=False` keeps its statistics, as in Keras). The wrapped layer computes
    with the folded kernel through `tfaccel._substitute.substitute`, so
    gradients reach its variables (and the BatchNorm's gamma and beta).

    With `bn_folding="batch"` (Jacob et al. 2018, "batch normalization
    correction"), training normalizes with the *batch* statistics instead,
    as a float BatchNorm does: the kernel is still folded and quantized with
    the moving standard deviation (no jitter of the int8 weights from batch
    to batch), and the output is corrected per channel by
    `sigma_moving / sigma_batch` and shifted by the batch mean, both read
    from the folded output (no second convolution; gradients flow through
    the batch moments as in BatchNorm). After `bn_freeze_step` training
    calls the correction is switched off and training computes exactly the
    `"moving"` fold, the int8 model's computation. Use `"moving"` (the
    default) to fine-tune a trained model: its statistics are meaningful
    and training sees the int8 computation from the first step. Use
    `"batch"` to train from random initialization, where the moving
    statistics start at (0, 1) and normalizing with them makes a model on
    badly scaled inputs diverge or collapse; set `bn_freeze_step` to leave
    the last part of training (say 10-20% of the steps) on the exact int8
    computation. Inference (`training=False`) and the exported file always
    use the moving statistics, in both modes.

    Example:

    >>> import numpy as np
    >>> conv = keras.layers.Conv2D(4, 3, use_bias=False)
    >>> q = QuantizeWrapper(conv, batch_norm=keras.layers.BatchNormalization(),
    ...                     activation="relu")
    >>> q(np.ones((1, 5, 5, 2), "float32"), training=True).shape
    TensorShape([1, 3, 3, 4])

    Args:
        layer: a `Conv1D`, `Conv2D`, `DepthwiseConv2D`, `Conv2DTranspose`
            or `Dense` layer without its own activation (channels last).
        batch_norm: optional `BatchNormalization` (last axis) folded in.
        activation: `"linear"`, `"relu"` or `"relu6"`, fused as TFLite does.
        weight_mode: `"per_channel"`, `"depthwise"`, `"per_tensor"` or
            `"transpose"` (Conv2DTranspose: BatchNorm folded per output
            channel, int8 weights per tensor).
        preserve_sparsity: keep a fixed mask of the kernel's nonzeros so that
            pruned weights stay exactly zero.
        ema_decay: decay of the output range's moving average.
        preserve_clusters: 0 (off), or the number of distinct nonzero values
            of a clustered kernel (see `tfaccel.cluster` and
            `kernel_clusters`) to keep through training: cluster-preserving
            QAT. The kernel is `gather(cluster_centroids,
            cluster_assignments)` with fixed assignments and trained
            centroids (the kernel variable itself is frozen and keeps its
            starting values), and every output channel is quantized with
            the bound `max|centroid| * |fold scale|`, so all channels share
            one int8 grid: the int8 kernel holds at most `preserve_clusters`
            nonzero values (per channel always; per kernel too when the
            folded BatchNorm scales are positive, as they are after
            training with positive gammas). Needs per-channel weights when a
            BatchNorm is folded in (per-tensor int8 of per-channel-scaled
            clusters leaves the grid).
        bn_folding: `"moving"` (fold the moving statistics in training too)
            or `"batch"` (normalize with batch statistics until
            `bn_freeze_step`, see above). Only matters with a `batch_norm`.
        bn_freeze_step: with `bn_folding="batch"`, the number of training
            calls that use batch statistics before freezing to the moving
            ones; None never freezes. The count is a layer variable
            (`bn_folding_step`), saved in `.keras` files and backups.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        batch_norm: keras.layers.BatchNormalization | None = None,
        activation: str = "linear",
        weight_mode: str = "per_channel",
        preserve_sparsity: bool = False,
        ema_decay: float = 0.99,
        preserve_clusters: int = 0,
        bn_folding: str = "moving",
        bn_freeze_step: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(layer, **kwargs)
        if bn_folding not in _BN_FOLDINGS:
            raise ValueError(
                f"`bn_folding` must be one of {_BN_FOLDINGS}. "
                f"Received: bn_folding={bn_folding!r}"
            )
        if bn_freeze_step is not None and (
            isinstance(bn_freeze_step, bool)
            or not isinstance(bn_freeze_step, (int, np.integer))
            or bn_freeze_step < 0
        ):
            raise ValueError(
                "`bn_freeze_step` must be None or a non-negative integer. "
                f"Received: bn_freeze_step={bn_freeze_step!r}"
            )
        self.bn_folding = bn_folding
        self.bn_freeze_step = None if bn_freeze_step is None else int(bn_freeze_step)
        if (
            isinstance(preserve_clusters, bool)
            or not isinstance(preserve_clusters, (int, np.integer))
            or not 0 <= preserve_clusters <= MAX_CLUSTERS
        ):
            raise ValueError(
                f"`preserve_clusters` must be an integer in [0, {MAX_CLUSTERS}]. "
                f"Received: preserve_clusters={preserve_clusters!r}"
            )
        if preserve_clusters and weight_mode == "per_tensor" and batch_norm is not None:
            raise ValueError(
                "`preserve_clusters` needs weight_mode='per_channel' or "
                "'depthwise' when a BatchNormalization is folded in. Received: "
                f"weight_mode={weight_mode!r}"
            )
        self.preserve_clusters = int(preserve_clusters)
        if activation not in _FUSABLE:
            raise ValueError(
                f"`activation` must be one of {_FUSABLE}. Received: activation={activation!r}"
            )
        if weight_mode not in _WEIGHT_MODES:
            raise ValueError(
                f"`weight_mode` must be one of {_WEIGHT_MODES}. "
                f"Received: weight_mode={weight_mode!r}"
            )
        if isinstance(batch_norm, dict):
            batch_norm = keras.layers.deserialize(batch_norm)
        self.batch_norm = batch_norm
        self.activation = activation
        self.weight_mode = weight_mode
        self.preserve_sparsity = bool(preserve_sparsity)
        self.ema_decay = float(ema_decay)
        # It applies ReLU/ReLU6 (in training its clip to the range is it).
        self.output_quantizer = ActivationQuantizer(
            ema_decay=ema_decay,
            activation=relu_activation(activation),
            name="output_quantizer",
        )

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(output_shape)
        if self.preserve_sparsity:
            self.mask = self.add_weight(
                name="mask",
                shape=self.layer.kernel.shape,
                initializer="ones",
                trainable=False,
                aggregation="only_first_replica",
            )
        self.output_quantizer.build(output_shape)
        if self.preserve_clusters:
            # After every other variable: checkpoints of wrappers without
            # clusters keep their layout.
            self._build_clusters()
        if self._batch_folding:
            # Last: checkpoints of "moving" wrappers keep their layout.
            # Incremented identically on every replica (as a pruning step).
            self.bn_folding_step = self.add_weight(
                name="bn_folding_step",
                shape=(),
                dtype="int64",
                initializer="zeros",
                trainable=False,
                aggregation="none",
            )
        self.built = True

    @property
    def _batch_folding(self) -> bool:
        return self.bn_folding == "batch" and self.batch_norm is not None

    def _fold(self):
        """Folded float kernel and bias (bias may be None), and the fold scale."""
        kernel = self._kernel()
        if self.preserve_sparsity:
            kernel = kernel * self.mask
        bias = (
            None if self.layer.bias is None else ops.convert_to_tensor(self.layer.bias)
        )
        bn = self.batch_norm
        if bn is None:
            return kernel, bias, None
        scale = ops.rsqrt(ops.convert_to_tensor(bn.moving_variance) + bn.epsilon)
        if bn.scale:
            scale = scale * bn.gamma
        if self.weight_mode == "depthwise":
            cin, mult = kernel.shape[-2], kernel.shape[-1]
            folded = kernel * ops.reshape(scale, (cin, mult))
        elif self.weight_mode == "transpose":
            folded = kernel * ops.reshape(scale, (-1, 1))
        else:
            folded = kernel * scale
        b = 0.0 if bias is None else bias
        folded_bias = (b - bn.moving_mean) * scale
        if bn.center:
            folded_bias = folded_bias + bn.beta
        return folded, folded_bias, scale

    def quantized_kernel(self):
        """The kernel the int8 model holds (folded, masked, fake-quantized)."""
        folded, _, scale = self._fold()
        return self._fake_quant(folded, scale)[0]

    def call(self, inputs, training=None):
        # A frozen BatchNormalization keeps its statistics, as in Keras.
        bn_training = bool(
            training and self.batch_norm is not None and self.batch_norm.trainable
        )
        # Batch-statistics folding subtracts the batch mean, which removes any
        # bias: the convolution runs without one (no bias gradient pass) and
        # `_batch_normalize` adds the folded bias back once frozen.
        batch_fold = bn_training and self._batch_folding
        with full_precision():
            if exporting() and not training:
                quantized, folded_bias = self._export_weights()
            else:
                folded, folded_bias, scale = self._fold()
                quantized, weight_scale = self._fake_quant(folded, scale)
                if folded_bias is not None and (
                    not batch_fold or self.bn_freeze_step is not None
                ):
                    folded_bias = self._int32_bias(folded_bias, weight_scale)
        bias = None if batch_fold else folded_bias
        mapping = [(self.layer.kernel, quantized)]
        if self.layer.bias is not None:
            mapping.append(
                (self.layer.bias, ops.zeros_like(self.layer.bias) if bias is None else bias)
            )
        with substitute(mapping, owner=self.layer):
            y = self._forward(inputs)
        if bias is not None and self.layer.bias is None:
            y = y + ops.cast(bias, y.dtype)
        if bn_training:
            with full_precision():
                if batch_fold:
                    y = self._batch_normalize(y, folded_bias, scale)
                else:
                    self._update_moving_statistics(y, folded_bias, scale)
        return self.output_quantizer(y, training=training)  # ReLU/ReLU6 too

    def _export_weights(self):
        """`(quantized kernel, bias)` of the inference branch, for the graph
        `export_tflite` converts (`exporting()`).

        The fold, the int8 bound and the bias' rounding to the int32 grid
        run once, eagerly, with TF's kernels (the converter's constant
        folding of the traced ops ran the same kernels on the same frozen
        values: the file is the same, tensor for tensor): the graph holds
        the folded kernel, its bound and the bias as constants, and the
        kernel's FakeQuant on them (the converter reads it as the weights'
        int8 scales). The ~45 ops per layer that computed them are not
        traced, and the variables behind them are not saved and reloaded:
        MobileNetV2's export graph has a quarter of the ops it had.
        """
        with tf.init_scope():
            folded, bias, scale = self._fold()
            bound = self._weight_bound(folded, scale)
            if bias is not None:
                bias = self._int32_bias(bias, bound_scale(bound))
            folded, bias, bound = (
                None if v is None else keras.ops.convert_to_numpy(v)
                for v in (folded, bias, bound)
            )
        # Constants of this graph (not captured eager tensors).
        quantized, _ = self._fake_quant(tf.constant(folded), None, tf.constant(bound))
        return quantized, None if bias is None else tf.constant(bias)

    def _int32_bias(self, bias, weight_scale):
        """`bias` on the int32 grid of the int8 kernel, `input_scale *
        weight_scale`, when this layer's input is the output of a quantizer
        of the same model (see `input_quantizer`); else `bias`."""
        quantizer = input_quantizer(self)
        if quantizer is None:
            return bias
        return quantize_bias(bias, quantizer.inference_scale(), weight_scale)

    def _forward(self, inputs):
        """The wrapped layer on `inputs` (its kernel substituted).

        A Dense layer on a sequence (rank > 2) runs on 2-D rows: Keras
        computes it as reshape, matmul, reshape, bias add, and the converter
        cannot fuse a bias added after the reshape into FULLY_CONNECTED, so
        the op would stay float.
        """
        layer = self.layer
        inner = tuple(inputs.shape[1:-1])
        if not isinstance(layer, keras.layers.Dense) or not inner or None in inner:
            return layer(inputs)
        y = layer(ops.reshape(inputs, (-1, inputs.shape[-1])))
        return ops.reshape(y, (-1, *inner, y.shape[-1]))

    def _batch_normalize(self, z, folded_bias, scale):
        """`z` normalized with its batch statistics (`bn_folding="batch"`).

        `z = s * conv(x, w)` (no bias) with `s = gamma / sigma_moving`, so
        BatchNorm(conv(x, w) + b) with batch statistics is `c * (z -
        mean(z)) + beta` with `c = |gamma| / sqrt(var(z) + eps * s**2)`
        (`= sigma_moving / sigma_batch`). After the freeze step `c = 1` and
        the shift is the folded bias: exactly the moving-statistics fold.
        """
        bn = self.batch_norm
        mean, var = centered_moments(tf.cast(z, "float32"))
        gamma = bn.gamma if bn.scale else tf.ones_like(var)
        c = tf.abs(gamma) * tf.math.rsqrt(var + bn.epsilon * tf.square(scale))
        shift = -c * mean
        if bn.center:
            shift = shift + bn.beta
        if self.layer.bias is not None and self.bn_freeze_step is None:
            # The batch mean removes the bias (BatchNorm's output does not
            # depend on it): its gradient is zero, as float training's is up
            # to rounding. Tied in here (C values), so that Keras does not
            # warn that the bias of every such convolution has no gradient.
            shift = shift + 0.0 * tf.cast(self.layer.bias, shift.dtype)
        step = tf.convert_to_tensor(self.bn_folding_step)
        if self.bn_freeze_step is not None:
            frozen = step >= self.bn_freeze_step
            c = tf.where(frozen, tf.ones_like(c), c)
            shift = tf.where(frozen, folded_bias + tf.zeros_like(shift), shift)
        self._update_moving_statistics(z, None, scale, (mean, var))
        self.bn_folding_step.assign(step + 1)
        return z * ops.cast(c, z.dtype) + ops.cast(shift, z.dtype)

    def _update_moving_statistics(self, y, folded_bias, scale, moments=None):
        """Update the BatchNorm's moving statistics from the folded output.

        `y = conv(x, w * scale) + folded_bias` (`folded_bias` None: `y` has
        no bias); `moments`, if given, are `y`'s batch mean and variance.
        """
        bn = self.batch_norm
        # Statistics of the unfolded layer output `conv(x, w) + b`, recovered
        # from the folded output: remove the folded bias, divide by the scale.
        if moments is None:
            y0 = tf.cast(y, "float32")
            if folded_bias is not None:
                y0 = y0 - folded_bias
            mean, var = batch_moments(tf.stop_gradient(y0))
        else:
            mean, var = (tf.stop_gradient(m) for m in moments)
            if folded_bias is not None:
                mean = mean - folded_bias
        safe = tf.stop_gradient(
            tf.where(tf.abs(scale) > 1e-12, scale, tf.ones_like(scale))
        )
        b = 0.0 if self.layer.bias is None else tf.stop_gradient(self.layer.bias)
        mean = mean / safe + b
        var = var / tf.square(safe)
        update_moving_statistics(bn, mean, var)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "batch_norm": None
                if self.batch_norm is None
                else keras.layers.serialize(self.batch_norm),
                "activation": self.activation,
                "weight_mode": self.weight_mode,
                "preserve_sparsity": self.preserve_sparsity,
                "ema_decay": self.ema_decay,
            }
        )
        if self.preserve_clusters:
            config["preserve_clusters"] = self.preserve_clusters
        if self.bn_folding != "moving":
            config["bn_folding"] = self.bn_folding
            config["bn_freeze_step"] = self.bn_freeze_step
        return config
