"""Magnitude masks: pure TensorFlow functions, XLA-compatible.

Both functions rank weights by magnitude with a stable sort (ties go to the
lower flat index), so the number of zeros is exact and deterministic. The
number of zeros may be a tensor: no `top_k` with a variable `k` (XLA would
recompile for every `k`), only a full-length sort and a comparison of ranks.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["unstructured_mask", "nm_mask", "parse_structure"]


def _ranks(scores: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """Rank of each element in ascending order along `axis` (stable)."""
    order = tf.argsort(scores, axis=axis, direction="ASCENDING", stable=True)
    # The argsort of a permutation is its inverse: the rank of each element.
    return tf.argsort(order, axis=axis, direction="ASCENDING", stable=True)


def unstructured_mask(weight, sparsity, keep=None) -> tf.Tensor:
    """Mask zeroing exactly `round(sparsity * size)` smallest-magnitude weights.

    At least one weight (the largest) is always kept, whatever `sparsity`.

    Example:

    >>> w = tf.constant([[0.1, -2.0], [0.3, 0.0]])
    >>> unstructured_mask(w, 0.5).numpy().tolist()
    [[0.0, 1.0], [1.0, 0.0]]

    Args:
        weight: the weight tensor (any shape, static size).
        sparsity: fraction of zeros, scalar (python float or tensor).
        keep: optional previous mask (same shape). Weights it zeroes rank
            below every other weight, so they stay pruned while sparsity
            does not decrease.

    Returns:
        A mask of `weight`'s shape and dtype holding 0 and 1.
    """
    weight = tf.convert_to_tensor(weight)
    size = weight.shape.num_elements()
    if size is None:
        raise ValueError(
            f"`weight` must have a static shape. Received: shape={weight.shape}"
        )
    scores = tf.reshape(tf.abs(tf.cast(weight, tf.float32)), [-1])
    if keep is not None:
        kept = tf.reshape(tf.cast(keep, tf.float32), [-1]) > 0
        scores = tf.where(kept, scores, -tf.ones_like(scores))
    k = tf.cast(
        tf.round(
            # A Python float stays float64: through float32 it can cross a .5.
            tf.cast(tf.convert_to_tensor(sparsity, dtype_hint=tf.float64), tf.float64)
            * tf.constant(size, tf.float64)
        ),
        tf.int32,
    )
    # Keep at least the largest weight: a tensor of zeros kills its layer
    # (tfmot keeps one too).
    k = tf.minimum(k, size - 1)
    mask = _ranks(scores) >= k
    return tf.reshape(tf.cast(mask, weight.dtype), tf.shape(weight))


def nm_mask(weight, n: int, m: int, axis: int = -2) -> tf.Tensor:
    """Mask keeping the `n` largest-magnitude weights of every `m` along `axis`.

    Groups are `m` consecutive entries along `axis` (the input-channel axis
    of a kernel), which is the layout sparse tensor cores accelerate.

    Example:

    >>> w = tf.constant([[1.0], [-4.0], [3.0], [0.5]])
    >>> nm_mask(w, 2, 4, axis=0).numpy().ravel().tolist()
    [0.0, 1.0, 1.0, 0.0]

    Args:
        weight: the weight tensor (static shape).
        n: weights kept per group, `0 < n <= m`.
        m: group size; must divide `weight.shape[axis]`.
        axis: the axis along which groups are formed.

    Returns:
        A mask of `weight`'s shape and dtype holding 0 and 1.

    Raises:
        ValueError: if `n`/`m` are invalid or `m` does not divide the axis.
    """
    weight = tf.convert_to_tensor(weight)
    rank = weight.shape.rank
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"Expected integers 0 < n <= m. Received: n={n!r}, m={m!r}")
    if rank is None or not -rank <= axis < rank:
        raise ValueError(
            f"`axis` must index a dimension of a rank-{rank} weight. "
            f"Received: axis={axis}"
        )
    axis = axis % rank
    channels = weight.shape[axis]
    if channels % m:
        raise ValueError(
            f"N:M sparsity needs m={m} to divide the size of axis {axis} "
            f"({channels}). Received: weight shape={tuple(weight.shape)}"
        )
    perm = [d for d in range(rank) if d != axis] + [axis]
    inverse = [perm.index(d) for d in range(rank)]
    moved = tf.transpose(weight, perm)
    grouped = tf.reshape(moved, [-1, channels // m, m])
    # Rank by descending magnitude; stable ties go to the lower index.
    order = tf.argsort(
        tf.abs(tf.cast(grouped, tf.float32)), axis=-1, direction="DESCENDING",
        stable=True,
    )
    ranks = tf.argsort(order, axis=-1, stable=True)
    mask = tf.cast(ranks < n, weight.dtype)
    mask = tf.reshape(mask, tf.shape(moved))
    return tf.transpose(mask, inverse)


def parse_structure(structure) -> tuple[int, int] | None:
    """`"unstructured"` -> None, `"N:M"` -> (N, M); raises on anything else."""
    if structure == "unstructured":
        return None
    if isinstance(structure, str) and structure.count(":") == 1:
        left, right = structure.split(":")
        if left.strip().isdigit() and right.strip().isdigit():
            n, m = int(left), int(right)
            if 0 < n < m:
                return n, m
    raise ValueError(
        "`structure` must be 'unstructured' or an 'N:M' string with "
        f"0 < N < M (e.g. '2:4'). Received: structure={structure!r}"
    )
