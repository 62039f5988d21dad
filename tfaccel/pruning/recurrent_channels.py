"""Channel pruning of recurrent layers: LSTM units out, recurrent inputs sliced.

An LSTM's output channel is one unit's `h`. Channel pruning removes whole
units of an `LSTM` (or of both directions of a `Bidirectional(LSTM)` with
`merge_mode="concat"`), and slices the input rows of any LSTM, GRU or
SimpleRNN that reads pruned channels of a layer before it.

Exactness: a unit `j` is masked by zeroing its *candidate* gate (kernel and
recurrent-kernel columns, bias entry): with a zero initial state its cell
state then stays `c_j = f * c_j + i * tanh(0) = 0` at every step, so `h_j =
o_j * tanh(0)` is exactly 0, and the other units never see it (their
recurrent input from `h_j` is 0). The masked layer therefore computes what
the layer without unit `j` computes, and `sliced_recurrent` removes the
unit's columns from all four gates and its row of the recurrent kernel.
This needs the cell's `activation` to map 0 to 0 (`tanh`, `relu`).

Keras' gate layout: LSTM kernels are `(inputs, 4 * units)` in gate order
i, f, c, o; GRU `(inputs, 3 * units)` (z, r, h; its bias `(2, 3 * units)`
with `reset_after`); SimpleRNN `(inputs, units)`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = [
    "RECURRENT",
    "is_recurrent",
    "is_unit_producer",
    "masked_mapping",
    "sliced_recurrent",
    "unit_count",
    "unit_scores",
]

#: The layers whose units or input rows this module reasons about.
RECURRENT = (keras.layers.RNN, keras.layers.Bidirectional)

_GATES = {
    keras.layers.LSTMCell: 4,
    keras.layers.GRUCell: 3,
    keras.layers.SimpleRNNCell: 1,
}
_CANDIDATE = 2  # the LSTM gate whose zero columns silence a unit


def _inner(layer) -> list:
    """The recurrent layers `layer` computes with (a Bidirectional's two)."""
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def _gates(rnn) -> int | None:
    cell = getattr(rnn, "cell", None)
    return _GATES.get(type(cell)) if isinstance(rnn, keras.layers.RNN) else None


def is_recurrent(layer) -> bool:
    """An LSTM/GRU/SimpleRNN (or a Bidirectional of one) with Keras' own cell:
    channel pruning can slice its input rows."""
    inner = _inner(layer)
    return isinstance(layer, RECURRENT) and all(
        _gates(rnn) for rnn in inner
    )


def is_unit_producer(layer) -> bool:
    """Whether channel pruning can remove units of `layer`'s output.

    An `LSTM` with Keras' `LSTMCell` whose activation maps 0 to 0, returning
    its output only (no states), not stateful; or a `Bidirectional` of two
    such layers joined by `"concat"`.
    """
    from tfaccel.pruning.channel_budget import maps_zero_to_zero

    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode != "concat" or layer.return_state:
            return False
    elif type(layer) is not keras.layers.LSTM:
        return False
    for rnn in _inner(layer):
        if type(rnn) is not keras.layers.LSTM or type(rnn.cell) is not keras.layers.LSTMCell:
            return False
        if rnn.return_state or rnn.stateful or not maps_zero_to_zero(rnn.cell.activation):
            return False
    return True


def unit_count(layer) -> int:
    """The number of output channels: units (both directions' for concat)."""
    return sum(int(rnn.cell.units) for rnn in _inner(layer))


def _unit_columns(units: int, gates: int, keep: np.ndarray) -> np.ndarray:
    """Kernel columns of the kept units, gate by gate."""
    return np.concatenate([g * units + np.flatnonzero(keep) for g in range(gates)])


def unit_scores(layer, criterion: str):
    """Per unit: the l1 or l2 norm of its columns in every gate's kernel and
    recurrent kernel (float32, shape `(unit_count,)`)."""
    scores = []
    for rnn in _inner(layer):
        cell, units = rnn.cell, int(rnn.cell.units)
        # (rows, gates * units) -> (rows * gates, units): column j holds
        # every entry of unit j (gate g's column g * units + j).
        w = ops.concatenate(
            [ops.reshape(ops.cast(v, "float32"), (-1, units))
             for v in (cell.kernel, cell.recurrent_kernel)],
            axis=0,
        )
        if criterion == "l2":
            scores.append(ops.sqrt(ops.sum(ops.square(w), axis=0)))
        else:
            scores.append(ops.sum(ops.abs(w), axis=0))
    return ops.concatenate(scores, axis=0) if len(scores) > 1 else scores[0]


def masked_mapping(layer, mask) -> list:
    """`(variable, variable * gate mask)` pairs that silence masked units.

    `mask` has one entry per output channel (`unit_count`); each direction
    reads its own slice. Only the candidate gate's kernel and
    recurrent-kernel columns and bias entries are multiplied.
    """
    mapping, start = [], 0
    for rnn in _inner(layer):
        cell, units = rnn.cell, int(rnn.cell.units)
        own = ops.cast(mask[start : start + units], cell.kernel.dtype)
        start += units
        ones = ops.ones((units,), own.dtype)
        gate = ops.concatenate([ones, ones, own, ones])
        variables = [cell.kernel, cell.recurrent_kernel]
        if cell.use_bias:
            variables.append(cell.bias)
        mapping += [(v, v * gate) for v in variables]
    return mapping


def _new_rnn_config(rnn, units: int, use_bias: bool) -> dict:
    config = rnn.get_config()
    config["units"] = units
    config["use_bias"] = use_bias
    return config


def _sliced_weights(rnn, in_keep, out_keep, constants, zero_out):
    """The sliced kernel, recurrent kernel and bias (or None) of one RNN."""
    cell, units, gates = rnn.cell, int(rnn.cell.units), _gates(rnn)
    kernel = np.array(ops.convert_to_numpy(cell.kernel))
    recurrent = np.array(ops.convert_to_numpy(cell.recurrent_kernel))
    bias = np.array(ops.convert_to_numpy(cell.bias)) if cell.use_bias else None
    if constants is not None and np.any(constants[~in_keep] != 0):
        # What the removed input rows added at every step, into the bias
        # (a GRU's input bias is row 0 of its (2, 3 * units) bias).
        delta = constants[~in_keep] @ kernel[~in_keep]
        if bias is None:
            bias = delta.astype(kernel.dtype)
        elif bias.ndim == 2:
            bias[0] += delta
        else:
            bias = bias + delta
    if zero_out is not None and zero_out.any():
        columns = _CANDIDATE * units + np.flatnonzero(zero_out)
        kernel[:, columns] = 0.0
        recurrent[:, columns] = 0.0
        if bias is not None:
            bias[..., columns] = 0.0
    columns = _unit_columns(units, gates, out_keep)
    kernel = kernel[in_keep][:, columns]
    recurrent = recurrent[out_keep][:, columns]
    if bias is not None:
        bias = bias[..., columns]
    return kernel, recurrent, bias


def sliced_recurrent(layer, in_keep=None, out_keep=None, constants=None, zero_out=None):
    """A built copy of `layer` without the dropped input rows and units.

    Args:
        layer: an LSTM/GRU/SimpleRNN or a Bidirectional of one
            (`is_recurrent`); units can be dropped only from
            `is_unit_producer` layers.
        in_keep: boolean per input feature (None: all kept).
        out_keep: boolean per output channel (`unit_count`; None: all kept).
        constants: what each removed input feature held (one value per
            input feature, or None): folded into the bias.
        zero_out: boolean per output channel: units to silence (candidate
            gate zeroed) while keeping them.

    Returns:
        A new built layer holding the sliced weights.
    """
    inner = _inner(layer)
    in_dim = int(inner[0].cell.kernel.shape[0])
    in_keep = np.ones(in_dim, bool) if in_keep is None else np.asarray(in_keep, bool)
    total = unit_count(layer)
    out_keep = np.ones(total, bool) if out_keep is None else np.asarray(out_keep, bool)
    zero = np.zeros(total, bool) if zero_out is None else np.asarray(zero_out, bool)
    weights, rnns, start = [], [], 0
    for rnn in inner:
        units = int(rnn.cell.units)
        part = slice(start, start + units)
        start += units
        kernel, recurrent, bias = _sliced_weights(
            rnn, in_keep, out_keep[part], constants, zero[part]
        )
        weights.append((kernel, recurrent, bias))
        rnns.append(rnn.__class__.from_config(
            _new_rnn_config(rnn, int(out_keep[part].sum()), bias is not None)))
    if isinstance(layer, keras.layers.Bidirectional):
        # Both directions given: each keeps its own number of units.
        new = keras.layers.Bidirectional(
            rnns[0], backward_layer=rnns[1], merge_mode=layer.merge_mode,
            name=layer.name,
        )
    else:
        new = rnns[0]
    shape = list(layer.get_build_config()["input_shape"])
    shape[-1] = int(in_keep.sum())
    new.build(tuple(shape))
    for rnn, (kernel, recurrent, bias) in zip(_inner(new), weights):
        rnn.cell.kernel.assign(kernel)
        rnn.cell.recurrent_kernel.assign(recurrent)
        if bias is not None:
            rnn.cell.bias.assign(bias)
    return new
