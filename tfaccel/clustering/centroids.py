"""Initial cluster centroids of a weight tensor: four ways, as in tfmot.

Each function takes a 1-D array of weight values and returns `n` sorted
float32 centroids. They run once, in numpy, when a layer is wrapped; after
that the centroids are trained by `fit` like any other weight.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CENTROID_INITS", "initial_centroids"]

CENTROID_INITS = ("kmeans++", "linear", "density", "random")

# Lloyd iterations after the k-means++ seeding: enough for 1-D weights to
# settle, cheap on millions of values (one (size, n) distance per round).
_LLOYD_ITERATIONS = 10


def _linear(values, n, rng):
    return np.linspace(values.min(), values.max(), n)


def _random(values, n, rng):
    return rng.uniform(values.min(), values.max(), n)


def _density(values, n, rng):
    # Equal-mass bins of the weight distribution (tfmot's "density-based"):
    # more centroids where weights are dense.
    return np.quantile(values, np.linspace(0.0, 1.0, n))


def _kmeans_plus_plus(values, n, rng):
    centroids = [values[rng.integers(len(values))]]
    for _ in range(1, n):
        distance = np.min(np.abs(values[:, None] - np.asarray(centroids)), axis=1) ** 2
        total = distance.sum()
        if total <= 0.0:  # fewer distinct values than clusters
            centroids.append(centroids[-1])
            continue
        centroids.append(values[rng.choice(len(values), p=distance / total)])
    centroids = np.asarray(centroids, dtype="float64")
    for _ in range(_LLOYD_ITERATIONS):
        nearest = np.argmin(np.abs(values[:, None] - centroids), axis=1)
        sums = np.bincount(nearest, weights=values, minlength=n)
        counts = np.bincount(nearest, minlength=n)
        # An empty cluster keeps its centroid.
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids


_INITS = {
    "kmeans++": _kmeans_plus_plus,
    "linear": _linear,
    "density": _density,
    "random": _random,
}


def initial_centroids(values, n: int, method: str = "kmeans++", seed: int = 0):
    """`n` sorted float32 centroids for the weight values `values`.

    Example:

    >>> initial_centroids(np.array([0.0, 1.0, 2.0, 3.0]), 4, "linear").tolist()
    [0.0, 1.0, 2.0, 3.0]
    >>> [round(float(c), 2) for c in initial_centroids(np.array([0.0, 0.1, 5.0, 5.1]), 2)]
    [0.05, 5.05]

    Args:
        values: the weight values (any shape; flattened). Empty arrays give
            zeros.
        n: number of centroids.
        method: one of `CENTROID_INITS`.
        seed: seed of the `"kmeans++"` and `"random"` draws.

    Returns:
        A float32 array of shape `(n,)`, sorted.

    Raises:
        ValueError: unknown `method`.
    """
    if method not in _INITS:
        raise ValueError(
            f"`centroid_init` must be one of {CENTROID_INITS}. "
            f"Received: centroid_init={method!r}"
        )
    values = np.asarray(values, dtype="float64").reshape(-1)
    if values.size == 0:
        return np.zeros(n, "float32")
    rng = np.random.default_rng(seed)
    return np.sort(_INITS[method](values, n, rng)).astype("float32")
