"""tfaccel.graph: reading, rebuilding and selecting on any Keras 3 graph."""

import keras
import numpy as np
import pytest

from tfaccel import graph
from tfaccel.graph import IDENTITY, OUTPUT, Replacement

L = keras.layers


def _keyword_model():
    inputs = keras.Input((5, 8))
    mha = L.MultiHeadAttention(2, 4, name="mha")
    x = mha(query=inputs, value=inputs, key=inputs)
    x = L.Dropout(0.5, name="drop")(x + inputs)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def test_read_lists_operations_keywords_and_consumers():
    model = _keyword_model()
    g = graph.read(model)
    assert [(n.name, n.is_layer) for n in g.nodes] == [
        ("mha", True), ("add", False), ("drop", True), ("head", True)
    ]
    mha = g.nodes[0]
    assert set(mha.kwargs) >= {"query", "value", "key"} and not mha.args
    assert len(mha.inputs) == 3
    assert g.consumers(g.nodes[-1]) == [OUTPUT]
    assert g.only_consumer(g.nodes[1]) is g.nodes[2]


def test_rebuild_copies_weights_and_keeps_keyword_calls():
    model = _keyword_model()
    x = np.random.default_rng(0).random((2, 5, 8), dtype="float32")
    copy = graph.rebuild(model)
    assert copy is not model and copy.get_layer("mha") is not model.get_layer("mha")
    np.testing.assert_allclose(copy(x), model(x), rtol=1e-6)


def test_rebuild_identity_and_after():
    model = _keyword_model()
    x = np.random.default_rng(0).random((2, 5, 8), dtype="float32")

    def plan(node, g):
        if node.name == "drop":
            return IDENTITY
        if node.name == "head":
            new = graph.copy_layer(node.operation)
            return Replacement(new, after=[L.Activation("relu")], weights=[(node.operation, new)])
        return None

    new = graph.rebuild(model, plan)
    assert "drop" not in [layer.name for layer in new.layers]
    np.testing.assert_allclose(new(x), np.maximum(model(x), 0.0), rtol=1e-5, atol=1e-6)


def test_rebuild_keeps_sequential_and_shared_layers():
    seq = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2)])
    assert isinstance(graph.rebuild(seq), keras.Sequential)
    inputs = keras.Input((4,))
    shared = L.Dense(4)
    model = keras.Model(inputs, shared(shared(inputs)))
    new = graph.rebuild(model)
    dense = [layer for layer in new.layers if isinstance(layer, L.Dense)]
    assert len(dense) == 1  # still one layer, called twice
    x = np.ones((1, 4), "float32")
    np.testing.assert_allclose(new(x), model(x), rtol=1e-6)


def test_rebuild_nested_model_with_plan():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="inner_dense")], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="outer")(inner(inputs)))
    seen = []
    graph.rebuild(model, lambda node, g: seen.append(node.name))
    assert seen == ["inner", "inner_dense", "outer"]


def test_subclassed_model_is_a_clear_error():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model has no graph.*Received: model of type Net"):
        graph.read(Net())


def test_selector_forms_and_errors():
    dense = L.Dense(2, name="d")
    assert graph.selector(None)(dense) is False
    assert graph.selector("d")(dense)
    assert graph.selector(dense)(L.Dense(2, name="d"))  # by name
    assert graph.selector(L.Dense)(dense)
    assert graph.selector(lambda layer: layer.units == 2)(dense)
    with pytest.raises(TypeError, match=r"`skip` must be None.*Received: skip=5"):
        graph.selector(5, "skip")
    with pytest.raises(ValueError, match=r"`layers` entries.*Received entry: 3"):
        graph.selector(["d", 3])
    with pytest.raises(ValueError, match=r"matched no layer of model 'm' for the names \['x'\]"):
        graph.selector(["d", "x"]).check_names([dense], "m")


def test_unbuilt_sequential_reads_as_a_chain_and_is_pruned():
    import tfaccel

    model = keras.Sequential([L.Dense(4, name="d1"), L.Dense(2, name="d2")])
    g = graph.read(model)
    assert not g.built and [n.name for n in g.nodes] == ["d1", "d2"]
    pruned = tfaccel.prune(model, tfaccel.schedules.ConstantSparsity(0.5, 0, frequency=1))
    assert [type(layer).__name__ for layer in pruned.layers] == ["PruneLowMagnitude"] * 2
    pruned(np.ones((2, 8), "float32"), training=True)
    assert set(tfaccel.sparsity(pruned).values()) == {0.5}
    with pytest.raises(ValueError, match="must be built with a known input shape"):
        tfaccel.quantize(model)
