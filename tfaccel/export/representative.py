"""Representative and verification data for TFLite export.

The data forms are read by `tfaccel.data`, the one normalizer shared with
calibration (`tfaccel.quantization.calibrate`); this module keeps the old
import path `tfaccel.export.representative.normalize_data` working.
"""

from tfaccel.data import normalize_data

__all__ = ["normalize_data"]
