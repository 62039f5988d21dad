"""quantize's graph rewriting, options, errors and serialization."""

import keras
import numpy as np
import pytest

from tests.quantization import tflite_utils as tfl
from tests.quantization.conftest import compile_classifier
from tests.tiny_models import make_cnn, make_mlp
from tfaccel.quantization import (
    ActivationQuantizer,
    QuantizedActivation,
    QuantizeWrapper,
    calibrate,
    is_quantized,
    quantize,
    quantize_kind,
    register_quantizable,
)


def _layers_of(model, cls):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, cls)
    ]


def test_cnn_graph_fuses_batch_norm_and_relu(cnn):
    qat = quantize(cnn)
    wrappers = _layers_of(qat, QuantizeWrapper)
    assert [w.weight_mode for w in wrappers] == [
        "per_channel",
        "per_channel",
        "per_tensor",
    ]
    assert [w.activation for w in wrappers] == ["relu", "relu", "linear"]
    assert all(w.batch_norm is not None for w in wrappers[:2])
    assert not _layers_of(qat, keras.layers.ReLU)
    assert not any(
        type(layer) is keras.layers.BatchNormalization for layer in qat.layers
    )
    assert is_quantized(qat) and not is_quantized(cnn)
    # The original model is untouched and the copy starts from its weights.
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    assert not is_quantized(cnn)
    assert np.allclose(wrappers[0].layer.kernel.numpy(), cnn.layers[1].kernel.numpy())
    assert qat(x).shape == (4, 10)


def test_sequential_mlp_and_activation_on_layer(digits):
    x_train = digits[0]
    model = make_mlp()
    qat = quantize(model, calibration_data=x_train[:128])
    wrappers = _layers_of(qat, QuantizeWrapper)
    assert [w.activation for w in wrappers] == ["relu", "linear"]
    assert tfl.float_ops(tfl.interpreter(tfl.to_int8_tflite(qat))) == []


def test_non_fusable_activations_become_quantized_activations(digits):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="swish")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="sigmoid")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    qat = quantize(keras.Model(inputs, outputs), calibration_data=digits[0][:64])
    names = [layer.activation for layer in _layers_of(qat, QuantizedActivation)]
    assert names == ["silu", "sigmoid", "softmax"]
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    assert tfl.float_ops(it) == []
    ops = {name for name, _, _ in tfl.ops_with_tensors(it)}
    assert {"LOGISTIC", "MUL", "SOFTMAX", "MEAN"} <= ops


def test_skip_keeps_layer_float_and_converter_dequantizes_around_it(cnn, digits):
    dense_name = cnn.layers[-1].name
    conv_names = [x.name for x in cnn.layers if isinstance(x, keras.layers.Conv2D)]
    qat = quantize(cnn, skip=[dense_name], calibration_data=digits[0][:64])
    assert [w.layer.name for w in _layers_of(qat, QuantizeWrapper)] == conv_names
    dense = qat.get_layer(dense_name)
    assert type(dense) is keras.layers.Dense
    it = tfl.interpreter(tfl.to_int8_tflite(qat, int8_io=False))
    ops = tfl.ops_with_tensors(it)
    (fc,) = [op for op in ops if op[0] == "FULLY_CONNECTED"]
    assert fc[1][0]["dtype"] == np.float32
    assert "DEQUANTIZE" in {name for name, _, _ in ops}
    # Skipping by class and by predicate selects the same layer.
    for skip in (keras.layers.Dense, lambda layer: layer.name == dense_name):
        assert len(_layers_of(quantize(cnn, skip=skip), QuantizeWrapper)) == 2


def test_unsupported_layer_raises_naming_layer_class_and_skip():
    inputs = keras.Input((8, 8))
    x = keras.layers.LayerNormalization(axis=1, name="norm")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"'norm' of class LayerNormalization.*skip="):
        quantize(model)
    qat = quantize(model, skip="norm")
    assert type(qat.get_layer("norm")) is keras.layers.LayerNormalization


def test_registry_lookup_and_registration():
    assert quantize_kind(keras.layers.Conv2D(2, 3)) == "per_channel"
    assert (
        quantize_kind(keras.layers.UpSampling2D(interpolation="nearest"))
        == "passthrough"
    )
    assert (
        quantize_kind(keras.layers.UpSampling2D(interpolation="bilinear")) == "output"
    )
    assert quantize_kind(keras.layers.LSTM(4)) is None

    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    assert quantize_kind(Scale()) is None
    register_quantizable(Scale, "output")
    assert quantize_kind(Scale()) == "output"
    with pytest.raises(ValueError, match="`rule` must be one of"):
        register_quantizable(Scale, "bogus")
    with pytest.raises(TypeError, match="`layer_cls` must be"):
        register_quantizable(int, "output")


def test_nested_functional_model_is_quantized(digits):
    inner_in = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, use_bias=False)(inner_in)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    inner = keras.Model(inner_in, h, name="backbone")
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inner(inputs)))
    model = keras.Model(inputs, outputs)
    qat = quantize(model, calibration_data=digits[0][:64])
    wrappers = _layers_of(qat, QuantizeWrapper)
    assert [w.activation for w in wrappers] == ["relu", "linear"]
    x = digits[2][:16]
    assert np.abs(qat.predict(x, verbose=0) - model.predict(x, verbose=0)).max() < 0.1
    # A nested Sequential is rewritten the same way.
    head = keras.Sequential(
        [
            keras.Input((6, 6, 4)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="relu"),
        ]
    )
    outputs = head(inner(inputs))
    qat = quantize(keras.Model(inputs, outputs), calibration_data=digits[0][:64])
    assert [w.activation for w in _layers_of(qat, QuantizeWrapper)] == ["relu", "relu"]
    assert tfl.float_ops(tfl.interpreter(tfl.to_int8_tflite(qat))) == []


def test_wrong_arguments_raise():
    with pytest.raises(ValueError, match="`activation` must be one of"):
        QuantizeWrapper(keras.layers.Dense(2), activation="tanh")
    with pytest.raises(ValueError, match="`ema_decay` must be in"):
        ActivationQuantizer(ema_decay=1.5)
    with pytest.raises(ValueError, match="`skip` entries must be"):
        quantize(make_cnn(), skip=[3])
    with pytest.raises(ValueError, match="no activation quantizers"):
        calibrate(make_cnn(), np.zeros((2, 8, 8, 1), "float32"))


@pytest.mark.parametrize(
    "layer",
    [
        ActivationQuantizer(ema_decay=0.9),
        ActivationQuantizer(fixed_range=(0.0, 255 / 256)),
        QuantizedActivation("silu"),
        QuantizeWrapper(
            keras.layers.Conv2D(3, 3),
            batch_norm=keras.layers.BatchNormalization(),
            activation="relu6",
            preserve_sparsity=True,
        ),
    ],
    ids=["quantizer", "fixed", "activation", "wrapper"],
)
def test_layers_round_trip_through_config(layer):
    x = np.random.default_rng(0).random((2, 5, 5, 3)).astype("float32")
    layer(x, training=True)
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(x)
    assert len(clone.weights) == len(layer.weights)
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer)


def test_keras_file_round_trip_keeps_ranges_and_outputs(tmp_path, trained_cnn, digits):
    x_train, y_train, x_test, _ = digits
    qat = compile_classifier(quantize(trained_cnn, calibration_data=x_train))
    qat.fit(x_train[:256], y_train[:256], epochs=1, batch_size=64, verbose=0)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    ranges = {
        q.path: (float(q.range_min), float(q.range_max))
        for q in _layers_of(qat, ActivationQuantizer)
    }
    loaded_ranges = {
        q.path: (float(q.range_min), float(q.range_max))
        for q in _layers_of(loaded, ActivationQuantizer)
    }
    assert loaded_ranges == ranges
    assert all(hi > lo for lo, hi in ranges.values())
    assert is_quantized(loaded)
    np.testing.assert_allclose(
        loaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0), atol=1e-5
    )


def test_ema_ranges_follow_batches_and_contain_zero():
    q = ActivationQuantizer(ema_decay=0.5)
    q(np.array([[1.0, 3.0]], "float32"), training=True)  # first batch: taken directly
    assert (float(q.range_min), float(q.range_max)) == (0.0, 3.0)
    q(np.array([[-2.0, 1.0]], "float32"), training=True)
    assert (float(q.range_min), float(q.range_max)) == (-1.0, 2.0)
    q(np.array([[5.0]], "float32"))  # inference: range fixed
    assert (float(q.range_min), float(q.range_max)) == (-1.0, 2.0)


def test_mirrored_fit_keeps_ranges_identical_across_replicas(
    two_cpus, trained_cnn_weights, digits
):
    x_train, y_train, _, _ = digits
    with two_cpus.scope():
        model = make_cnn()
        model.set_weights(trained_cnn_weights)
        qat = compile_classifier(quantize(model, calibration_data=x_train[:256]))
    qat.fit(x_train[:512], y_train[:512], epochs=1, batch_size=64, verbose=0)
    quantizers = _layers_of(qat, ActivationQuantizer)
    assert quantizers
    for q in quantizers:
        for var in (q.range_min, q.range_max):
            values = [v.numpy() for v in var.value.values]
            assert len(values) == 2
            assert values[0] == values[1]
    bn = _layers_of(qat, QuantizeWrapper)[0].batch_norm
    means = [v.numpy() for v in bn.moving_mean.value.values]
    np.testing.assert_array_equal(means[0], means[1])


def test_calibration_accepts_datasets_and_batches_like_arrays(cnn, digits):
    import tensorflow as tf

    x, y = digits[0][:128], digits[1][:128]
    qat = quantize(cnn)

    def ranges():
        return [
            (float(q.range_min), float(q.range_max))
            for q in _layers_of(qat, ActivationQuantizer)
        ]

    calibrate(qat, x, batch_size=32)
    from_array = ranges()
    assert all(hi > lo for lo, hi in from_array)
    calibrate(qat, tf.data.Dataset.from_tensor_slices((x, y)).batch(32))
    np.testing.assert_allclose(ranges(), from_array, rtol=1e-6)
    calibrate(qat, [x[:64], x[64:]])
    np.testing.assert_allclose(ranges(), from_array, rtol=1e-6)
    with pytest.raises(ValueError, match="`calibration_data` is empty"):
        calibrate(qat, [])


def test_public_api():
    import tfaccel.quantization as q

    assert set(q.__all__) == {
        "ActivationQuantizer",
        "QuantizeAffineWrapper",
        "QuantizeWrapper",
        "PrunedQuantizeWrapper",
        "QuantizedActivation",
        "QuantizedEinsumDense",
        "QuantizedEmbedding",
        "QuantizedLayerNormalization",
        "QuantizedMultiHeadAttention",
        "QuantizedSublayers",
        "SameScaleQuantizer",
        "quantize_sublayers",
        "register_lazy",
        "register_qat_layer",
        "calibrate",
        "fake_quant_activation",
        "fake_quant_weight",
        "is_quantized",
        "quantize",
        "quantize_kind",
        "register_quantizable",
    }
    assert all(hasattr(q, name) for name in q.__all__)


def test_backup_and_restore_brings_ranges_back(tmp_path, cnn, digits):
    x, y = digits[0][:256], digits[1][:256]

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.saved = [
                    float(q.range_max)
                    for q in _layers_of(self.model, ActivationQuantizer)
                ]
                raise RuntimeError("simulated crash")

    class Check(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.seen = [
                float(q.range_max) for q in _layers_of(self.model, ActivationQuantizer)
            ]

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = compile_classifier(quantize(cnn, calibration_data=x))
    crash = Crash()
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[backup, crash])
    second = compile_classifier(quantize(cnn))  # fresh: ranges all [0, 0]
    check = Check()
    second.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[backup, check])
    assert check.seen == crash.saved
    assert all(v > 0 for v in crash.saved)


def test_frozen_batch_norm_keeps_its_moving_statistics():
    bn = keras.layers.BatchNormalization()
    bn.trainable = False
    wrapper = QuantizeWrapper(keras.layers.Conv2D(4, 3), batch_norm=bn)
    x = np.random.default_rng(0).random((2, 5, 5, 2)).astype("float32") * 5
    wrapper(x, training=True)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), np.zeros(4))
    np.testing.assert_array_equal(bn.moving_variance.numpy(), np.ones(4))
    bn.trainable = True
    wrapper(x, training=True)
    assert np.any(bn.moving_mean.numpy() != 0.0)


def test_skip_accepts_layers_and_whole_nested_models():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, name="first")
    model = keras.Model(inputs, keras.layers.Dense(2)(dense(inputs)))
    for skip in (dense, [dense]):
        qat = quantize(model, skip=skip)
        assert type(qat.get_layer("first")) is keras.layers.Dense
        assert len(_layers_of(qat, QuantizeWrapper)) == 1
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3)], name="inner"
    )
    outer_in = keras.Input((4,))
    model = keras.Model(outer_in, keras.layers.Dense(2)(inner(outer_in)))
    qat = quantize(model, skip="inner")
    assert not is_quantized(qat.get_layer("inner"))
    assert len(_layers_of(qat, QuantizeWrapper)) == 1  # only the outer Dense
    x = np.random.default_rng(0).random((3, 4)).astype("float32")
    np.testing.assert_allclose(qat.get_layer("inner")(x), inner(x), atol=1e-6)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="`calibration_batch_size` must be a positive"):
        quantize(make_mlp(), calibration_data=np.zeros((2, 8, 8, 1)), calibration_batch_size=0)
    qat = quantize(make_mlp())
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive.*=0"):
        calibrate(qat, np.zeros((2, 8, 8, 1), "float32"), batch_size=0)


def test_activity_regularizer_of_the_wrapped_layer_reaches_the_loss():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(2, activity_regularizer="l2")
    model = keras.Model(inputs, dense(inputs))
    qat = quantize(model, calibration_data=np.ones((3, 4), "float32"))
    x = np.random.default_rng(0).random((3, 4)).astype("float32")
    qat(x)
    assert len(qat.losses) == 1
    model(x)
    np.testing.assert_allclose(qat.losses[0], model.losses[0], rtol=0.05)
