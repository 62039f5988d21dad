"""Concatenation inputs that the int8 file computes on the output's scale.

TFLite's int8 CONCATENATION needs each input on its output's scale. Where
an input comes from an op that can write any scale (CONV_2D, ADD, ...) and
nothing else reads it, the converter folds the requantization into that
op, which then rounds once, straight to the concatenation's grid; the
op's own range is not used. Elsewhere (an input read by other ops too, a
pooling or reshape that keeps its input's scale, a fixed-scale op such as
LOGISTIC, a model input) it inserts a requantizing QUANTIZE op, which
rounds a second time, as the QAT model does.

An `ActivationQuantizer` asks `folds_into_concatenation` each time it is
traced: where it is true, it keeps its range (the converter's graph still
reads it) but does not round, and the concatenation's quantizer rounds
once, as the file does. Nothing is stored, so a loaded model finds the
same answer in its own graph. Modelled, and measured, for the kernels of
`QuantizeWrapper` (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, a fused
ReLU included), the ADD of a `QuantizeAffineWrapper` and an `Add` (layer
or `x + y`). Not for a standalone RELU: after a TANH, its int8 kernel put
about a tenth of its outputs a step away from either rounding.
"""

from __future__ import annotations

import keras

__all__ = ["folds_into_concatenation"]


def folds_into_concatenation(layer) -> bool:
    """Whether the converter writes `layer`'s int8 output on the scale of
    the quantized concatenation that alone reads it (see the module).

    `layer` is an `ActivationQuantizer` that follows an op, or a wrapper
    whose `output_quantizer` ends it (`QuantizeWrapper`,
    `QuantizeAffineWrapper`). False outside a functional model, for a
    layer called more than once or read by more than the concatenation,
    and for a quantizer after anything but an `Add`.
    """
    from tfaccel.quantization.activations import ActivationQuantizer

    inbound = getattr(layer, "_inbound_nodes", None) or []
    outbound = getattr(layer, "_outbound_nodes", None) or []
    if len(inbound) != 1 or len(outbound) != 1:
        return False
    if isinstance(layer, ActivationQuantizer):
        # After an ADD (measured); not after the model input (the file's
        # QUANTIZE), a RELU (its int8 kernel rounds differently), a
        # fixed-scale op, or another same-scale op.
        parents = inbound[0].parent_nodes
        if len(parents) != 1 or type(parents[0].operation).__name__ != "Add":
            return False
    if not isinstance(layer, ActivationQuantizer) and not _kernel_or_affine(layer):
        return False
    concat = outbound[0].operation
    if not isinstance(concat, keras.layers.Concatenate):
        return False
    after = getattr(concat, "_outbound_nodes", None) or []
    return (
        len(concat._inbound_nodes) == 1
        and len(after) == 1
        and isinstance(after[0].operation, ActivationQuantizer)
    )


def _kernel_or_affine(layer) -> bool:
    from tfaccel.quantization.affine import QuantizeAffineWrapper
    from tfaccel.quantization.layers import QuantizeWrapper

    return isinstance(layer, (QuantizeWrapper, QuantizeAffineWrapper))
