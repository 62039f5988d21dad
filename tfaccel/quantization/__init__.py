"""Quantization-aware training for the TFLite int8 scheme.

`quantize(model)` returns a QAT copy of a Keras model whose forward pass is
the int8 model's (BatchNorm folded, ReLU fused, per-channel int8 conv
weights, per-tensor Dense weights, asymmetric int8 activations); train it with
`fit`, convert it with `tf.lite.Optimize.DEFAULT` and the file is int8 end to
end without a representative data set.
"""

from tfaccel.quantization.affine import QuantizeAffineWrapper
from tfaccel.quantization.attention import (
    QuantizedEinsumDense,
    QuantizedEmbedding,
    QuantizedMultiHeadAttention,
)
from tfaccel.quantization.layernorm import QuantizedLayerNormalization
from tfaccel.quantization.layers import (
    ActivationQuantizer,
    QuantizedActivation,
    QuantizeWrapper,
)
from tfaccel.quantization.pooling import SameScaleQuantizer
from tfaccel.quantization.pruned import PrunedQuantizeWrapper
from tfaccel.quantization.quantize import calibrate, is_quantized, quantize
from tfaccel.quantization.quantizers import fake_quant_activation, fake_quant_weight
from tfaccel.quantization.registry import (
    quantize_kind,
    register_lazy,
    register_qat_layer,
    register_quantizable,
)
from tfaccel.quantization.sublayers import QuantizedSublayers, quantize_sublayers

__all__ = [
    "ActivationQuantizer",
    "QuantizeAffineWrapper",
    "PrunedQuantizeWrapper",
    "QuantizeWrapper",
    "QuantizedActivation",
    "QuantizedEinsumDense",
    "QuantizedEmbedding",
    "QuantizedLayerNormalization",
    "QuantizedMultiHeadAttention",
    "QuantizedSublayers",
    "SameScaleQuantizer",
    "calibrate",
    "fake_quant_activation",
    "fake_quant_weight",
    "is_quantized",
    "quantize",
    "quantize_kind",
    "quantize_sublayers",
    "register_lazy",
    "register_qat_layer",
    "register_quantizable",
]
