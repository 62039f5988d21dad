"""The export step that unrolls recurrent layers for the TFLite converter.

Keras 3's LSTM, GRU and SimpleRNN run a `tf.while_loop` over time that
writes a `TensorList`. The TFLite converter (TF 2.21) cannot lower that
list when the batch dimension is unknown ("'tf.TensorListReserve' op
requires element_shape to be static"): float32, float16, dynamic-range and
int8 exports of such a model all fail. Nor does it recognise Keras 3's
loop as its fused `UNIDIRECTIONAL_SEQUENCE_LSTM`: the converter fuses only
functions carrying Keras 2's `api_implements="lstm_<id>"` attributes with
its six-argument, five-result signature and a static batch size.

With a fixed number of timesteps the loop can be unrolled instead: the same
layer with `unroll=True` computes the same function with one set of plain
ops per timestep (FULLY_CONNECTED, ADD, MUL, LOGISTIC, TANH, ...), every
one of which has an int8 TFLite kernel. This step rebuilds the model to
export with each recurrent layer (inside `Bidirectional` too) unrolled and
its weights copied; a layer whose number of timesteps is unknown raises a
`ValueError` naming it.
"""

from __future__ import annotations

from tfaccel import graph
from tfaccel.export.prepare import register_export_step

__all__ = ["unroll_recurrent"]


def _rolled(layer) -> list:
    """The recurrent layers in `layer` (itself, or a Bidirectional's) that loop."""
    import keras

    if isinstance(layer, keras.layers.Bidirectional):
        inner = [layer.forward_layer, layer.backward_layer]
    else:
        inner = [layer]
    return [
        rnn for rnn in inner
        if isinstance(rnn, keras.layers.RNN) and not getattr(rnn, "unroll", True)
    ]


def _applies(model) -> bool:
    import keras

    if not isinstance(model, keras.Model):
        return False
    try:
        graph.read(model)
    except ValueError:  # a subclassed model: exported through a functional view
        return False
    return any(_rolled(layer) for layer in graph.all_layers(model))


def _unrolled(config):
    """A serialized layer with `unroll=True` in every recurrent config."""
    if isinstance(config, dict):
        result = {key: _unrolled(value) for key, value in config.items()}
        if result.get("unroll") is False:
            result["unroll"] = True
        return result
    if isinstance(config, list):
        return [_unrolled(value) for value in config]
    return config


def unroll_recurrent(model, notes: list[str]):
    """`model` rebuilt with each looping recurrent layer unrolled.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4)])
    >>> notes = []
    >>> unroll_recurrent(model, notes).layers[0].unroll
    True
    >>> notes[0]
    "Unrolled recurrent layers over their timesteps for TFLite: 'gru' (GRU, 5 steps)."

    Args:
        model: a Sequential or functional model.
        notes: the export report's notes; one is appended.

    Returns:
        A new model computing the same function with no loop over time.

    Raises:
        ValueError: a recurrent layer's number of timesteps is not fixed
            (`keras.Input((None, features))`): it cannot be unrolled, and
            TFLite's builtin ops cannot run its loop. Give the model input
            a fixed sequence length (pad or crop sequences to it).
    """
    import keras

    done = []

    def plan(node, graph_):
        layer = node.operation
        if not node.is_layer or node.is_model or not _rolled(layer):
            return None
        steps = _timesteps(node, layer)
        config = _unrolled(keras.saving.serialize_keras_object(layer))
        new = keras.saving.deserialize_keras_object(config)
        done.append(f"'{layer.name}' ({type(layer).__name__}, {steps} steps)")
        return graph.Replacement(new, weights=[(layer, new)])

    unrolled = graph.rebuild(model, plan)
    if done:
        notes.append(
            "Unrolled recurrent layers over their timesteps for TFLite: "
            f"{', '.join(done)}."
        )
    return unrolled


def _timesteps(node, layer) -> int:
    shape = tuple(node.inputs[0].shape) if node.inputs else ()
    steps = shape[1] if len(shape) > 1 else None  # (batch, time, ...)
    if steps is None:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) loops over a "
            f"number of timesteps that is not fixed (input shape {shape}): "
            "TFLite's builtin ops cannot run Keras' recurrent loop, and the "
            "layer can only be unrolled over a fixed length. Give the model "
            "input a fixed sequence length, e.g. keras.Input((timesteps, "
            "features)), padding or cropping sequences to it. Received: "
            f"timesteps=None for layer '{layer.name}'."
        )
    return int(steps)


# After the pruning wrappers are stripped (10) and the float32 twin (20).
register_export_step("unroll_recurrent", _applies, unroll_recurrent, order=30)
