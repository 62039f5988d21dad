"""`cluster`, `strip_clustering` and `distinct_values`: whole-model verbs."""

from __future__ import annotations

import keras
import numpy as np

from tfaccel import graph
from tfaccel.clustering.centroids import CENTROID_INITS
from tfaccel.clustering.wrapper import ClusterWeights, channel_view
from tfaccel.graph import LayerSelector, Replacement, copy_layer
from tfaccel.pruning.prune import _layers
from tfaccel.pruning.registry import is_prunable, prunable_weights, weight_key
from tfaccel.quantization.quantize import _strip_pruning

__all__ = ["cluster", "distinct_values", "strip_clustering"]

_AUTO = "auto"


def _has_zeros(layer) -> bool:
    return layer.built and any(
        np.any(keras.ops.convert_to_numpy(variable) == 0)
        for variable, _ in prunable_weights(layer)
    )


def cluster(
    model: keras.Model,
    number_of_clusters: int,
    centroid_init: str = "kmeans++",
    layers: LayerSelector = None,
    preserve_sparsity: bool | str = _AUTO,
    per_channel: bool = False,
    update_frequency: int = 1,
    seed: int = 0,
) -> keras.Model:
    """Return a copy of `model` whose weights train on `number_of_clusters` values.

    Each selected layer with clusterable weights (the kernels of Dense,
    Conv*, EinsumDense, Embedding, MultiHeadAttention, ... as listed by
    `tfaccel.pruning.register_prunable`) is wrapped in a `ClusterWeights`
    that keeps the layer's name; centroids start from the model's weights
    and train inside an ordinary `fit` (no callback). A pruned model is
    stripped first; with `preserve_sparsity="auto"` a layer whose weights
    hold exact zeros keeps them (sparsity-preserving clustering). Then
    `strip_clustering` gives a plain model, and `tfaccel.quantize` of it
    keeps the clusters (cluster-preserving QAT).

    Example:

    >>> mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32),
    ...                         keras.layers.Dense(10)])
    >>> clustered = cluster(mlp, 8)
    >>> [type(layer).__name__ for layer in clustered.layers]
    ['ClusterWeights', 'ClusterWeights']
    >>> plain = strip_clustering(clustered)
    >>> max(distinct_values(plain).values()) <= 8
    True

    Args:
        model: a Sequential or functional Keras model (nested models are
            clustered too), possibly pruned with `tfaccel.prune`.
        number_of_clusters: values per weight tensor (or per output channel
            with `per_channel=True`), zero included when sparsity is
            preserved; at least 2 (3 when preserving sparsity).
        centroid_init: `"kmeans++"` (default), `"linear"`, `"density"` or
            `"random"` (see `tfaccel.clustering.initial_centroids`).
        layers: which layers to cluster: None (every clusterable layer), a
            layer name, layer or class, a predicate `layer -> bool`, or a
            list of these (see `tfaccel.graph.selector`).
        preserve_sparsity: `"auto"` (for each layer whose weights hold
            exact zeros), True or False.
        per_channel: one set of centroids per output channel.
        update_frequency: training calls between two re-assignments of the
            weights to their nearest centroid.
        seed: seed of the `"kmeans++"` and `"random"` initializations.

    Returns:
        A new Keras model; `model` is left unchanged.

    Raises:
        ValueError: for an invalid argument (named in the message), a model
            that is already clustered or subclassed, `layers` that match no
            layer, or no clusterable layer.
    """
    if centroid_init not in CENTROID_INITS:
        raise ValueError(
            f"`centroid_init` must be one of {CENTROID_INITS}. "
            f"Received: centroid_init={centroid_init!r}"
        )
    if not (
        isinstance(preserve_sparsity, (bool, np.bool_))
        or (isinstance(preserve_sparsity, str) and preserve_sparsity == _AUTO)
    ):
        raise ValueError(
            "`preserve_sparsity` must be 'auto', True or False. Received: "
            f"preserve_sparsity={preserve_sparsity!r}"
        )
    options = dict(
        number_of_clusters=number_of_clusters,
        centroid_init=centroid_init,
        per_channel=per_channel,
        update_frequency=update_frequency,
        seed=seed,
    )
    # Validates every option once, before any graph work.
    ClusterWeights(keras.layers.Dense(1), preserve_sparsity=False, **options)
    source = graph.read(model)
    already = [layer.name for layer in _layers(source) if isinstance(layer, ClusterWeights)]
    if already:
        raise ValueError(
            f"Model '{model.name}' is already clustered (layers {already}). Call "
            "`strip_clustering(model)` first to cluster it again."
        )
    model = _strip_pruning(model)
    source = graph.read(model)
    selected = graph.selector(layers, "layers")
    candidates = _layers(source)
    selected.check_names(candidates, model.name)
    chosen = {
        id(layer)
        for layer in candidates
        if (selected.empty or selected(layer)) and is_prunable(layer)
    }
    wrapped: list[ClusterWeights] = []

    def plan(node, graph_):
        layer = node.operation
        if id(layer) not in chosen:
            return None
        keep_zeros = _has_zeros(layer) if preserve_sparsity == _AUTO else preserve_sparsity
        inner = copy_layer(layer)
        wrapper = ClusterWeights(
            inner, preserve_sparsity=bool(keep_zeros), name=layer.name, **options
        )
        wrapper._initialize_on_build = False
        wrapped.append(wrapper)
        return Replacement(wrapper, weights=[(layer, inner)])

    new_model = graph.rebuild(model, plan)
    if not wrapped:
        raise ValueError(
            f"No clusterable layer selected in model '{model.name}'. Clusterable "
            "layers are Dense, Conv*, EinsumDense, Embedding, MultiHeadAttention, "
            "... and layers registered with `tfaccel.pruning.register_prunable`. "
            f"Received: layers={layers!r}"
        )
    for wrapper in wrapped:
        if not wrapper.built:
            wrapper.build()
        wrapper.initialize()
    return new_model


def strip_clustering(model: keras.Model) -> keras.Model:
    """Return a plain copy of `model` with the clustered weights baked in.

    Every `ClusterWeights` becomes its plain layer holding
    `gather(centroids, assignments)`: each clustered tensor then holds at
    most `number_of_clusters` distinct values (per output channel with
    `per_channel=True`), and predictions are unchanged.

    Example:

    >>> mlp = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> [type(layer).__name__ for layer in strip_clustering(cluster(mlp, 4)).layers]
    ['Dense']

    Args:
        model: a Sequential or functional model, usually from `cluster`.

    Returns:
        A new Keras model without clustering wrappers.
    """
    graph.read(model)  # a clear error for a subclassed model

    def plan(node, graph_):
        if not isinstance(node.operation, ClusterWeights):
            return None
        first, *rest = node.operation.strip()
        return Replacement(first, after=rest)

    return graph.rebuild(model, plan)


def distinct_values(model: keras.Model, per_channel: bool = False) -> dict[str, int]:
    """Number of distinct values of every clusterable weight, by weight key.

    Works on clustered models (the values the wrappers compute with) and on
    plain ones; with `per_channel=True` the largest count over the output
    channels is given.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
    ...     2, kernel_initializer="ones", name="dense")])
    >>> distinct_values(model)
    {'dense/kernel': 1}

    Args:
        model: a Keras model (nested models are walked).
        per_channel: count per output channel and report the maximum.

    Returns:
        A dict mapping weight key to a count.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    result = {}
    layers = graph.all_layers(model)
    wrapped = {id(layer.layer) for layer in layers if isinstance(layer, ClusterWeights)}
    for layer in layers:
        if isinstance(layer, ClusterWeights):
            pairs = zip(layer._clustered, layer.clustered_values())
            owner = layer.layer
        elif layer.built and is_prunable(layer) and id(layer) not in wrapped:
            pairs = [
                (v, keras.ops.convert_to_numpy(v)) for v, _ in prunable_weights(layer)
            ]
            owner = layer
        else:
            continue
        for variable, value in pairs:
            result[weight_key(owner, variable)] = _count(owner, value, per_channel)
    return result


def _count(layer, value, per_channel: bool) -> int:
    if not per_channel:
        return int(np.unique(value).size)
    rows, channels = channel_view(layer, value.shape)
    flat = value.reshape(rows, channels)
    return max(int(np.unique(flat[:, c]).size) for c in range(channels))

