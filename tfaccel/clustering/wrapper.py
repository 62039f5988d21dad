"""`ClusterWeights`: a wrapper that trains a layer on N shared weight values."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfaccel._substitute import full_precision, substitute
from tfaccel.clustering.centroids import CENTROID_INITS, initial_centroids
from tfaccel.graph import copy_layer
from tfaccel.pruning.registry import is_prunable, prunable_weights, weight_key
from tfaccel.pruning.wrapper import PruneLowMagnitude

__all__ = ["ClusterWeights", "channel_view"]


def channel_view(layer, shape) -> tuple[int, int]:
    """`(rows, channels)`: how a weight of `shape` splits into output channels.

    The last axis holds the output channels, except for `DepthwiseConv2D`
    whose `(kh, kw, in, multiplier)` kernel has `in * multiplier` of them
    (as TFLite's per-channel int8 scales count them).
    """
    trailing = 2 if isinstance(layer, keras.layers.DepthwiseConv2D) else 1
    channels = int(np.prod(shape[-trailing:])) if shape else 1
    return int(np.prod(shape)) // max(channels, 1), channels


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


@keras.saving.register_keras_serializable(package="tfaccel")
class ClusterWeights(keras.layers.Wrapper):
    """Train a layer whose weights take at most `number_of_clusters` values.

    Each clustered weight (the kernels the pruning registry lists, see
    `tfaccel.pruning.register_prunable`) gets a trainable vector of
    centroids and an int32 variable of assignments of the weight's shape.
    The wrapped layer computes with `gather(centroids, assignments)` in
    place of the weight (through `tfaccel._substitute.substitute`), so the
    gradient of every weight reaches its centroid: each centroid moves with
    the sum of its members' gradients.

    Like tfmot, the original weight keeps training too, as a latent value
    behind a straight-through estimator (it receives the gradient of the
    clustered weight), and the assignments follow it: every
    `update_frequency` training calls each weight is re-assigned to the
    centroid nearest to its latent value, in the graph. The assignments and
    the step counter are layer variables with `aggregation="none"`: every
    replica computes them identically from the already-synchronized weights
    and centroids, with `tf.where` (no `tf.cond`, XLA-friendly). They are
    saved in `.keras` files and restored by `BackupAndRestore`; no callback
    is needed.

    With `preserve_sparsity=True` the zeros of the weight at wrap time stay
    exactly zero: a fixed mask multiplies the clustered weight, centroid 0
    is pinned at 0 for them, and the other weights are spread over the
    remaining `number_of_clusters - 1` centroids (so the stripped tensor
    still holds at most `number_of_clusters` values, zero included).

    Example:

    >>> dense = keras.layers.Dense(8, name="dense")
    >>> dense.build((None, 16))
    >>> layer = ClusterWeights(dense, 4)
    >>> y = layer(np.ones((2, 16), "float32"), training=True)
    >>> [len(np.unique(w)) <= 4 for w in layer.clustered_values()]
    [True]

    Args:
        layer: the layer to cluster, built (a registered prunable layer, or
            one with a `get_prunable_weights()` method).
        number_of_clusters: centroids per weight (or per output channel).
        centroid_init: `"kmeans++"`, `"linear"`, `"density"` or `"random"`.
        per_channel: one set of centroids per output channel instead of per
            tensor.
        preserve_sparsity: keep the weight's zeros exactly zero.
        update_frequency: re-assign weights every this many training calls.
        seed: seed of the `"kmeans++"` and `"random"` initializations.
        **kwargs: base layer arguments (`name`, ...).

    Call arguments:
        *args, **kwargs: forwarded to the wrapped layer.
        training: assignments are updated and the step advances only when
            true.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        number_of_clusters: int,
        centroid_init: str = "kmeans++",
        per_channel: bool = False,
        preserve_sparsity: bool = False,
        update_frequency: int = 1,
        seed: int = 0,
        **kwargs: Any,
    ):
        super().__init__(layer, **kwargs)
        minimum = 3 if preserve_sparsity else 2
        self.number_of_clusters = _check_positive_int(
            number_of_clusters, "number_of_clusters", minimum
        )
        if centroid_init not in CENTROID_INITS:
            raise ValueError(
                f"`centroid_init` must be one of {CENTROID_INITS}. "
                f"Received: centroid_init={centroid_init!r}"
            )
        for name, value in (
            ("per_channel", per_channel),
            ("preserve_sparsity", preserve_sparsity),
        ):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"`{name}` must be True or False. Received: {name}={value!r}"
                )
        self.centroid_init = centroid_init
        self.per_channel = bool(per_channel)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.update_frequency = _check_positive_int(update_frequency, "update_frequency")
        self.seed = int(seed)
        if not is_prunable(layer):
            raise ValueError(
                f"Layer '{layer.name}' ({layer.__class__.__name__}) has no "
                "clusterable weights: register it with "
                "`tfaccel.pruning.register_prunable` or give it a "
                "`get_prunable_weights()` method."
            )
        # `cluster` turns this off: it initializes once the weights are in.
        self._initialize_on_build = True
        self._clustered: list = []
        self.centroids: list = []
        self.assignments: list = []
        self.masks: list = []

    def build(self, input_shape=None):
        if not self.layer.built:
            if input_shape is None:
                # `call(*args)` gives Keras no input shape to build from.
                raise ValueError(
                    f"Build layer '{self.layer.name}' before wrapping it "
                    "(`layer.build(input_shape)`), or use `tfaccel.cluster`."
                )
            self.layer.build(input_shape)
        self._clustered = [variable for variable, _ in prunable_weights(self.layer)]
        if not self._clustered:
            raise ValueError(f"Layer '{self.layer.name}' returned no clusterable weights.")
        # Fixed creation order (per weight: centroids, assignments, mask; then
        # the step) so that checkpoints and BackupAndRestore stay compatible.
        for variable in self._clustered:
            _, channels = channel_view(self.layer, tuple(variable.shape))
            shape = (channels, self.number_of_clusters) if self.per_channel else (
                self.number_of_clusters,
            )
            # Trained like the kernel: all-reduced gradients keep the
            # replicas' copies identical.
            self.centroids.append(self._state(variable, "centroids", shape, trainable=True))
            self.assignments.append(self._state(variable, "assignments", dtype="int32"))
            if self.preserve_sparsity:
                # Fixed once the layer is wrapped.
                self.masks.append(
                    self._state(variable, "mask", aggregation="only_first_replica")
                )
        self.cluster_step = self.add_weight(
            name="cluster_step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="none",
        )
        self.built = True
        if self._initialize_on_build and tf.executing_eagerly():
            self.initialize()

    def _state(self, variable, what, shape=None, trainable=False, dtype="float32",
               aggregation="none"):
        """One variable of `variable`'s clustering state (float32 or int32)."""
        return self.add_weight(
            name=f"{variable.name}_{what}",
            shape=tuple(variable.shape) if shape is None else shape,
            initializer="ones" if what == "mask" else "zeros",
            trainable=trainable,
            aggregation=aggregation,
            dtype=dtype,
            autocast=False,
        )

    # The inner layer's own build config (multi-input layers such as
    # MultiHeadAttention cannot be rebuilt from one input shape), as pruning.
    get_build_config = PruneLowMagnitude.get_build_config
    build_from_config = PruneLowMagnitude.build_from_config

    # ------------------------------------------------------------------
    # Centroids and assignments.

    def initialize(self) -> None:
        """(Re)initialize masks, centroids and assignments from the weights.

        Called when the wrapper is built eagerly, and by `cluster` once the
        original weights are copied in.
        """
        for index, variable in enumerate(self._clustered):
            value = np.asarray(keras.ops.convert_to_numpy(variable), "float32")
            mask = np.ones_like(value)
            if self.preserve_sparsity:
                mask = (value != 0).astype("float32")
                self.masks[index].assign(mask)
            rows, channels = channel_view(self.layer, value.shape)
            groups = value.reshape(rows, channels).T if self.per_channel else [value]
            kept = mask.reshape(rows, channels).T if self.per_channel else [mask]
            free = self.number_of_clusters - int(self.preserve_sparsity)
            init = [
                initial_centroids(g[k > 0], free, self.centroid_init, self.seed)
                for g, k in zip(groups, kept)
            ]
            if self.preserve_sparsity:
                init = [np.concatenate([[0.0], c]) for c in init]
            centroids = np.stack(init) if self.per_channel else init[0]
            self.centroids[index].assign(centroids.astype("float32"))
            self.assignments[index].assign(
                keras.ops.convert_to_numpy(self._nearest(index, value))
            )

    def _centroids(self, index):
        centroids = tf.convert_to_tensor(self.centroids[index])
        if self.preserve_sparsity:
            # Centroid 0 is pinned at exactly 0 (no gradient reaches it).
            pin = np.ones(self.number_of_clusters, "float32")
            pin[0] = 0.0
            centroids = centroids * pin
        return centroids

    def _nearest(self, index, value):
        """Index of the nearest centroid of every entry of `value`."""
        variable = self._clustered[index]
        shape = tuple(variable.shape)
        rows, channels = channel_view(self.layer, shape)
        centroids = self._centroids(index)
        flat = tf.reshape(tf.cast(value, "float32"), (rows, channels, 1))
        if not self.per_channel:
            centroids = centroids[None, :]  # (1, n): the same for every channel
        distance = tf.abs(flat - centroids[None])  # (rows, channels, n)
        if self.preserve_sparsity:
            # Kept weights never join the zero cluster; masked ones always do.
            inf = np.full(self.number_of_clusters, np.inf, "float32")
            inf[1:] = 0.0
            distance = distance + inf
        nearest = tf.argmin(distance, axis=-1, output_type=tf.int32)
        if self.preserve_sparsity:
            mask = tf.reshape(self.masks[index], (rows, channels))
            nearest = tf.where(mask > 0, nearest, 0)
        return tf.reshape(nearest, shape)

    def _gather(self, index, assignments):
        """The clustered weight: each entry's centroid (masked if needed)."""
        variable = self._clustered[index]
        shape = tuple(variable.shape)
        centroids = self._centroids(index)
        if self.per_channel:
            rows, channels = channel_view(self.layer, shape)
            by_channel = tf.transpose(tf.reshape(assignments, (rows, channels)))
            values = tf.gather(centroids, by_channel, batch_dims=1)  # (channels, rows)
            values = tf.reshape(tf.transpose(values), shape)
        else:
            values = tf.gather(centroids, assignments)
        if self.preserve_sparsity:
            values = values * self.masks[index]
        return values

    def _clustered_weight(self, index, assignments):
        variable = self._clustered[index]
        latent = tf.cast(variable, "float32")
        values = self._gather(index, assignments)
        # Straight-through: the latent weight gets the clustered weight's
        # gradient (masked entries excepted) and moves between clusters.
        ste = latent - tf.stop_gradient(latent)
        if self.preserve_sparsity:
            ste = ste * self.masks[index]
        return tf.cast(values + ste, variable.dtype)

    def update_assignments(self) -> list:
        """Advance one training step; re-assign weights when due.

        Returns the assignments to compute with at this step.
        """
        due = tf.equal(self.cluster_step % self.update_frequency, 0)
        current = []
        with full_precision():
            for index, variable in enumerate(self._clustered):
                old = tf.convert_to_tensor(self.assignments[index])
                new = tf.where(due, self._nearest(index, variable), old)
                self.assignments[index].assign(new)
                current.append(new)
        self.cluster_step.assign_add(1)
        return current

    def call(self, *args, training=None, **kwargs):
        if training:
            assignments = self.update_assignments()
        else:
            assignments = [tf.convert_to_tensor(a) for a in self.assignments]
        with full_precision():
            mapping = [
                (variable, self._clustered_weight(index, assignments[index]))
                for index, variable in enumerate(self._clustered)
            ]
        with substitute(mapping, tracked=self.layer.variables, owner=self.layer):
            return self.layer(*args, training=training, **kwargs)

    # ------------------------------------------------------------------
    # Reading and stripping.

    def clustered_values(self) -> list[np.ndarray]:
        """The clustered weights as numpy arrays (what `strip` bakes in)."""
        return [
            keras.ops.convert_to_numpy(self._gather(index, self.assignments[index]))
            for index in range(len(self._clustered))
        ]

    def distinct_values(self) -> dict[str, int]:
        """Number of distinct values of each clustered weight, by weight key."""
        return {
            weight_key(self.layer, variable): int(np.unique(value).size)
            for variable, value in zip(self._clustered, self.clustered_values())
        }

    def strip(self) -> list[keras.layers.Layer]:
        """The wrapped layer's plain copy holding the clustered weights."""
        new = copy_layer(self.layer)
        clustered = {
            id(variable): value
            for variable, value in zip(self._clustered, self.clustered_values())
        }
        new.set_weights(
            [clustered.get(id(v), keras.ops.convert_to_numpy(v)) for v in self.layer.weights]
        )
        return [new]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "number_of_clusters": self.number_of_clusters,
                "centroid_init": self.centroid_init,
                "per_channel": self.per_channel,
                "preserve_sparsity": self.preserve_sparsity,
                "update_frequency": self.update_frequency,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        return cls(layer, **config)
