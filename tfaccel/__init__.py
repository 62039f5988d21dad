"""tfaccel: Keras 3 native model optimization for TensorFlow.

Prune, quantize-aware-train and distill Keras 3 models inside an ordinary
`model.fit`, then export a verified TFLite file.
"""

__version__ = "0.1.0"
