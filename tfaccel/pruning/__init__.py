"""Magnitude pruning inside `model.fit`: unstructured, N:M, channels, heads.

Example:

>>> import keras
>>> import tfaccel.pruning as tp
>>> from tfaccel.schedules import PolynomialDecay
>>> mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(10)])
>>> pruned = tp.prune(mlp, PolynomialDecay(0.0, 0.8, 0, 100, frequency=10))
>>> plain = tp.strip_pruning(pruned)  # doctest: +SKIP
"""

from tfaccel.pruning import export_step  # noqa: F401  (registers the export step)
from tfaccel.pruning.allocation import allocate
from tfaccel.pruning.base import PruningWrapper, pruning_wrappers
from tfaccel.pruning.channels import PruneChannels, channel_fractions, prune_channels
from tfaccel.pruning.head_wrapper import PruneHeads
from tfaccel.pruning.heads import head_importance, prune_heads
from tfaccel.pruning.masks import nm_mask, unstructured_mask
from tfaccel.pruning.prune import Sparsity, prune, sparsity, strip_pruning
from tfaccel.pruning.registry import register_prunable
from tfaccel.pruning.shrink import shrink, strip_channels
from tfaccel.pruning.wrapper import PruneLowMagnitude

__all__ = [
    "PruneChannels",
    "PruneHeads",
    "PruneLowMagnitude",
    "PruningWrapper",
    "Sparsity",
    "allocate",
    "channel_fractions",
    "head_importance",
    "nm_mask",
    "prune",
    "prune_channels",
    "prune_heads",
    "pruning_wrappers",
    "register_prunable",
    "shrink",
    "sparsity",
    "strip_channels",
    "strip_pruning",
    "unstructured_mask",
]
