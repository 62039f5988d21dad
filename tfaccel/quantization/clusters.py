"""Cluster-preserving QAT: a clustered kernel stays on its values in int8.

`QuantizeWrapper(preserve_clusters=N)` computes its kernel as
`gather(cluster_centroids, cluster_assignments)`: the assignments are fixed
when the model is quantized, the centroids train, and every output channel
is fake-quantized with the bound `max|centroid| * |fold scale|` so that all
channels share one int8 grid. `quantize` turns it on for kernels that
`kernel_clusters` recognizes (see `tfaccel.cluster`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfaccel.quantization.quantizers import (
    bound_scale,
    fake_quant_weight_and_scale,
    weight_bound,
)

__all__ = ["MAX_CLUSTERS", "ClusterPreserving", "kernel_clusters"]

# int8 holds at most 255 nonzero levels (narrow range): more clusters than
# that are not clusters any more.
MAX_CLUSTERS = 255


def kernel_clusters(kernel) -> int:
    """The number of distinct nonzero values of a clustered kernel, else 0.

    A kernel counts as clustered when its nonzero entries take at most 255
    values and at least an eighth of them repeat a value already seen: a
    trained or freshly initialized float kernel (all values distinct but
    for rare coincidences) or a pruned one (distinct nonzeros) gives 0,
    while a small clustered kernel (29 nonzeros on 15 values, a pruned
    MobileNet depthwise kernel) counts.

    Example:

    >>> kernel_clusters(np.array([[0.5, -0.5], [0.5, 0.0], [-0.5, 0.5]]))
    2
    >>> kernel_clusters(np.array([0.1, 0.2, 0.3, 0.0]))
    0
    """
    values = np.asarray(kernel)
    nonzero = values[values != 0]
    count = int(np.unique(nonzero).size)
    repeats = nonzero.size - count
    if 0 < count <= MAX_CLUSTERS and repeats >= max(1, nonzero.size // 8):
        return count
    return 0


def _fake_quant_bound(weight, mode: str, bound):
    """`fake_quant_weight` with a given positive bound (scalar, or one per
    channel)."""
    if mode == "per_tensor":
        return tf.quantization.fake_quant_with_min_max_vars(
            weight, -bound, bound, num_bits=8, narrow_range=True
        )
    if mode != "depthwise":
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            weight, -bound, bound, num_bits=8, narrow_range=True
        )
    # Depthwise kernels (kh, kw, in, multiplier) have in * multiplier
    # channels; the converter wants them on the last of three axes (the
    # layout `fake_quant_weight` uses).
    shape = tf.shape(weight)
    kh, kw, cin, mult = weight.shape
    flat = tf.reshape(weight, [kh, kw, cin * mult])
    quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        flat, -bound, bound, num_bits=8, narrow_range=True
    )
    return tf.reshape(quantized, shape)


class ClusterPreserving:
    """The cluster-preserving part of `QuantizeWrapper` (`preserve_clusters`)."""

    preserve_clusters: int = 0

    def _build_clusters(self) -> None:
        self.cluster_centroids = self.add_weight(
            name="cluster_centroids",
            shape=(self.preserve_clusters,),
            initializer="zeros",
            trainable=True,
            aggregation="none",  # trained like the kernel
            dtype="float32",
            autocast=False,
        )
        self.cluster_assignments = self.add_weight(
            name="cluster_assignments",
            shape=self.layer.kernel.shape,
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",  # fixed after `set_clusters`
            dtype="int32",
        )
        # The centroids train in its place (no gradient would reach it).
        self.layer.kernel.trainable = False
        if tf.executing_eagerly():
            # A freshly initialized kernel (weights not copied in yet,
            # or about to be loaded) is not clustered: `quantize` and
            # loading set the variables afterwards.
            self.set_clusters(strict=False)

    def set_clusters(self, strict: bool = True) -> None:
        """Set centroids and assignments from the kernel's nonzero values.

        Raises (or, with `strict=False`, does nothing) when the kernel holds
        more distinct nonzero values than `preserve_clusters`.
        """
        kernel = keras.ops.convert_to_numpy(self.layer.kernel)
        values = np.unique(kernel[kernel != 0])
        if values.size > self.preserve_clusters:
            if not strict:
                return
            raise ValueError(
                f"Layer '{self.layer.name}' has {values.size} distinct nonzero "
                f"kernel values, more than preserve_clusters={self.preserve_clusters}."
            )
        centroids = np.zeros(self.preserve_clusters, "float32")
        centroids[: values.size] = values
        self.cluster_centroids.assign(centroids)
        index = np.searchsorted(values, kernel)
        index = np.where(kernel != 0, np.minimum(index, max(values.size - 1, 0)), 0)
        self.cluster_assignments.assign(index.astype("int32"))

    def _kernel(self):
        """The kernel to fold: the variable, or its clustered form."""
        if not self.preserve_clusters:
            return keras.ops.convert_to_tensor(self.layer.kernel)
        # Zeros (pruned entries) point at centroid 0 and are masked below.
        centroids = tf.convert_to_tensor(self.cluster_centroids)
        kernel = tf.gather(centroids, self.cluster_assignments)
        if not self.preserve_sparsity:
            values = keras.ops.convert_to_tensor(self.layer.kernel)
            kernel = tf.where(tf.equal(values, 0.0), tf.zeros_like(kernel), kernel)
        return kernel

    def _fake_quant(self, folded, scale, bound=None):
        """The fake-quantized folded kernel and its int8 scale (one, or per
        channel); clusters share one int8 grid. `bound`: `_weight_bound`'s,
        if already computed."""
        if not self.preserve_clusters:
            return fake_quant_weight_and_scale(folded, self.weight_mode, bound)
        if bound is None:
            bound = self._weight_bound(folded, scale)
        quantized = _fake_quant_bound(folded, self.weight_mode, bound)
        return quantized, bound_scale(bound)

    def _weight_bound(self, folded, scale):
        """The int8 bound of the folded kernel (one, or per channel)."""
        if not self.preserve_clusters:
            return weight_bound(folded, self.weight_mode)
        return tf.maximum(self._cluster_bound(scale), 1e-8)  # an all-zero kernel too

    def _cluster_bound(self, scale):
        """The int8 bound of a clustered kernel (one, or per channel)."""
        top = tf.reduce_max(tf.abs(self.cluster_centroids))
        if self.weight_mode == "per_tensor":
            return top
        channels = self.layer.kernel.shape[-1]
        if self.weight_mode == "depthwise":
            channels = channels * self.layer.kernel.shape[-2]
        return tf.fill([channels], top) if scale is None else top * tf.abs(scale)

