"""Reporting-only callbacks: training is correct without them."""

from tfaccel.callbacks.pruning import Pruning
from tfaccel.callbacks.pruning_summary import PruningSummary
from tfaccel.callbacks.quantization_summary import QuantizationSummary

__all__ = ["Pruning", "PruningSummary", "QuantizationSummary"]
