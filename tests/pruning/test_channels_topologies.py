"""Channel pruning on any Keras 3 graph: operation nodes, keyword calls,
shared layers, nested models, MobileNetV3 and a keras.io-style block.

For each: `tfaccel.prune(structure="channels")`, a short fit, then
`tfaccel.strip_pruning` gives a smaller model with the masked model's
outputs, and the pruned model survives a `.keras` round trip. Layers whose
channels reach something channel pruning cannot slice are left dense, and
naming them explains why (the message names the op in the way).
"""

import keras
import numpy as np
import pytest

import tfaccel
from tfaccel.pruning.channel_graph import ChannelGraph
from tfaccel.pruning.channels import PruneChannels, channel_fractions, prune_channels

L = keras.layers


def _wrapped(model):
    return sorted(
        layer.layer.name for layer in model.layers if isinstance(layer, PruneChannels)
    )


def _digits_like(digits, shape, count=32):
    """Real digits resized to `shape` (rows of a digit for sequence models)."""
    x, y = digits[0][:count], digits[1][:count]
    if len(shape) == 2:
        return x[..., 0], y
    height, width, channels = shape
    x = np.kron(x[..., 0], np.ones((height // 8, width // 8), "float32"))
    return np.repeat(x[..., None], channels, axis=-1), y


def _prune_fit_strip(model, digits, tmp_path, **prune_kwargs):
    """prune -> 2 steps of fit -> strip; checks outputs, size, .keras."""
    x, y = _digits_like(digits, model.input_shape[1:])
    pruned = tfaccel.prune(model, structure="channels", **prune_kwargs)
    # Eager steps: tracing a MobileNetV3 train step costs ~10x the steps.
    pruned.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    pruned.fit(x, y, batch_size=len(x) // 2, epochs=1, verbose=0)
    fractions = channel_fractions(pruned)
    assert fractions and all(f > 0 for f in fractions.values())
    small = tfaccel.strip_pruning(pruned)
    assert not _wrapped(small)
    assert small.count_params() < model.count_params()
    expected = keras.ops.convert_to_numpy(pruned(x, training=False))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x, training=False)), expected, atol=1e-4
    )
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)), expected, atol=1e-6
    )
    assert channel_fractions(loaded) == fractions
    return pruned, small


def _operation_net():
    """Hard-swish and a sigmoid gate written with operators and keras.ops."""
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    x = x * (keras.ops.relu6(x + 3.0) * (1.0 / 6.0))
    gate = L.Conv2D(8, 1, name="gate")(x)
    h = L.Conv2D(8, 1, name="b")(x)
    h = h * keras.ops.sigmoid(gate)
    # Removed channels of `c` become 1.0 here: `d` folds them into its bias.
    h = keras.ops.relu(L.Conv2D(6, 3, padding="same", name="c")(h)) + 1.0
    h = L.Conv2D(6, 1, name="d")(h)
    h = keras.ops.mean(h, axis=(1, 2))
    return keras.Model(inputs, L.Dense(10, name="head")(h), name="ops_net")


def test_operation_nodes(digits, tmp_path):
    model = _operation_net()
    analysis = ChannelGraph(model)
    # `x * gate` joins b and gate into one group; `mean` blocks d.
    assert analysis.reasons(model.get_layer("b")) == []
    assert analysis.group_members(model.get_layer("b"))[0] == {
        id(model.get_layer("gate"))
    }
    with pytest.raises(
        ValueError,
        match=r"'d'.*'mean' \(keras.ops Mean\) is an operation tfaccel cannot reason",
    ):
        prune_channels(model, layers=["d"])
    pruned, small = _prune_fit_strip(model, digits, tmp_path)
    assert _wrapped(pruned) == ["a", "c"]
    assert small.get_layer("a").filters == 4 and small.get_layer("c").filters == 3
    assert small.get_layer("d").kernel.shape[-2] == 3
    # The merge group is pruned when both members are selected.
    both, small = _prune_fit_strip(model, digits, tmp_path, layers=["b", "gate"])
    assert _wrapped(both) == ["b", "gate"]
    assert small.get_layer("b").filters + small.get_layer("gate").filters < 16


def test_keyword_called_attention(digits, tmp_path):
    inputs = keras.Input((8, 8))
    x = L.Dense(16, name="proj")(inputs)
    query = L.Dense(16, name="q")(x)
    h = L.MultiHeadAttention(2, 8, name="mha")(query=query, value=x)
    h = L.Dense(32, activation="relu", name="ff")(h)
    h = L.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, L.Dense(10, name="head")(h))
    with pytest.raises(
        ValueError, match=r"'proj'.*'mha' \(MultiHeadAttention\) is not a layer"
    ):
        prune_channels(model, layers=["proj"])
    pruned, small = _prune_fit_strip(model, digits, tmp_path)
    assert _wrapped(pruned) == ["ff"]
    assert small.get_layer("ff").units == 16


def test_keras_io_block(digits, tmp_path):
    inputs = keras.Input((8, 8))
    x = L.Dense(8, name="embed")(inputs)
    x = L.LayerNormalization(name="norm_1")(x + inputs)
    h = L.Dense(32, activation="relu", name="ff_1")(x)
    h = L.Dense(8, name="ff_2")(h)
    x = L.LayerNormalization(name="norm_2")(x + h)
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, L.Dense(10, name="head")(x))
    with pytest.raises(ValueError, match=r"'embed'.*'norm_1' \(LayerNormalization\)"):
        prune_channels(model, layers=["embed"])
    pruned, small = _prune_fit_strip(model, digits, tmp_path)
    assert _wrapped(pruned) == ["ff_1"]
    assert small.get_layer("ff_1").units == 16
    assert small.get_layer("ff_2").kernel.shape == (16, 8)


def test_shared_layer_is_left_dense(digits, tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", name="first")(inputs)
    shared = L.Conv2D(4, 1, activation="relu", name="shared")
    x = L.Conv2D(6, 1, activation="relu", name="last")(shared(shared(x)))
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10, name="head")(x))
    for name in ("first", "shared"):
        with pytest.raises(ValueError, match=r"'shared' \(Conv2D\) is a shared layer"):
            prune_channels(model, layers=[name])
    pruned, small = _prune_fit_strip(model, digits, tmp_path)
    assert _wrapped(pruned) == ["last"]
    assert small.get_layer("shared") is not None


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_nested_model_blocks_its_inputs(digits, tmp_path, kind):
    inner_layers = [L.Conv2D(6, 1, name="inner_conv"), L.ReLU()]
    if kind == "sequential":
        inner = keras.Sequential([keras.Input((8, 8, 4)), *inner_layers], name="inner")
    else:
        inner_in = keras.Input((8, 8, 4))
        x = inner_in
        for layer in inner_layers:
            x = layer(x)
        inner = keras.Model(inner_in, x, name="inner")
    inputs = keras.Input((8, 8, 1))
    x = inner(L.Conv2D(4, 3, padding="same", name="outer")(inputs))
    x = L.Conv2D(6, 1, activation="relu", name="after")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(10, name="head")(x))
    with pytest.raises(ValueError, match=r"'outer'.*'inner' .* is a nested model"):
        prune_channels(model, layers=["outer"])
    with pytest.raises(ValueError, match=r"'inner_conv' is inside a nested model"):
        prune_channels(model, layers=["inner_conv"])
    pruned, small = _prune_fit_strip(model, digits, tmp_path)
    assert _wrapped(pruned) == ["after"]
    assert small.get_layer("after").filters == 3


@pytest.mark.slow
@pytest.mark.parametrize("size", ["Small", "Large"])
def test_mobilenet_v3(digits, tmp_path, size):
    application = getattr(keras.applications, f"MobileNetV3{size}")
    model = application(
        input_shape=(96, 96, 3), weights=None, classifier_activation=None
    )
    pruned, small = _prune_fit_strip(model, digits, tmp_path)
    # Convs whose channels meet another producer's (residual Adds and
    # squeeze-and-excitation gates) are left dense by default.
    assert "expanded_conv_3_expand" not in _wrapped(pruned)
    assert small.count_params() < 0.75 * model.count_params()
    if size == "Small":
        # Selected together, the expand conv and its SE gate conv (hard
        # sigmoid written as `relu6(x + 3) * (1 / 6)`) shrink together.
        group = ["expanded_conv_3_expand", "expanded_conv_3_squeeze_excite_conv_1"]
        pruned, small = _prune_fit_strip(model, digits, tmp_path, layers=group)
        assert _wrapped(pruned) == group
        assert small.get_layer(group[0]).filters < model.get_layer(group[0]).filters
