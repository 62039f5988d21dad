"""Attention-head pruning that shrinks: whole heads removed from the model.

The transformer analogue of channel pruning: a head of a
`MultiHeadAttention` is one slice of its query, key and value projections
(axis `heads` of their `(dim, heads, head_dim)` kernels and `(heads,
head_dim)` biases) and one slice of its output projection (axis 0 of the
`(heads, head_dim, out)` kernel). `prune_heads` ranks the heads of each
selected layer and rebuilds the model with a smaller `MultiHeadAttention`
holding the kept slices, so parameters, MACs and latency all drop; fine-tune
the result to recover accuracy. To remove heads gradually inside `fit`, use
`tfaccel.prune(model, schedule, structure="heads")` (`PruneHeads`, in
`tfaccel/pruning/head_wrapper.py`), which calls the same slicing on strip.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfaccel import graph
from tfaccel.graph import LayerSelector, Replacement

__all__ = [
    "check_attention",
    "head_importance",
    "head_scores",
    "prune_heads",
    "sliced_attention",
]

_QKV = ("_query_dense", "_key_dense", "_value_dense")


def _values(dense) -> list[np.ndarray]:
    return [np.asarray(w) for w in dense.get_weights()]


def head_scores(layer: keras.layers.MultiHeadAttention, mask=None):
    """`head_importance` as a float32 tensor (`keras.ops`, usable in `call`).

    With `mask` (one entry per head), the scores of the weights times the
    mask: a masked head scores 0, so it stays masked as sparsity rises.
    """
    mask = None if mask is None else ops.cast(mask, "float32")

    def norms(dense, axis):
        kernel = ops.moveaxis(ops.cast(dense.kernel, "float32"), axis, 0)
        flat = ops.reshape(kernel, (kernel.shape[0], -1))
        norm = ops.sqrt(ops.sum(ops.square(flat), axis=1))
        return norm if mask is None else norm * mask

    q, k, v = (norms(getattr(layer, a), -2) for a in _QKV)
    return q * k * v * norms(layer._output_dense, 0)


def head_importance(layer: keras.layers.MultiHeadAttention) -> np.ndarray:
    """One score per head: how much it can move the layer's output.

    The Frobenius norm of the head's value-output path (`||W_v[:, h]|| *
    ||W_o[h]||`), times the norm of its query-key path (`||W_q[:, h]|| *
    ||W_k[:, h]||`), which scales how peaked its attention can be.

    Example:

    >>> import numpy as np
    >>> mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=2)
    >>> x = np.ones((1, 3, 8), "float32")
    >>> _ = mha(x, x)
    >>> head_importance(mha).shape
    (4,)
    """
    return ops.convert_to_numpy(head_scores(layer))


def check_attention(layer, caller: str = "prune_heads") -> None:
    """Raise unless `layer` is a MultiHeadAttention whose heads can be sliced."""
    if not isinstance(layer, keras.layers.MultiHeadAttention):
        raise ValueError(
            f"`{caller}` needs a MultiHeadAttention layer. Received: "
            f"layer={getattr(layer, 'name', layer)!r} ({type(layer).__name__})"
        )
    gated = bool(getattr(layer, "_use_gate", False))
    if gated or not layer.built or len(layer._query_dense.kernel.shape) != 3:
        raise ValueError(
            f"`{caller}` needs a built MultiHeadAttention over one sequence "
            "axis, without gating (kernels of shape (dim, heads, head_dim)). "
            f"Received: layer={layer.name!r} (built={layer.built}, "
            f"use_gate={gated})"
        )


def sliced_attention(layer, keep: np.ndarray):
    """A new `MultiHeadAttention` holding only the heads in `keep` (sorted)."""
    config = layer.get_config()
    config["num_heads"] = len(keep)
    new = layer.__class__.from_config(config)
    new.build_from_config(layer.get_build_config())
    for attr in _QKV:
        values = _values(getattr(layer, attr))
        sliced = [values[0][:, keep]] + [b[keep] for b in values[1:]]
        getattr(new, attr).set_weights(sliced)
    values = _values(layer._output_dense)
    new._output_dense.set_weights([values[0][keep]] + values[1:])
    return new


def prune_heads(
    model: keras.Model,
    fraction: float,
    layers: LayerSelector = None,
) -> keras.Model:
    """Return a copy of `model` with the least important attention heads removed.

    In every selected `MultiHeadAttention`, `round(fraction * num_heads)`
    heads with the lowest `head_importance` are removed (at least one head
    stays) and the layer is rebuilt with the others: its query, key, value
    and output projections are sliced together, so the model computes the
    same function as the original with those heads' contributions zeroed.
    Every other layer is copied with its weights.

    Example:

    >>> import numpy as np
    >>> inputs = keras.Input((6, 8))
    >>> outputs = keras.layers.MultiHeadAttention(4, 2, name="mha")(inputs, inputs)
    >>> small = prune_heads(keras.Model(inputs, outputs), 0.5)
    >>> small.get_layer("mha").num_heads
    2

    Args:
        model: a Sequential or functional model.
        fraction: fraction of each layer's heads to remove, in [0, 1).
        layers: which `MultiHeadAttention` layers to prune (names, layers,
            classes or predicates, see `tfaccel.graph.selector`); all of
            them by default.

    Returns:
        A new, smaller `keras.Model`; `model` is left unchanged.

    Raises:
        ValueError: `fraction` outside [0, 1), no `MultiHeadAttention`
            selected, or one that is unbuilt, gated or has more than one
            attention axis.
    """
    if isinstance(fraction, bool) or not 0.0 <= float(fraction) < 1.0:
        raise ValueError(
            f"`fraction` must be in [0, 1). Received: fraction={fraction!r}"
        )
    selected = graph.selector(layers, "layers")
    source = graph.read(model)
    found = [
        node.operation
        for _, node in source.walk()
        if isinstance(node.operation, keras.layers.MultiHeadAttention)
        and (selected.empty or selected(node.operation))
    ]
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no selected MultiHeadAttention layer. "
            f"Received: layers={layers!r}"
        )

    def plan(node, _graph):
        layer = node.operation
        if not any(layer is f for f in found):
            return None
        check_attention(layer)
        heads = layer.num_heads
        drop = min(int(round(float(fraction) * heads)), heads - 1)
        order = np.argsort(-head_importance(layer), kind="stable")
        return Replacement(sliced_attention(layer, np.sort(order[: heads - drop])))

    return graph.rebuild(model, plan)
