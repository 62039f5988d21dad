"""Export Keras models to TFLite files that verify themselves.

`export_tflite` converts (float32, float16, dynamic range or int8), runs the
file against the Keras model, writes it atomically and returns an
`ExportReport`; `inspect_tflite` reports on any existing `.tflite` file.
"""

from tfaccel.export import fused_lstm, recurrent  # noqa: F401  (register export steps)
from tfaccel.export.inspect import inspect_tflite
from tfaccel.export.latency import benchmark_tflite
from tfaccel.export.layer_parity import LayerParity, compare_layers
from tfaccel.export.report import ExportReport
from tfaccel.export.tflite import VerificationError, export_tflite, run_tflite
from tfaccel.export.validate import InvalidTFLiteError, validate_tflite

__all__ = [
    "ExportReport",
    "InvalidTFLiteError",
    "LayerParity",
    "VerificationError",
    "benchmark_tflite",
    "compare_layers",
    "export_tflite",
    "inspect_tflite",
    "run_tflite",
    "validate_tflite",
]
