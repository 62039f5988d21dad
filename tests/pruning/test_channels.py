"""PruneChannels and prune_channels: masks, fit, distribution, serialization."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny_models import make_cnn
from tfaccel import TfaccelWarning
from tfaccel.pruning.channels import PruneChannels, channel_fractions, prune_channels
from tfaccel.schedules import ConstantSparsity


def _compile(model, **kwargs):
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, PruneChannels)]


def test_prune_channels_wraps_and_fuses_batchnorm(cnn):
    pruned = prune_channels(cnn, schedule=0.5)
    wrappers = _wrappers(pruned)
    # Both convs are wrapped, the Dense producing logits (a model output) is not.
    convs = [x.name for x in cnn.layers if isinstance(x, keras.layers.Conv2D)]
    assert [w.layer.name for w in wrappers] == convs
    assert all(isinstance(w.norm, keras.layers.BatchNormalization) for w in wrappers)
    # The fused BNs are no longer separate nodes of the graph.
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in pruned.layers
    )


def test_masked_channels_are_exactly_zero_after_bn():
    conv = keras.layers.Conv2D(6, 3, use_bias=True)
    bn = keras.layers.BatchNormalization(beta_initializer="ones")
    wrapper = PruneChannels(conv, schedule=0.5, norm=bn)
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 2)).astype("float32")
    wrapper(x, training=True)
    mask = keras.ops.convert_to_numpy(wrapper.mask)
    assert mask.sum() == 3
    for training in (True, False):
        y = keras.ops.convert_to_numpy(wrapper(x, training=training))
        assert np.all(y[..., mask == 0] == 0.0)
        assert np.all(np.abs(y[..., mask == 1]).max(axis=(0, 1, 2)) > 0)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_mask_keeps_largest_filters(criterion):
    dense = keras.layers.Dense(5)
    wrapper = PruneChannels(dense, schedule=0.4, criterion=criterion)
    wrapper.build((None, 3))
    kernel = np.array(
        [[1.0, -4.0, 0.1, 2.0, 0.5], [1.0, 0.0, 0.1, -2.0, 0.5], [1, 0, 0, 0, 3]],
        "float32",
    )
    dense.kernel.assign(kernel)
    wrapper(np.ones((1, 3), "float32"), training=True)
    if criterion == "l1":
        scores = np.abs(kernel).sum(0)
    else:
        scores = np.sqrt((kernel**2).sum(0))
    expected = np.ones(5)
    expected[np.argsort(scores)[:2]] = 0  # round(0.4 * 5) = 2 lowest
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(wrapper.mask), expected)


def test_bn_gamma_criterion_uses_gamma():
    conv = keras.layers.Conv1D(4, 1, use_bias=False)
    bn = keras.layers.BatchNormalization()
    wrapper = PruneChannels(conv, schedule=0.5, criterion="bn_gamma", norm=bn)
    wrapper.build((None, 5, 2))
    bn.gamma.assign(np.array([0.5, -3.0, 0.1, 2.0], "float32"))
    wrapper(np.ones((1, 5, 2), "float32"), training=True)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(wrapper.mask), [0.0, 1.0, 0.0, 1.0]
    )


def test_exact_fraction_after_fit_with_xla_and_steps_per_execution(digits):
    x, y, _, _ = digits
    pruned = _compile(
        prune_channels(make_cnn(filters=(8, 10)), schedule=0.5),
        jit_compile=True,
        steps_per_execution=4,
    )
    pruned.fit(x, y, batch_size=100, epochs=2, verbose=0)
    # 8 * 0.5 = 4 and 10 * 0.5 = 5 channels masked, exactly.
    assert channel_fractions(pruned) == {
        "conv2d_channels": 0.5,
        "conv2d_1_channels": 0.5,
    }
    for wrapper in _wrappers(pruned):
        # The in-graph counter is exact without callbacks: 14 batches x 2.
        assert int(keras.ops.convert_to_numpy(wrapper.step)) == 28
        kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel)
        assert kernel.shape[-1] == wrapper.channels


def test_schedule_object_drives_fraction(digits):
    from tfaccel import schedules

    x, y, _, _ = digits
    schedule = schedules.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=0.75,
        begin_step=0,
        end_step=10,
        frequency=1,
    )
    pruned = _compile(prune_channels(make_cnn(), schedule=schedule))
    pruned.fit(x[:320], y[:320], batch_size=32, epochs=2, verbose=0)
    # 8 -> 6 masked, 16 -> 12 masked once the schedule ends.
    assert channel_fractions(pruned) == {
        "conv2d_channels": 0.75,
        "conv2d_1_channels": 0.75,
    }


def test_two_replicas_agree(digits, two_cpus):
    x, y, _, _ = digits
    with two_cpus.scope():
        pruned = _compile(prune_channels(make_cnn(), schedule=0.5))
    pruned.fit(x[:400], y[:400], batch_size=50, epochs=1, verbose=0)
    for wrapper in _wrappers(pruned):
        replicas = [
            v.numpy() for v in two_cpus.experimental_local_results(wrapper.mask.value)
        ]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
        assert (replicas[0] == 0).sum() == wrapper.channels // 2
        assert int(keras.ops.convert_to_numpy(wrapper.step)) == 8


def test_global_budget_masks_global_fraction(cnn):
    pruned = prune_channels(cnn, schedule=0.5, budget="global")
    pruned(np.zeros((1, 8, 8, 1), "float32"), training=True)
    masked = sum(
        (keras.ops.convert_to_numpy(w.mask) == 0).sum() for w in _wrappers(pruned)
    )
    assert masked == 12  # round(0.5 * (8 + 16))
    assert all(0 < f < 1 for f in channel_fractions(pruned).values())


def test_config_round_trip():
    wrapper = PruneChannels(
        keras.layers.Conv2D(4, 3, use_bias=False),
        schedule=0.25,
        criterion="bn_gamma",
        norm=keras.layers.BatchNormalization(),
        name="wrapped",
    )
    clone = PruneChannels.from_config(wrapper.get_config())
    assert clone.get_config() == wrapper.get_config()
    assert isinstance(clone.norm, keras.layers.BatchNormalization)
    # A float fraction is a real schedule: masks from step 0, every step.
    assert (clone.schedule, clone.criterion) == (
        ConstantSparsity(0.25, begin_step=0, frequency=1),
        "bn_gamma",
    )


def test_keras_save_load_restores_state(digits, tmp_path):
    x, y, _, _ = digits
    pruned = _compile(prune_channels(make_cnn(), schedule=0.5))
    pruned.fit(x[:200], y[:200], batch_size=50, epochs=1, verbose=0)
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x[:32], verbose=0), pruned.predict(x[:32], verbose=0), atol=1e-5
    )
    for a, b in zip(_wrappers(pruned), _wrappers(loaded)):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a.mask), keras.ops.convert_to_numpy(b.mask)
        )
        assert int(keras.ops.convert_to_numpy(b.step)) == 4


def test_invalid_arguments():
    with pytest.raises(ValueError, match="must be a Conv1D, Conv2D, Conv3D or Dense"):
        PruneChannels(keras.layers.DepthwiseConv2D(3))
    with pytest.raises(ValueError, match="`criterion` must be one of"):
        PruneChannels(keras.layers.Dense(3), criterion="l3")
    with pytest.raises(ValueError, match="criterion='bn_gamma' needs"):
        PruneChannels(keras.layers.Dense(3), criterion="bn_gamma")
    with pytest.raises(ValueError, match="map 0 to 0"):
        PruneChannels(keras.layers.Dense(3, activation="sigmoid"))
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\)"):
        PruneChannels(keras.layers.Dense(3), schedule=1.0)
    with pytest.raises(ValueError, match="budget"):
        prune_channels(make_cnn(), budget="model")


def test_prune_channels_names_layers_it_cannot_prune():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Reshape((-1,), name="reshape")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    # By default the conv is left dense, and a warning says why nothing was
    # pruned (NASNetMobile: every Conv2D reaches a SeparableConv2D)...
    with pytest.warns(TfaccelWarning, match=r"left every layer dense: 2 layers reach .*'conv': "
                      r"'reshape' \(Reshape\) is not a layer"):
        assert _wrappers(prune_channels(model)) == []
    # ...and naming it explains why it cannot be pruned.
    with pytest.raises(ValueError, match=r"'conv'.*'reshape' \(Reshape\)"):
        prune_channels(model, layers=["conv"])
    with pytest.raises(ValueError, match=r"'head'.*reaches a model output"):
        prune_channels(model, layers=["head"])
    # The same error as `prune` (one selector for both).
    with pytest.raises(ValueError, match=r"`layers` matched no layer.*\['nope'\]"):
        prune_channels(model, layers=["nope"])


def test_residual_producers_skipped_by_default():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    x = keras.layers.Add()([a, b])
    x = keras.layers.Conv2D(4, 1, name="c")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    assert [w.layer.name for w in _wrappers(prune_channels(model))] == ["c"]
    explicit = prune_channels(model, layers=["a", "b", "c"])
    assert [w.layer.name for w in _wrappers(explicit)] == ["a", "b", "c"]


def test_only_merged_producers_warn_that_they_are_grouped():
    inputs = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    with pytest.warns(TfaccelWarning, match=r"2 layers join their channels .*'a', 'b'.*"
                      r"name them in `layers`.*; 1 layer reaches .*'head'"):
        assert _wrappers(prune_channels(model)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # something was pruned: no warning
        assert len(_wrappers(prune_channels(model, layers=["a", "b"]))) == 2


def test_sequential_model_is_supported():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    pruned = prune_channels(model, schedule=0.25)
    assert [type(w.layer).__name__ for w in _wrappers(pruned)] == ["Dense"]
    out = pruned(np.ones((2, 6), "float32"), training=True)
    assert tuple(out.shape) == (2, 3)
    assert list(channel_fractions(pruned).values()) == [0.25]


def test_works_under_tf_function_with_xla():
    wrapper = PruneChannels(keras.layers.Dense(4), schedule=0.5)
    wrapper.build((None, 3))

    @tf.function(jit_compile=True)
    def step(x):
        return wrapper(x, training=True)

    step(tf.ones((2, 3)))
    step(tf.ones((2, 3)))
    assert int(keras.ops.convert_to_numpy(wrapper.step)) == 2
    assert (keras.ops.convert_to_numpy(wrapper.mask) == 0).sum() == 2


def test_original_model_is_left_untouched(cnn):
    before = [len(layer._inbound_nodes) for layer in cnn.layers]
    weights = [keras.ops.convert_to_numpy(w) for w in cnn.weights]
    pruned = prune_channels(cnn, schedule=0.5)
    assert [len(layer._inbound_nodes) for layer in cnn.layers] == before
    assert not {id(layer) for layer in cnn.layers} & {
        id(layer) for layer in pruned.layers
    }
    # The copy starts from the original weights (all channels on until fit)...
    ones = np.ones((1, 8, 8, 1), "float32")
    np.testing.assert_allclose(
        pruned(ones, training=False), cnn(ones, training=False), atol=1e-6
    )
    # ...but owns them.
    pruned.get_layer("conv2d_channels").layer.kernel.assign(
        np.zeros((3, 3, 1, 8), "float32")
    )
    for before_value, after in zip(weights, cnn.weights):
        np.testing.assert_array_equal(before_value, keras.ops.convert_to_numpy(after))


def test_prune_structure_channels_then_strip_shrinks(digits):
    """`prune(structure="channels")` + `strip_pruning` is the public path: a
    tfaccel schedule starting at step 0 masks from the first batch, the input
    model is untouched and the stripped model is smaller with equal outputs."""
    import tfaccel

    x, y, x_test, _ = digits
    model = make_cnn()
    before = [w.copy() for w in model.get_weights()]
    pruned = _compile(
        tfaccel.prune(
            model, tfaccel.schedules.ConstantSparsity(0.5, 1, frequency=1000),
            structure="channels",
        )
    )
    pruned.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert all(f == 0.5 for f in channel_fractions(pruned).values())
    small = tfaccel.strip_pruning(pruned)
    assert small.count_params() < model.count_params()
    np.testing.assert_allclose(
        small.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-4
    )
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_failed_call_leaves_model_graph_untouched(cnn):
    # Regression: a bad `layers` raised before the traced nodes were released,
    # so the model's layers looked shared to every later graph walk.
    counts = [len(layer._inbound_nodes) for layer in cnn.layers]
    with pytest.raises(ValueError):
        prune_channels(cnn, layers=[cnn.layers[-1].name])
    assert [len(layer._inbound_nodes) for layer in cnn.layers] == counts
    assert _wrappers(prune_channels(cnn, schedule=0.5))


def test_layers_as_one_name_or_classes(cnn):
    from tfaccel.pruning import prune

    conv = next(x.name for x in cnn.layers if isinstance(x, keras.layers.Conv2D))
    # Regression: a single name was split into characters.
    assert [w.layer.name for w in _wrappers(prune_channels(cnn, layers=conv))] == [conv]
    # Regression: `prune` documents layer classes; channels rejected them.
    pruned = prune(cnn, structure="channels", layers=[keras.layers.Conv2D])
    assert len(_wrappers(pruned)) == 2


def test_sparsity_counts_channel_pruned_kernels(cnn):
    from tfaccel.pruning import sparsity

    pruned = prune_channels(cnn, schedule=0.5)
    pruned(np.ones((1,) + tuple(cnn.input_shape[1:]), "float32"), training=True)
    result = sparsity(pruned)
    # Regression: the wrapped layers were missing from the result.
    for wrapper in _wrappers(pruned):
        assert result[f"{wrapper.layer.name}/kernel"] == pytest.approx(0.5)


def test_mask_ranks_float32_weights_under_mixed_precision():
    rng = np.random.default_rng(0)
    # Filter norms closer than bfloat16 can tell apart.
    kernel = (1.0 + 1e-4 * rng.permutation(16)[None, :]).astype("float32")
    kernel = np.repeat(kernel, 4, axis=0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        wrapper = PruneChannels(keras.layers.Dense(16), schedule=0.5)
        wrapper.build((None, 4))
        wrapper.layer.kernel.assign(kernel)
        wrapper(np.ones((2, 4), "float32"), training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    mask = keras.ops.convert_to_numpy(wrapper.mask)
    np.testing.assert_array_equal(mask, (kernel[0] >= np.median(kernel[0])).astype("float32"))


def test_strip_warns_before_channel_schedule_end_step(cnn):
    import tfaccel
    from tfaccel._warnings import TfaccelWarning

    pruned = tfaccel.prune(
        cnn, tfaccel.schedules.PolynomialDecay(0.0, 0.5, 0, 100, frequency=10),
        structure="channels",
    )
    pruned(np.ones((1,) + tuple(cnn.input_shape[1:]), "float32"), training=True)
    # Regression: the unstructured path warned, the channel path did not.
    with pytest.warns(TfaccelWarning, match=r"at step 1, end_step=100, target sparsity 0.5"):
        tfaccel.strip_pruning(pruned)


def test_pruning_wrapper_interface(digits):
    from tfaccel.pruning.base import PruningWrapper, pruning_wrappers
    from tfaccel.pruning.shrink import shrink

    x = digits[0][:16]
    pruned = prune_channels(make_cnn(), schedule=0.5)
    pruned(x, training=True)
    wrappers = pruning_wrappers(pruned)
    assert wrappers == _wrappers(pruned)
    wrapper = wrappers[0]
    assert isinstance(wrapper, PruningWrapper) and wrapper.structure == "channels"
    # The variable keeps its name ("step") and dtype: checkpoints still load.
    assert wrapper.step.path == "conv2d_channels/step"
    assert wrapper.step.dtype == "int64" and int(wrapper.step.numpy()) == 1
    assert wrapper.unfinished() is None  # a constant fraction: reached at once
    # strip(): the plain conv and its BN, masked channels exactly zero.
    conv, norm = wrapper.strip()
    assert type(conv) is keras.layers.Conv2D and conv.filters == wrapper.channels
    inputs = x  # the first wrapper reads the model input
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(norm(conv(inputs), training=False)),
        keras.ops.convert_to_numpy(wrapper(inputs, training=False)),
        atol=1e-5,
    )
    assert type(wrapper).strip_model.__func__ is not PruningWrapper.strip_model.__func__
    small = type(wrapper).strip_model(pruned)
    assert small.count_params() == shrink(pruned).count_params()
    assert small.count_params() < make_cnn().count_params()


def test_float_and_scale_arguments_become_schedules():
    from tfaccel.schedules import PolynomialDecay, ScaledSparsity

    dense = keras.layers.Dense(8)
    wrapper = PruneChannels(dense, schedule=0.5, scale=0.5)
    assert wrapper.schedule == ScaledSparsity(
        ConstantSparsity(0.5, begin_step=0, frequency=1), 0.5
    )
    wrapper(np.ones((1, 3), "float32"), training=True)
    assert (keras.ops.convert_to_numpy(wrapper.mask) == 0).sum() == 2
    # A config saved before schedules were objects still loads.
    old = wrapper.get_config() | {"schedule": 0.25, "scale": 1.0}
    expected = ConstantSparsity(0.25, 0, frequency=1)
    assert PruneChannels.from_config(old).schedule == expected
    decay = PolynomialDecay(0.0, 0.5, 0, 10, frequency=1)
    again = PruneChannels.from_config(PruneChannels(dense, schedule=decay).get_config())
    assert again.schedule == decay
    with pytest.raises(TypeError, match="PruningSchedule"):
        PruneChannels(dense, schedule="half")


def test_global_budget_gives_each_layer_a_constant_schedule(cnn):
    pruned = prune_channels(cnn, schedule=0.5, budget="global")
    schedules = [w.schedule for w in _wrappers(pruned)]
    assert all(type(s) is ConstantSparsity and s.frequency == 1 for s in schedules)
    counts = [
        round(s.target_sparsity * w.channels)
        for s, w in zip(schedules, _wrappers(pruned))
    ]
    assert sum(counts) == 12


def test_recurrent_layers_kept_whole_are_named_with_what_to_do():
    inputs = keras.Input((8, 32))
    x = keras.layers.Bidirectional(keras.layers.GRU(8), name="bigru")(inputs)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    with pytest.warns(TfaccelWarning, match=r"keeps every unit of the recurrent layers "
                      r"'bigru' \(Bidirectional\): .*tfaccel.prune\(model, structure="):
        pruned = prune_channels(model, 0.5)
    assert isinstance(pruned.get_layer("hidden_channels"), PruneChannels)  # the rest prunes
    with pytest.raises(ValueError, match=r"'bigru' \(Bidirectional\) cannot be channel-pruned.*"
                       r"Prune a recurrent layer's kernels"):
        prune_channels(model, 0.5, layers="bigru")
