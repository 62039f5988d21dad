"""The private Keras names tfaccel reads, each pinned by a test.

`tfaccel/graph/_keras.py` and `tfaccel/_substitute.py` are the only modules
that touch Keras internals. These tests fail the day Keras renames or
reshapes one of them, pointing at the one place to fix.
"""

import keras
import numpy as np

from tfaccel import _substitute
from tfaccel.graph import _keras, read


def _model():
    inputs = keras.Input((4,), name="x")
    shared = keras.layers.Dense(4, name="shared")
    y = shared(inputs)
    z = shared(y + 1.0)
    return keras.Model(inputs, {"out": z}, name="m"), shared


def test_nodes_by_depth_and_inbound_nodes():
    model, shared = _model()
    nodes = [n for ns in _keras.nodes_by_depth(model).values() for n in ns]
    assert {type(n.operation).__name__ for n in nodes if n.operation is not None} >= {
        "Dense",
        "Add",
    }
    node = next(n for n in nodes if n.operation is shared)
    # Node.arguments keeps args and kwargs; input_tensors/outputs are lists.
    assert hasattr(node.arguments, "args") and hasattr(node.arguments, "kwargs")
    assert isinstance(node.input_tensors, list) and isinstance(node.outputs, list)
    assert len(_keras.inbound_nodes(shared)) == 2


def test_producer_inputs_and_outputs_struct():
    model, shared = _model()
    operation, node_index, tensor_index = _keras.producer(model.outputs[0])
    assert operation is shared and node_index == 1 and tensor_index == 0
    assert _keras.producer(model.inputs[0])[0].name == "x"
    assert isinstance(_keras.outputs_struct(model), dict)
    assert _keras.inputs_struct(model) is not None


def test_flatten_layers_and_is_functional():
    model, shared = _model()
    assert shared in _keras.flatten_layers(model)
    assert _keras.is_functional(model)
    assert _keras.is_functional(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not _keras.is_functional(Subclassed())


def test_read_sees_what_keras_records():
    model, shared = _model()
    graph = read(model)
    assert [n.name for n in graph.nodes] == ["shared", "add", "shared"]
    assert [n.call_index for n in graph.nodes] == [0, 0, 1]


def test_stateless_scope_and_autocast_scope():
    variable = keras.Variable(np.ones((2,), "float32"))
    with _substitute.substitute([(variable, variable * 0.0)]):
        assert float(keras.ops.sum(variable)) == 0.0
    assert _substitute._current_scope() is None
    with _substitute.full_precision():
        pass


def test_multi_head_attention_internals_read_by_head_pruning_and_qat():
    """`pruning/heads.py` and `quantization/attention.py` read these names of
    `keras.layers.MultiHeadAttention`; QuantizedMultiHeadAttention overrides
    `_compute_attention` with this signature."""
    import inspect

    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, dropout=0.1)
    x = np.ones((1, 4, 6), "float32")
    mha(x, x)
    for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
        assert isinstance(getattr(mha, name), keras.layers.EinsumDense), name
    assert mha._query_dense.kernel.shape == (6, 2, 3)
    assert mha._output_dense.kernel.shape == (2, 3, 6)
    assert mha._use_gate is False and mha._dropout == 0.1
    assert isinstance(mha._dropout_layer, keras.layers.Dropout)
    assert isinstance(mha._dot_product_equation, str)
    assert isinstance(mha._combine_equation, str)
    assert float(mha._inverse_sqrt_key_dim) == np.float32(1 / np.sqrt(3))
    assert callable(mha._masked_softmax) and callable(mha._compute_causal_mask)
    params = list(inspect.signature(mha._compute_attention).parameters)
    assert params == ["query", "key", "value", "attention_mask", "training",
                      "return_attention_scores", "use_causal_mask"], params
