"""The export step that maps Keras LSTMs onto TFLite's fused sequence LSTM.

TFLite runs a whole LSTM layer as one `UNIDIRECTIONAL_SEQUENCE_LSTM` op,
in float and in int8 (int8 weights, int16 cell state). The converter (TF
2.21) emits it only for a function it recognises as a Keras LSTM: a
`tf.function` carrying the attributes Keras 2's LSTM set
(`api_implements="lstm_<id>"`, `time_major`, `go_backwards`), taking six
tensors (input, initial output state, initial cell state, kernel,
recurrent kernel, bias; gates in Keras' i, f, c, o order) and returning
five results of which only the last output or the full sequence is read,
with a batch size known at conversion. Keras 3's LSTM is a `while_loop`
the converter neither fuses nor (with an unknown batch) lowers.

This step rebuilds the model to export with each qualifying `LSTM` (alone
or in a `Bidirectional`) replaced by `FusedLSTM`, which calls such a
function on the layer's own variables, and with the model's inputs at a
batch size of 1: the file runs one sequence per invocation. The
function's body computes the LSTM step by step over the fixed timesteps
(what runs if the converter ever declines to fuse it).

A fused LSTM keeps its final states in variable tensors of the file, so
an invocation starts from the state the previous one left unless the
caller resets it (`Interpreter.reset_all_variables()`; on Android
`Interpreter.resetVariableTensors()`): streaming use carries state over,
one independent sequence per call must reset. `tfaccel.export.run_tflite`
and the export's verification reset before every invocation.

Layers left to `unroll_recurrent` (the next step), with a note saying why:
an LSTM that receives a mask (`Embedding(mask_zero=True)`, `Masking`) or
an initial state, returns its states, is stateful, has activations other
than `tanh`/`sigmoid`, or a cell that is not Keras' own `LSTMCell`; and
every GRU and SimpleRNN (TFLite has no fused kernel for them). Pass
`export_tflite(..., fuse_lstm=False)` to unroll every LSTM instead (any
batch size, no state between invocations, one set of ops per timestep).
"""

from __future__ import annotations

import struct
import uuid

import keras

from tfaccel import graph
from tfaccel.export.prepare import register_export_step

__all__ = ["FusedLSTM", "fuse_lstm", "has_fused_lstm", "without_cell_clip"]

_MERGES = ("concat", "sum", "ave", "mul", None)
_SEQUENCE_LSTM = 44  # BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM
_CELL_CLIP = 1  # UnidirectionalSequenceLSTMOptions.cell_clip (vtable slot)


def _lstm_function(go_backwards: bool):
    """A `tf.function` the converter replaces by UNIDIRECTIONAL_SEQUENCE_LSTM."""
    import tensorflow as tf

    def lstm(inputs, init_h, init_c, kernel, recurrent_kernel, bias):
        x = tf.reverse(inputs, [1]) if go_backwards else inputs
        h, c, outputs = init_h, init_c, []
        for t in range(x.shape[1]):
            z = tf.matmul(x[:, t], kernel) + tf.matmul(h, recurrent_kernel) + bias
            i, f, g, o = tf.split(z, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            outputs.append(h)
        # Keras 2's five results: last output, sequence, h, c, runtime.
        return h, tf.stack(outputs, axis=1), h, c, tf.constant(0.0)

    attributes = {
        "api_implements": f"lstm_{uuid.uuid4()}",
        "api_preferred_device": "CPU",
        "time_major": False,
        "go_backwards": bool(go_backwards),
    }
    return tf.function(lstm, autograph=False, experimental_attributes=attributes)


def _run(lstm, function, x):
    """One LSTM layer's output on `x` through its fused function."""
    import tensorflow as tf

    cell = lstm.cell
    batch = x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]
    zeros = tf.zeros((batch, cell.units), x.dtype)
    tensor = tf.convert_to_tensor
    bias = tensor(cell.bias) if cell.use_bias else tf.zeros((4 * cell.units,), x.dtype)
    if tf.executing_eagerly():
        # Called eagerly (verification's Keras side, on batches of any
        # size): the same computation, without tracing a function per shape.
        function = function.python_function
    last, sequence, *_ = function(
        x, zeros, zeros, tensor(cell.kernel), tensor(cell.recurrent_kernel), bias
    )
    return sequence if lstm.return_sequences else last


@keras.saving.register_keras_serializable(package="tfaccel")
class FusedLSTM(keras.layers.Layer):
    """An `LSTM` or `Bidirectional(LSTM)` as TFLite's fused LSTM (export only).

    Computes what `layer` computes at inference on its own variables
    (nothing is copied), through functions the TFLite converter turns
    into `UNIDIRECTIONAL_SEQUENCE_LSTM` ops. Takes the layer's name, so
    the export report names the user's layer.

    Args:
        layer: the `keras.layers.LSTM` or `keras.layers.Bidirectional`
            around one, as checked by `fusable`.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(name=layer.name, **kwargs)
        self._source = layer
        if isinstance(layer, keras.layers.Bidirectional):
            self._lstms = [layer.forward_layer, layer.backward_layer]
        else:
            self._lstms = [layer]
        self._functions = [_lstm_function(lstm.go_backwards) for lstm in self._lstms]

    def build(self, input_shape):
        if not self._source.built:  # one made by `from_config`
            self._source.build(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return self._source.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.pop("name", None)  # the layer's own name
        return {**config, "layer": keras.layers.serialize(self._source)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.layers.deserialize(config.pop("layer"), custom_objects)
        return cls(layer, **config)

    def call(self, inputs, mask=None, training=None):
        # `mask` is always None (a masked LSTM is not fused) and `training`
        # changes nothing at inference: the node's own keywords pass through.
        outputs = [_run(lstm, f, inputs) for lstm, f in zip(self._lstms, self._functions)]
        if len(outputs) == 1:
            return outputs[0]
        y, y_rev = outputs
        layer = self._source
        if layer.return_sequences:
            y_rev = keras.ops.flip(y_rev, axis=1)
        if layer.merge_mode == "concat":
            return keras.ops.concatenate([y, y_rev], axis=-1)
        if layer.merge_mode == "sum":
            return y + y_rev
        if layer.merge_mode == "ave":
            return (y + y_rev) / 2
        if layer.merge_mode == "mul":
            return y * y_rev
        return [y, y_rev]


def _unfusable(lstm) -> str | None:
    """Why one LSTM layer cannot be fused (None: it can)."""
    if not isinstance(lstm, keras.layers.LSTM) or type(lstm.cell) is not keras.layers.LSTMCell:
        return "its cell is not keras.layers.LSTMCell"
    cell = lstm.cell
    if keras.activations.serialize(cell.activation) != "tanh" or (
        keras.activations.serialize(cell.recurrent_activation) != "sigmoid"
    ):
        return "TFLite's fused LSTM computes tanh/sigmoid activations only"
    if lstm.return_state:
        return "it returns its states (return_state=True)"
    if lstm.stateful:
        return "it is stateful"
    return None


def fusable(node) -> tuple[bool, str | None]:
    """`(is an LSTM, why it cannot be fused or None)` for one graph node."""
    layer = node.operation
    if not node.is_layer or node.is_model:
        return False, None
    if isinstance(layer, keras.layers.Bidirectional):
        if not isinstance(layer.forward_layer, keras.layers.LSTM):
            return False, None
        if layer.merge_mode not in _MERGES or layer.return_state:
            return True, "it returns its states (return_state=True)"
        inner = [layer.forward_layer, layer.backward_layer]
    elif isinstance(layer, keras.layers.LSTM):
        inner = [layer]
    else:
        return False, None
    for lstm in inner:
        reason = _unfusable(lstm)
        if reason:
            return True, reason
    if len(node.args) != 1 or any(
        value is not None for key, value in node.kwargs.items() if key != "training"
    ):
        return True, "it is called with a mask or an initial state"
    shape = tuple(node.inputs[0].shape)
    if len(shape) != 3 or shape[1] is None or shape[2] is None:
        return True, f"its number of timesteps is not fixed (input shape {shape})"
    return True, None


def _applies(model) -> bool:
    if not isinstance(model, keras.Model):
        return False
    try:
        read = graph.read(model)
    except ValueError:  # a subclassed model: exported through a functional view
        return False
    return any(fusable(node) == (True, None) for _, node in read.walk())


def fuse_lstm(model, notes: list[str]):
    """`model` rebuilt with each fusable LSTM as a `FusedLSTM`, batch size 1.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4)])
    >>> notes = []
    >>> fused = fuse_lstm(model, notes)
    >>> type(fused.layers[0]).__name__, fused.inputs[0].shape
    ('FusedLSTM', (1, 5, 3))

    Args:
        model: a Sequential or functional model.
        notes: the export report's notes; the fused layers, the batch size,
            the state the file keeps and each LSTM left unfused are noted.

    Returns:
        A new model computing the same function (on the same variables),
        whose inputs have a batch size of 1.
    """
    fused, left = [], []

    def plan(node, graph_):
        is_lstm, reason = fusable(node)
        if not is_lstm:
            return None
        layer = node.operation
        if reason is not None:
            left.append(f"'{layer.name}' ({reason})")
            return None
        count = 2 if isinstance(layer, keras.layers.Bidirectional) else 1
        fused.append(f"'{layer.name}' ({type(layer).__name__}, {count} op(s))")
        return graph.Replacement(FusedLSTM(layer))

    rebuilt = graph.rebuild(model, plan, batch_size=1 if _applies(model) else None)
    if left:
        notes.append(f"LSTM layers not fused (unrolled instead): {', '.join(left)}.")
    if not fused:
        return rebuilt
    notes.append(
        "Fused LSTM layers into TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM: "
        f"{', '.join(fused)}. The file's batch size is 1 (one sequence per "
        "invocation), and each fused LSTM keeps its final state in variable "
        "tensors: reset them before each independent sequence "
        "(Interpreter.reset_all_variables(); tfaccel's runners do), or pass "
        "fuse_lstm=False to unroll instead."
    )
    return rebuilt


def has_fused_lstm(model) -> bool:
    """Whether `model` (a prepared model) computes a `FusedLSTM`."""
    return any(isinstance(layer, FusedLSTM) for layer in graph.all_layers(model))


def without_cell_clip(data: bytes) -> tuple[bytes, int]:
    """The file `data` with no cell clip on its fused LSTM ops, and their count.

    The converter gives every LSTM it fuses a cell clip of 10 (the cell
    state is clamped to [-10, 10] at every step); a Keras LSTM clips
    nothing. On a 64-step Bidirectional LSTM classifier the clip alone put
    the float32 file 0.46 away from the Keras model (largest output error;
    4e-6 without it). A clip of 0 is "none" in TFLite's float and integer
    kernels. The float in each op's options table is overwritten in place:
    nothing else in the file moves.
    """
    from tfaccel.export.validate import _Buffer

    buf = _Buffer(data)
    model = buf.table(buf.read("<I", 0, "root offset"), "model")
    codes = [
        max(code.scalar(0, "<b", 0), code.scalar(3, "<i", 0))
        for code in model.tables(1, "operator_codes")
    ]
    out, count = bytearray(data), 0
    for subgraph in model.tables(2, "subgraphs"):
        for op in subgraph.tables(3, "operators"):
            if codes[op.scalar(0, "<I", 0)] != _SEQUENCE_LSTM:
                continue
            options = op.table(4, "options")
            pos = options._field(_CELL_CLIP) if options is not None else 0
            if pos and struct.unpack_from("<f", data, pos)[0] != 0.0:
                struct.pack_into("<f", out, pos, 0.0)
                count += 1
    return bytes(out), count


# After the float32 twin (20), before the unrolling of what is left (30).
register_export_step("fuse_lstm", _applies, fuse_lstm, order=25, option="fuse_lstm")
