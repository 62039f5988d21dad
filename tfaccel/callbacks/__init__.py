"""Callbacks: `Pruning` prunes any model from `fit`; the summaries only report.

Training with `tfaccel.prune` or `tfaccel.quantize` is correct without any
callback; `PruningSummary` and `QuantizationSummary` log and never change it.
"""

from tfaccel.callbacks.pruning import Pruning
from tfaccel.callbacks.pruning_summary import PruningSummary
from tfaccel.callbacks.quantization_summary import QuantizationSummary

__all__ = ["Pruning", "PruningSummary", "QuantizationSummary"]
