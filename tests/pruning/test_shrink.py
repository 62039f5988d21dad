"""shrink: the smaller plain model computes what the masked model computes."""

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn
from tfaccel.pruning.channels import PruneChannels, channel_fractions, prune_channels
from tfaccel.pruning.shrink import shrink, strip_channels


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, PruneChannels)]


def _mask_now(pruned, x):
    """One training-mode call computes the masks (as the first fit step does)."""
    pruned(x, training=True)


def _randomize_norms(model, seed=0):
    """Non-trivial BN statistics, so removed channels carry real constants."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        path = variable.path
        if "gamma" in path or "moving_variance" in path:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        elif "beta" in path or "moving_mean" in path:
            variable.assign(0.2 * rng.standard_normal(variable.shape).astype("float32"))


def _assert_same(a, b, x, atol=1e-4):
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(b(x, training=False)),
        keras.ops.convert_to_numpy(a(x, training=False)),
        atol=atol,
    )


def _cnn_params(f1, f2, units=10):
    # conv (no bias) + BN (4 vectors) per stage, Dense over an 8x8xf2 flatten.
    return 9 * 1 * f1 + 4 * f1 + 9 * f1 * f2 + 4 * f2 + 64 * f2 * units + units


def test_digits_cnn_shrinks_exactly(digits):
    x, y, _, _ = digits
    pruned = prune_channels(make_cnn(), schedule=0.5)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x[:300], y[:300], batch_size=50, epochs=1, verbose=0)
    _randomize_norms(pruned)
    small = shrink(pruned)
    assert not _wrappers(small)
    assert [layer.filters for layer in small.layers if hasattr(layer, "filters")] == [
        4,
        8,
    ]
    assert make_cnn().count_params() == _cnn_params(8, 16)
    assert small.count_params() == _cnn_params(4, 8)
    # Flatten ordering (position * C + channel) is respected by the Dense slice.
    _assert_same(pruned, small, x[:64])


def _residual_net():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    a = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="a")(h)
    a = keras.layers.BatchNormalization(name="a_bn")(a)
    a = keras.layers.ReLU()(a)
    b = keras.layers.Conv2D(8, 1, name="b")(a)
    r = keras.layers.Add(name="add")([h, b])
    c = keras.layers.Conv2D(6, 1, activation="relu", name="c")(r)
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(c)
    d = keras.layers.BatchNormalization(name="dw_bn")(d)
    d = keras.layers.ReLU(6.0)(d)
    x = keras.layers.Concatenate(name="concat")([r, d])
    x = keras.layers.Conv2D(12, 1, name="e")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="resnet")


def _residual_params(stem, a, c, e):
    return (
        (9 * stem + stem)  # stem conv
        + (9 * stem * a + 4 * a)  # a conv (no bias) + BN
        + (a * stem + stem)  # b: 1x1 conv back to the Add width
        + (stem * c + c)  # c
        + (9 * c + c + 4 * c)  # depthwise (bias) + its BN
        + ((stem + c) * e + e)  # e over the concatenation
        + (e * 10 + 10)  # head after global pooling
    )


def test_residual_net_with_add_concat_depthwise(digits):
    x = digits[0][:32]
    model = _residual_net()
    assert model.count_params() == _residual_params(8, 8, 6, 12)
    pruned = prune_channels(model, schedule=0.5)
    # Add members (stem, b) are left dense by default.
    assert sorted(w.layer.name for w in _wrappers(pruned)) == ["a", "c", "e"]
    _mask_now(pruned, x)
    _randomize_norms(pruned)
    # Make the removed channels positive constants after the depthwise BN and
    # ReLU6 (beta > 0, a non-zero depthwise bias): `e` must fold them in.
    pruned.get_layer("dw").bias.assign(np.full(6, 0.3, "float32"))
    pruned.get_layer("dw_bn").beta.assign(np.full(6, 0.5, "float32"))
    small = shrink(pruned)
    assert small.count_params() == _residual_params(8, 4, 3, 6)
    # The depthwise BN turns c's removed channels into constants that e absorbs.
    _assert_same(pruned, small, x)


@pytest.mark.parametrize("same_masks", [True, False])
def test_add_group_removed_together_or_not_at_all(digits, same_masks):
    x = digits[0][:32]
    pruned = prune_channels(_residual_net(), schedule=0.5, layers=["stem", "b"])
    _mask_now(pruned, x)
    stem, b = _wrappers(pruned)
    first = np.array([0, 1, 0, 1, 0, 1, 0, 1], "float32")
    stem.mask.assign(first)
    b.mask.assign(first if same_masks else 1.0 - first)
    small = shrink(pruned)
    removed = 4 if same_masks else 0
    assert small.get_layer("stem").filters == 8 - removed
    assert small.get_layer("b").filters == 8 - removed
    assert small.count_params() == _residual_params(8 - removed, 8, 6, 12)
    _assert_same(pruned, small, x)
    if not same_masks:
        # Kept-but-masked filters are zeroed, not left live.
        kernel = keras.ops.convert_to_numpy(small.get_layer("b").kernel)
        assert np.all(kernel[..., first == 1] == 0)


def test_strip_channels_keeps_shapes_and_outputs(digits):
    x = digits[0][:32]
    pruned = prune_channels(make_cnn(), schedule=0.5)
    _mask_now(pruned, x)
    _randomize_norms(pruned)
    plain = strip_channels(pruned)
    assert plain.count_params() == make_cnn().count_params()
    assert not _wrappers(plain)
    _assert_same(pruned, plain, x, atol=1e-5)


def test_shrunk_model_saves_loads_and_converts(digits, tmp_path):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    x = digits[0][:8]
    pruned = prune_channels(make_cnn(), schedule=0.5)
    _mask_now(pruned, x)
    small = shrink(pruned)
    path = str(tmp_path / "small.keras")
    small.save(path)
    loaded = keras.models.load_model(path)
    _assert_same(small, loaded, x, atol=1e-6)

    flat = tf.lite.TFLiteConverter.from_keras_model(small).convert()
    interpreter = Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    np.testing.assert_allclose(
        interpreter.get_tensor(out["index"]),
        keras.ops.convert_to_numpy(small(x, training=False)),
        atol=1e-4,
    )


def test_shrunk_model_can_be_quantized(digits):
    from tfaccel import quantization

    x = digits[0][:64]
    pruned = prune_channels(make_cnn(), schedule=0.5)
    _mask_now(pruned, x)
    small = shrink(pruned)
    qat = quantization.quantize(small, calibration_data=x)
    assert quantization.is_quantized(qat)
    y = keras.ops.convert_to_numpy(qat(x, training=False))
    assert y.shape == (64, 10) and np.all(np.isfinite(y))


def test_unshrinkable_graph_names_the_layers():
    inputs = keras.Input((8, 8, 1))
    wrapper = PruneChannels(keras.layers.Conv2D(4, 3), schedule=0.5, name="conv_p")
    x = wrapper(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    with pytest.raises(
        ValueError, match=r"'conv_p'.*'double' \(Lambda\) is not a layer"
    ):
        shrink(model)

    inputs = keras.Input((6,))
    outputs = PruneChannels(keras.layers.Dense(4), name="last")(inputs)
    with pytest.raises(ValueError, match=r"'last'.*reaches a model output"):
        shrink(keras.Model(inputs, outputs))


def test_after_fine_tune_accuracy_is_kept(digits):
    x, y, xt, yt = digits
    pruned = prune_channels(make_cnn(), schedule=0.5)
    pruned.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    pruned.fit(x, y, batch_size=32, epochs=4, verbose=0)
    assert channel_fractions(pruned) == {
        "conv2d_channels": 0.5,
        "conv2d_1_channels": 0.5,
    }
    small = shrink(pruned)
    small.compile(
        metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    accuracy = small.evaluate(xt, yt, verbose=0)[1]
    masked = pruned.evaluate(xt, yt, verbose=0)[1]
    assert accuracy == pytest.approx(masked, abs=1e-6)
    assert accuracy > 0.85


def _application_check(model, x, min_ratio):
    pruned = prune_channels(model, schedule=0.5)
    _mask_now(pruned, x)
    _randomize_norms(pruned)
    small = shrink(pruned)
    _assert_same(pruned, small, x, atol=1e-4)
    # Every wrapped layer lost half its filters; nothing else grew.
    for wrapper in _wrappers(pruned):
        assert small.get_layer(wrapper.layer.name).get_config()[
            "filters" if "filters" in wrapper.layer.get_config() else "units"
        ] == wrapper.channels - round(0.5 * wrapper.channels)
    assert small.count_params() < min_ratio * model.count_params()
    return pruned, small


@pytest.mark.slow
def test_mobilenet_v2_shrinks():
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classifier_activation=None
    )
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    pruned, small = _application_check(model, x, min_ratio=0.6)
    # Expand convs feed depthwise convs, which must shrink in step.
    expand = pruned.get_layer("block_1_expand_channels").channels
    assert small.get_layer("block_1_depthwise").kernel.shape[-2] == expand // 2


@pytest.mark.slow
def test_resnet50_shrinks():
    model = keras.applications.ResNet50(
        input_shape=(32, 32, 3), weights=None, classifier_activation=None
    )
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    pruned, small = _application_check(model, x, min_ratio=0.6)
    # Residual (Add) branches are left whole by default: conv3 keeps 256.
    assert small.get_layer("conv2_block1_3_conv").filters == 256
    assert small.get_layer("conv2_block1_1_conv").filters == 32


def test_unfoldable_constants_keep_the_group(digits):
    # c's removed channels become non-zero constants after dw/bn/relu; a 3x3
    # 'same' conv cannot absorb them exactly (zero padding at the borders),
    # so shrink keeps those channels (zeroed filters) instead.
    x = digits[0][:16]
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 1, activation="relu", name="c")(inputs)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.BatchNormalization(beta_initializer="ones", name="dw_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(3, 3, padding="same", name="k3")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    pruned = prune_channels(model, schedule=0.5, layers=["c"])
    _mask_now(pruned, x)
    small = shrink(pruned)
    assert small.get_layer("c").filters == 4
    mask = keras.ops.convert_to_numpy(pruned.get_layer("c_channels").mask)
    kernel = keras.ops.convert_to_numpy(small.get_layer("c").kernel)
    assert (mask == 0).sum() == 2 and np.all(kernel[..., mask == 0] == 0)
    _assert_same(pruned, small, x)


def test_wrapper_inside_nested_model():
    inner_in = keras.Input((6,))
    hidden = PruneChannels(keras.layers.Dense(4), schedule=0.5, name="inside")(inner_in)
    inner = keras.Model(inner_in, keras.layers.Dense(3)(hidden), name="inner")
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    x = np.random.default_rng(0).standard_normal((4, 6)).astype("float32")
    model(x, training=True)
    with pytest.raises(ValueError, match=r"'inside': it is inside a nested model"):
        shrink(model)
    # Unwrapping reaches inside nested models (masked filters zeroed).
    plain = strip_channels(model)
    nested = plain.get_layer("inner").layers
    assert not any(isinstance(layer, PruneChannels) for layer in nested)
    _assert_same(model, plain, x, atol=1e-6)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_separable_conv_drops_the_input_channels_it_reads(digits, padding):
    # NASNet and Xception feed their convolutions' channels into separable
    # convolutions: the depthwise filters of a removed channel and the
    # pointwise rows they feed (channel c, multiplier m: row c * M + m) go.
    x = digits[0][:64]
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.SeparableConv2D(6, 3, padding=padding, depth_multiplier=2,
                                     name="sep")(h)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    pruned = prune_channels(model, schedule=0.5)
    assert [w.layer.name for w in _wrappers(pruned)] == ["conv"]
    _mask_now(pruned, x)
    _randomize_norms(pruned)
    small = shrink(pruned)
    sep = small.get_layer("sep")
    assert tuple(sep.depthwise_kernel.shape) == (3, 3, 4, 2)
    assert tuple(sep.pointwise_kernel.shape) == (1, 1, 8, 6)
    _assert_same(pruned, small, x)
