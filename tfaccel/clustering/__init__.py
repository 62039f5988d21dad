"""Weight clustering inside `model.fit`, as tfmot's `clustering.keras`.

`cluster(model, 16)` wraps every clusterable layer in a `ClusterWeights`
whose weights take at most 16 trained values; `strip_clustering` bakes them
into a plain model. A pruned model keeps its zeros (sparsity-preserving
clustering), and `tfaccel.quantize` of a clustered model keeps its clusters
(cluster-preserving QAT): prune, cluster and quantize together give int8
files that gzip far below the pruned int8 file.

Example:

>>> import keras
>>> import tfaccel.clustering as tc
>>> mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32),
...                         keras.layers.Dense(10)])
>>> clustered = tc.cluster(mlp, 16)  # compile + fit as usual
>>> plain = tc.strip_clustering(clustered)
>>> max(tc.distinct_values(plain).values()) <= 16
True
"""

from tfaccel.clustering.centroids import CENTROID_INITS, initial_centroids
from tfaccel.clustering.cluster import cluster, distinct_values, strip_clustering
from tfaccel.clustering.wrapper import ClusterWeights

__all__ = [
    "CENTROID_INITS",
    "ClusterWeights",
    "cluster",
    "distinct_values",
    "initial_centroids",
    "strip_clustering",
]
