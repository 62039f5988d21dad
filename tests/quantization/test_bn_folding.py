"""Batch-statistics BatchNorm folding (`bn_folding="batch"`, Jacob et al. 2018)."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tiny_models import make_cnn
from tfaccel.quantization import QuantizeWrapper, quantize
from tfaccel.quantization.quantizers import fake_quant_activation


def _pair(freeze=None, folding="batch"):
    """A batch-folding wrapper and a float Conv + BatchNorm with its weights."""
    conv = keras.layers.Conv2D(4, 3, bias_initializer="random_normal")
    bn = keras.layers.BatchNormalization(
        gamma_initializer="random_normal", beta_initializer="random_normal"
    )
    wrapper = QuantizeWrapper(
        conv, batch_norm=bn, bn_folding=folding, bn_freeze_step=freeze
    )
    x = _inputs()
    wrapper.build(x.shape)
    ref_conv = keras.layers.Conv2D(4, 3)
    ref_conv.build(x.shape)
    ref_conv.set_weights(conv.get_weights())
    ref_bn = keras.layers.BatchNormalization()
    ref_bn.build((None, 4, 4, 4))
    ref_bn.set_weights(bn.get_weights())
    return wrapper, ref_conv, ref_bn


def _inputs(seed=0, scale=5.0):
    rng = np.random.default_rng(seed)
    return (rng.random((16, 6, 6, 3)) * scale + 2.0).astype("float32")


def _copy(source, target):
    for name in ("layer", "batch_norm", "output_quantizer"):
        getattr(target, name).set_weights(getattr(source, name).get_weights())


def _step(wrapper):
    q = wrapper.output_quantizer
    return (float(q.range_max) - float(q.range_min)) / 255.0


def test_training_normalizes_with_batch_statistics_before_the_freeze():
    wrapper, ref_conv, ref_bn = _pair(freeze=3)
    for seed in range(3):
        x = _inputs(seed, scale=1e3 * (seed + 1))  # moving statistics lag far behind
        y = wrapper(x, training=True).numpy()
        q = wrapper.output_quantizer
        expected = fake_quant_activation(
            ref_bn(ref_conv(x), training=True), q.range_min, q.range_max
        ).numpy()
        # Rounding may land on the neighbouring level (weights are int8).
        assert np.max(np.abs(y - expected)) <= 1.01 * _step(wrapper), seed
        assert int(wrapper.bn_folding_step) == seed + 1
    # The moving statistics track the batch ones (of the int8-weight conv).
    np.testing.assert_allclose(
        wrapper.batch_norm.moving_mean.numpy(), ref_bn.moving_mean.numpy(), rtol=0.05
    )
    np.testing.assert_allclose(
        wrapper.batch_norm.moving_variance.numpy(),
        ref_bn.moving_variance.numpy(),
        rtol=0.05,
    )


def test_after_the_freeze_step_training_is_the_moving_fold_bit_for_bit():
    batch, _, _ = _pair(freeze=2)
    moving = QuantizeWrapper.from_config(
        {**batch.get_config(), "bn_folding": "moving", "bn_freeze_step": None}
    )
    moving.build(_inputs().shape)
    for seed in range(2):
        batch(_inputs(seed), training=True)
    _copy(batch, moving)
    assert int(batch.bn_folding_step) == 2
    for seed in range(2, 4):
        x = _inputs(seed)
        np.testing.assert_array_equal(
            batch(x, training=True).numpy(), moving(x, training=True).numpy()
        )
    # The moving statistics keep updating after the freeze, as in "moving".
    np.testing.assert_allclose(
        batch.batch_norm.moving_variance.numpy(),
        moving.batch_norm.moving_variance.numpy(),
        rtol=1e-5,
    )


def test_inference_is_the_moving_fold_in_both_modes():
    batch, _, _ = _pair(freeze=None)
    batch(_inputs(0, scale=50.0), training=True)  # moves statistics and ranges
    moving = QuantizeWrapper.from_config(
        {**batch.get_config(), "bn_folding": "moving", "bn_freeze_step": None}
    )
    moving.build(_inputs().shape)
    _copy(batch, moving)
    x = _inputs(1)
    np.testing.assert_array_equal(
        batch(x, training=False).numpy(), moving(x, training=False).numpy()
    )
    assert int(batch.bn_folding_step) == 1  # inference does not count


def test_keras_file_keeps_mode_and_step(tmp_path, digits):
    x = digits[0][:64]
    qat = quantize(make_cnn(), bn_freeze_step=5)
    wrappers = [w for w in qat.layers if isinstance(w, QuantizeWrapper)]
    folding = {w.name: w.bn_folding for w in wrappers}
    assert sorted(folding.values()) == ["batch", "batch", "moving"]  # Dense: no BN
    for _ in range(3):
        qat(x, training=True)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    for w in loaded.layers:
        if isinstance(w, QuantizeWrapper) and w.batch_norm is not None:
            assert (w.bn_folding, w.bn_freeze_step) == ("batch", 5)
            assert int(w.bn_folding_step) == 3
    np.testing.assert_array_equal(qat(x).numpy(), loaded(x).numpy())


def test_auto_keeps_the_moving_fold_for_a_trained_model(digits):
    model = make_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits[0][:64], digits[1][:64], epochs=1, verbose=0)
    qat = quantize(model)
    modes = {w.bn_folding for w in qat.layers if isinstance(w, QuantizeWrapper)}
    assert modes == {"moving"}
    assert not any(hasattr(w, "bn_folding_step") for w in qat.layers)
    forced = quantize(model, bn_folding="batch")
    assert sum(hasattr(w, "bn_folding_step") for w in forced.layers) == 2


def test_a_bias_the_batch_mean_removes_gets_a_zero_gradient_and_no_warning():
    # ResNet50's convolutions have a bias before their BatchNorm: with batch
    # folding (and no freeze step) it does not change the output, and Keras
    # warned "Gradients do not exist for variables [...]" naming each one.
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, bias_initializer="random_normal")(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    qat = quantize(keras.Model(inputs, outputs), bn_folding="batch")
    wrapper = next(layer for layer in qat.layers if isinstance(layer, QuantizeWrapper))
    bias = wrapper.layer.bias
    before = bias.numpy().copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(qat(_inputs(), training=True) ** 2)
    grad = tape.gradient(loss, bias)
    assert grad is not None and not np.any(grad.numpy())
    qat.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat.fit(_inputs(), np.ones((16, 2), "float32"), epochs=2, verbose=0)
    assert not [w for w in caught if "Gradients do not exist" in str(w.message)]
    np.testing.assert_array_equal(bias.numpy(), before)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bn_folding='float'"):
        quantize(make_cnn(), bn_folding="float")
    with pytest.raises(ValueError, match="bn_freeze_step=-1"):
        QuantizeWrapper(keras.layers.Dense(2), bn_freeze_step=-1)


def test_replicas_stay_identical(two_cpus):
    x = np.concatenate([_inputs(0, 1.0), _inputs(1, 100.0)])  # replicas differ
    with two_cpus.scope():
        wrapper, _, _ = _pair(freeze=None)

    @tf.function
    def step(batch):
        return wrapper(batch, training=True)

    dataset = two_cpus.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x).batch(32)
    )
    for batch in dataset:
        outputs = two_cpus.run(step, args=(batch,))
    for variable in (
        wrapper.batch_norm.moving_mean,
        wrapper.batch_norm.moving_variance,
        wrapper.bn_folding_step,
    ):
        values = [v.numpy() for v in variable.value.values]
        np.testing.assert_array_equal(values[0], values[1])
    assert int(wrapper.bn_folding_step.value.values[0]) == 1
    # Both replicas normalize with the moments of the whole batch.
    y = np.concatenate([o.numpy() for o in two_cpus.experimental_local_results(outputs)])
    assert abs(float(np.mean(y)) - float(np.mean(wrapper.batch_norm.beta.numpy()))) < 0.2


def test_backup_and_restore_brings_the_step_back(tmp_path, digits):
    x, y = digits[0][:128], digits[1][:128]

    def steps(model):
        return [int(w.bn_folding_step) for w in model.layers
                if hasattr(w, "bn_folding_step")]

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.saved = steps(self.model)
                raise RuntimeError("simulated crash")

    class Check(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.seen = steps(self.model)

    def model():
        qat = quantize(make_cnn(), bn_freeze_step=100)
        qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return qat

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    crash, check = Crash(), Check()
    with pytest.raises(RuntimeError, match="simulated crash"):
        model().fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[backup, crash])
    model().fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[backup, check])
    assert crash.saved == check.seen == [4, 4]  # 4 steps of the first epoch
