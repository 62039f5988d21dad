"""tfaccel: Keras 3 native model optimization for TensorFlow.

Prune, quantize-aware-train and distill Keras 3 models inside an ordinary
`model.fit`, then export a TFLite file that verifies itself.

Example:

>>> import keras, tfaccel
>>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32),
...                           keras.layers.Dense(10)])
>>> pruned = tfaccel.prune(model, tfaccel.schedules.ConstantSparsity(0.5))
>>> # pruned.compile(...); pruned.fit(...)      # no callback needed
>>> plain = tfaccel.strip_pruning(pruned)
>>> qat = tfaccel.quantize(plain)               # then fit, then:
>>> # tfaccel.export_tflite(qat, "model.tflite", quantization="int8")
"""

__version__ = "0.1.0"

from tfaccel import callbacks, distribute, schedules  # noqa: E402
from tfaccel._warnings import TfaccelWarning  # noqa: E402
from tfaccel.clustering import cluster, strip_clustering  # noqa: E402
from tfaccel.distillation import distill  # noqa: E402
from tfaccel.export import ExportReport, export_tflite, inspect_tflite  # noqa: E402
from tfaccel.pruning import prune, sparsity, strip_pruning  # noqa: E402
from tfaccel.quantization import quantize  # noqa: E402

__all__ = [
    "ExportReport",
    "TfaccelWarning",
    "callbacks",
    "cluster",
    "distill",
    "distribute",
    "export_tflite",
    "inspect_tflite",
    "prune",
    "quantize",
    "schedules",
    "sparsity",
    "strip_clustering",
    "strip_pruning",
]
