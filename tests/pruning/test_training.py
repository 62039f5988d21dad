"""Pruning inside `fit`: exact sparsity at end_step, XLA, restarts, replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny_models import make_cnn, make_mlp
from tfaccel.pruning import PruneLowMagnitude, prune, sparsity, strip_pruning
from tfaccel.schedules import ConstantSparsity, PolynomialDecay

BATCH = 64  # 1400 digits -> 22 steps per epoch
END = 40  # (END - begin) % FREQ != 0: tfmot would stop short of the target
FREQ = 15


def _compile(model, **kwargs):
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def _assert_exact(model, target):
    wrappers = _wrappers(model)
    assert wrappers
    expected = {}
    for wrapper in wrappers:
        for mask, (variable, value) in zip(wrapper.masks, wrapper.masked_weights()):
            k = round(target * value.size)
            assert int((mask.numpy() == 0).sum()) == k, variable.path
            assert int((value == 0).sum()) == k, variable.path
            expected.update(wrapper.get_sparsity())
    assert sparsity(model) == expected


@pytest.mark.parametrize(
    "schedule",
    [
        PolynomialDecay(0.0, 0.8, begin_step=0, end_step=END, frequency=FREQ),
        ConstantSparsity(0.7, begin_step=3, end_step=END, frequency=FREQ),
    ],
    ids=["polynomial", "constant"],
)
def test_fit_reaches_target_exactly_at_end_step(digits, schedule):
    x, y, _, _ = digits
    # At tfmot's last pruning step the polynomial is still short of its target.
    last_tfmot_step = schedule.begin_step + (END - schedule.begin_step) // FREQ * FREQ
    if isinstance(schedule, PolynomialDecay):
        assert float(schedule(last_tfmot_step)[1]) < 0.79
    model = _compile(prune(make_cnn(), schedule))
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)  # 44 steps, no callback
    assert all(int(w.pruning_step.numpy()) == 44 for w in _wrappers(model))
    _assert_exact(model, schedule.final_sparsity)


def test_exact_with_xla_and_steps_per_execution(digits):
    x, y, _, _ = digits
    schedule = PolynomialDecay(0.2, 0.8, begin_step=2, end_step=END, frequency=FREQ)
    model = _compile(prune(make_mlp(), schedule), jit_compile=True, steps_per_execution=4)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    # 22 steps per epoch with 4 steps per execution: the in-graph counter is exact.
    assert all(int(w.pruning_step.numpy()) == 44 for w in _wrappers(model))
    _assert_exact(model, 0.8)
    assert history.history["accuracy"][-1] > 0.7


def test_nm_pattern_holds_after_fit(digits):
    x, y, _, _ = digits
    schedule = ConstantSparsity(0.9, begin_step=0, end_step=30, frequency=11)
    model = _compile(prune(make_mlp(), schedule, structure="2:4"))
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    for wrapper in _wrappers(model):
        for (_, axis), (_, value) in zip(wrapper._pruned, wrapper.masked_weights()):
            assert axis == -2
            groups = np.moveaxis(value, 0, -1).reshape(-1, 4)
            # Exactly two non-zeros in each group of 4 input channels (the
            # schedule's sparsity value is not used for N:M).
            np.testing.assert_array_equal((groups != 0).sum(-1), 2)
    assert all(v == 0.5 for v in sparsity(model).values())


def test_pruned_weights_stay_pruned_and_get_no_gradient(digits):
    x, y, _, _ = digits
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=END, frequency=FREQ)
    model = _compile(prune(make_mlp(), schedule))
    previous = None
    for _ in range(3):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        masks = [m.numpy().copy() for w in _wrappers(model) for m in w.masks]
        if previous is not None:
            for old, new in zip(previous, masks):
                assert np.all(new[old == 0] == 0)  # no pruned weight came back
        previous = masks
    # Masked positions get a zero gradient; kept ones do not.
    wrapper = _wrappers(model)[0]
    with tf.GradientTape() as tape:
        out = wrapper(x[:8].reshape(8, -1), training=False)
        loss = keras.ops.sum(out**2)
    grad = tape.gradient(loss, wrapper.layer.kernel).numpy()
    mask = wrapper.masks[0].numpy()
    assert np.all(grad[mask == 0] == 0)
    assert np.any(grad[mask == 1] != 0)


def test_save_load_mid_training_keeps_step_and_masks(digits, tmp_path):
    x, y, _, _ = digits
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=END, frequency=FREQ)
    model = _compile(prune(make_cnn(), schedule))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # 22 steps: halfway
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    for old, new in zip(_wrappers(model), _wrappers(loaded)):
        assert isinstance(new, PruneLowMagnitude) and new.schedule == schedule
        assert int(new.pruning_step.numpy()) == 22
        for a, b in zip(old.masks, new.masks):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    mid = sparsity(loaded)
    assert mid == sparsity(model) and 0.3 < min(mid.values()) < 0.8
    np.testing.assert_allclose(
        model.predict(x[:32], verbose=0), loaded.predict(x[:32], verbose=0), atol=1e-6
    )
    loaded.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert all(int(w.pruning_step.numpy()) == 44 for w in _wrappers(loaded))
    _assert_exact(loaded, 0.8)


def test_wrapper_config_round_trip():
    schedule = ConstantSparsity(0.6, 1, 20, 3)
    wrapper = PruneLowMagnitude(keras.layers.Dense(8, name="d"), schedule, "2:4", name="w")
    clone = PruneLowMagnitude.from_config(wrapper.get_config())
    assert clone.schedule == schedule and clone.structure == "2:4"
    assert clone.name == "w" and clone.layer.get_config() == wrapper.layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapper))
    assert isinstance(restored, PruneLowMagnitude) and restored.schedule == schedule


def test_mirrored_replicas_agree(digits, two_cpus):
    x, y, _, _ = digits
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=20, frequency=FREQ)
    # An MLP: Keras' BatchNormalization moving statistics use
    # aggregation="none" and differ per replica, unrelated to pruning.
    with two_cpus.scope():
        model = _compile(prune(make_mlp(), schedule))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # 22 global steps
    for wrapper in _wrappers(model):
        steps = [int(v.numpy()) for v in wrapper.pruning_step.value.values]
        assert steps == [22, 22]
        for mask in wrapper.masks:
            replicas = [v.numpy() for v in mask.value.values]
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0], replicas[1])
    _assert_exact(model, 0.8)
    # The baked model predicts like the distributed wrapped one.
    plain = strip_pruning(model)
    np.testing.assert_allclose(
        model.predict(x[:64], verbose=0), plain.predict(x[:64], verbose=0), atol=1e-5
    )


def test_masks_rank_float32_weights_under_mixed_precision():
    from tfaccel.pruning import unstructured_mask

    # Magnitudes closer than bfloat16 can tell apart, in shuffled order.
    rng = np.random.default_rng(0)
    kernel = (1.0 + 1e-4 * rng.permutation(64)).reshape(8, 8).astype("float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = PruneLowMagnitude(keras.layers.Dense(8), ConstantSparsity(0.5, frequency=1))
        layer.build((None, 8))
        layer.layer.kernel.assign(kernel)
        layer(np.ones((2, 8), "float32"), training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    # Regression: the masks ranked the bfloat16 autocast, ties by index.
    np.testing.assert_array_equal(
        layer.masks[0].numpy(), unstructured_mask(kernel, 0.5).numpy()
    )


def test_activity_regularizer_loss_is_kept():
    from tfaccel.pruning import prune_channels

    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(4, activity_regularizer="l2", name="hidden"),
        keras.layers.Dense(2),
    ])
    x = np.ones((2, 4), "float32")
    model(x)
    expected = float(model.losses[0])
    # Regression: the substitution scope dropped the inner layer's losses.
    for pruned in (prune(model, ConstantSparsity(0.0)), prune_channels(model, 0.0)):
        pruned(x, training=True)
        assert [float(loss) for loss in pruned.losses] == pytest.approx([expected])


def test_a_traced_step_keeps_the_mask_update_as_one_if_op():
    # Steps that do not prune must not visit the mask update's ops: the
    # cond stays one `If` op (not lowered to Switch/Merge), and it still
    # prunes on the schedule's steps.
    wrapper = PruneLowMagnitude(keras.layers.Dense(8), ConstantSparsity(0.5, begin_step=2,
                                                                        frequency=3))
    x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    wrapper.build(x.shape)
    step = tf.function(lambda v: wrapper(v, training=True))
    graph = step.get_concrete_function(tf.TensorSpec(x.shape)).graph
    ifs = [op for op in graph.get_operations() if op.type in ("If", "StatelessIf")]
    assert len(ifs) == 1
    assert ifs[0].get_attr("_lower_using_switch_merge") is False
    assert not {"Switch", "Merge"} & {op.type for op in graph.get_operations()}
    zeros = []
    for _ in range(6):
        step(x)
        zeros.append(int((wrapper.masks[0].numpy() == 0).sum()))
    # Pruned at steps 2 and 5 only (begin 2, every 3 steps), 64 of 128.
    assert zeros == [0, 64, 64, 64, 64, 64]
    assert int(wrapper.pruning_step.numpy()) == 6
