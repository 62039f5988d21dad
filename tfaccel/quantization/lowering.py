"""Convolutions that TFLite runs as other ops: their QAT form is those ops.

`quantize` turns a layer with a kernel into one `QuantizeWrapper` per int8
kernel of the file, so that every weight and every intermediate tensor is
fake-quantized where the int8 model rounds it:

- `SeparableConv2D` (kind `"separable"`): TFLite runs DEPTHWISE_CONV_2D then
  CONV_2D 1x1, each with per-channel int8 weights and the tensor between
  them int8 with its own scale. The QAT model holds a `DepthwiseConv2D` and
  a 1x1 `Conv2D` wrapper; BatchNormalization and ReLU after it fold into
  the pointwise one.
- `Conv1D` (kind `"conv1d"`): the converter lowers it to RESHAPE, CONV_2D
  with a `(1, k, in, out)` kernel and RESHAPE. Per-channel int8 weights on
  the 3-D kernel do not survive that reshape ("tfl.reshape" quantized
  dimension error), so the QAT model holds that `Conv2D` itself, between
  two `Reshape` layers (and a `ZeroPadding1D` for `padding="causal"`).

Each function returns a `Lowering`: layers before, the kernel layers (built,
with the original weights) and their weight modes, layers after.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

__all__ = ["Lowering", "LOWERINGS"]


@dataclasses.dataclass
class Lowering:
    """What one layer with a kernel becomes.

    Attributes:
        before: layers applied to the input first.
        kernels: `(layer, weight_mode)` pairs applied in order, each built
            and holding its share of the original weights; the last one
            takes the folded BatchNorm and fused activation.
        after: layers applied to the last kernel's output.
    """

    before: list[Any]
    kernels: list[tuple[keras.layers.Layer, str]]
    after: list[Any]


def _input_shape(layer) -> tuple:
    return tuple(layer.get_build_config()["input_shape"])


def _built(layer, input_shape, weights):
    layer.build(input_shape)
    layer.set_weights([np.asarray(w) for w in weights])
    return layer


def _pick(config: dict, **names: str) -> dict:
    """`config`'s entries renamed: `new=old` for each keyword."""
    return {new: config[old] for new, old in names.items() if old in config}


def separable(layer) -> Lowering:
    """`SeparableConv2D` as a depthwise then a pointwise convolution."""
    config = layer.get_config()
    shape = _input_shape(layer)
    weights = layer.get_weights()
    depthwise = keras.layers.DepthwiseConv2D(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        depth_multiplier=config["depth_multiplier"],
        dilation_rate=config["dilation_rate"],
        use_bias=False,
        name=f"{layer.name}_depthwise",
        **_pick(
            config,
            depthwise_initializer="depthwise_initializer",
            depthwise_regularizer="depthwise_regularizer",
            depthwise_constraint="depthwise_constraint",
        ),
    )
    pointwise = keras.layers.Conv2D(
        config["filters"],
        1,
        use_bias=config["use_bias"],
        name=f"{layer.name}_pointwise",
        **_pick(
            config,
            kernel_initializer="pointwise_initializer",
            kernel_regularizer="pointwise_regularizer",
            kernel_constraint="pointwise_constraint",
            bias_initializer="bias_initializer",
            bias_regularizer="bias_regularizer",
            bias_constraint="bias_constraint",
        ),
    )
    _built(depthwise, shape, weights[:1])
    _built(pointwise, depthwise.compute_output_shape(shape), weights[1:])
    return Lowering([], [(depthwise, "depthwise"), (pointwise, "per_channel")], [])


def conv1d(layer) -> Lowering:
    """`Conv1D` as the `Conv2D` the converter makes of it, between reshapes."""
    config = layer.get_config()
    shape = _input_shape(layer)
    (size,), (stride,), (rate,) = (
        config["kernel_size"],
        config["strides"],
        config["dilation_rate"],
    )
    before = []
    padding = config["padding"]
    if padding == "causal":
        before.append(
            keras.layers.ZeroPadding1D((rate * (size - 1), 0), name=f"{layer.name}_pad")
        )
        padding = "valid"
        shape = before[0].compute_output_shape(shape)
    kept = {
        k: config[k]
        for k in (
            "filters",
            "groups",
            "use_bias",
            "kernel_initializer",
            "bias_initializer",
            "kernel_regularizer",
            "bias_regularizer",
            "kernel_constraint",
            "bias_constraint",
        )
    }
    conv = keras.layers.Conv2D(
        kernel_size=(1, size),
        strides=(1, stride),
        dilation_rate=(1, rate),
        padding=padding,
        name=f"{layer.name}_2d",
        **kept,
    )
    weights = layer.get_weights()
    weights[0] = weights[0][None]  # (k, in, out) -> (1, k, in, out)
    _built(conv, (shape[0], 1, *shape[1:]), weights)
    before.append(keras.layers.Reshape((1, -1, shape[-1]), name=f"{layer.name}_to_2d"))
    after = [keras.layers.Reshape((-1, config["filters"]), name=f"{layer.name}_to_1d")]
    return Lowering(before, [(conv, "per_channel")], after)


#: kind (see `registry.KINDS`) -> lowering function.
LOWERINGS = {"separable": separable, "conv1d": conv1d}
