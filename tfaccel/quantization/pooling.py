"""`SameScaleQuantizer`: the rounding of int8 ops that keep their input's scale.

TFLite's int8 AVERAGE_POOL_2D writes its output on its input's scale and
zero point: each mean is rounded to the nearest int8 level of the input.
The float pooling layer of a QAT model keeps the exact mean, so every
consumer of a pool saw values between levels that the file never holds
(NASNetMobile has 40 such pools). `quantize` puts this layer after each
AveragePooling1D/2D: it rounds to the grid of the quantizer that produced
the pool's input, without a range of its own.
"""

from __future__ import annotations

import keras

from tfaccel.quantization.layers import input_quantizer
from tfaccel.quantization.quantizers import exporting, round_mean
from tfaccel.quantization.registry import register_quantizable

__all__ = ["AVERAGE_POOLS", "SameScaleQuantizer"]


@keras.saving.register_keras_serializable(package="tfaccel")
class SameScaleQuantizer(keras.layers.Layer):
    """Round pooled means to the int8 grid of the quantizer they came from.

    The grid is that of `input_quantizer(self)`: the `ActivationQuantizer`
    found up the functional graph through layers that keep the scale
    (the pooling this layer follows, padding, reshapes). It reads that
    quantizer's range and updates nothing, and rounds as TFLite does
    (`tfaccel.quantization.quantizers.round_mean`: ties away from zero of
    the stored int8 value); the gradient is the identity. With no such
    quantizer (a float input, a layer called outside a functional model),
    and in the graph handed to the converter (which gives the pool its
    input's scale itself), the input passes unchanged.

    Example:

    >>> import numpy as np
    >>> from tfaccel.quantization import ActivationQuantizer
    >>> x = keras.Input((6, 1))
    >>> q = ActivationQuantizer(name="q")
    >>> pooled = keras.layers.AveragePooling1D(3)(q(x))
    >>> model = keras.Model(x, SameScaleQuantizer()(pooled))
    >>> data = np.array([0.0, 0.01, 0.01, 2.0, 2.55, 2.55], "float32")
    >>> data = data.reshape(1, 6, 1)
    >>> _ = q(data, training=True)  # the range [0, 2.55]: steps of 0.01
    >>> np.asarray(model(data), "float64").ravel().round(4).tolist()  # not 0.0067, 2.3667
    [0.01, 2.37]
    """

    def call(self, inputs):
        quantizer = None if exporting() else input_quantizer(self)
        if quantizer is None:
            return inputs
        y = round_mean(inputs, *quantizer.inference_range())
        return keras.ops.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


#: The pools `quantize` follows with a `SameScaleQuantizer`.
AVERAGE_POOLS = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D)

# It keeps the scale: `input_quantizer` walks through it, and a model
# quantized again copies it.
register_quantizable(SameScaleQuantizer, "passthrough")
