"""One `fit` for pruning and QAT: `quantize(prune(model))` keeps pruning."""

import warnings

import keras
import numpy as np
import pytest

import tfaccel
from tests.quantization import tflite_utils as tfl
from tests.quantization.conftest import compile_classifier
from tests.tiny_models import make_cnn, make_mlp
from tfaccel import TfaccelWarning
from tfaccel.pruning import PruneLowMagnitude, pruning_wrappers
from tfaccel.quantization import QuantizeWrapper
from tfaccel.quantization.pruned import PrunedQuantizeWrapper
from tfaccel.quantization.pruned_plans import prune_quantized
from tfaccel.schedules import ConstantSparsity, PolynomialDecay

TARGET = 0.8
BATCH = 64


def _kernel_zeros(content):
    """Zero fraction of each CONV_2D / FULLY_CONNECTED int8 weight in a file."""
    it = tfl.interpreter(content)
    return [
        (name, it.get_tensor(ins[1]["index"]))
        for name, ins, _ in tfl.ops_with_tensors(it)
        if name in tfl.KERNEL_OPS
    ]


def test_one_fit_reaches_the_target_and_the_int8_file_has_it(trained_cnn, digits, tmp_path):
    x, y, xt, _ = digits
    x, y = x[:640], y[:640]
    total = 3 * len(x) // BATCH  # 30 steps
    schedule = PolynomialDecay(0.0, TARGET, begin_step=0, end_step=20, frequency=2)
    qat = tfaccel.quantize(tfaccel.prune(trained_cnn, schedule), calibration_data=x[:64])
    wrappers = pruning_wrappers(qat)
    assert len(wrappers) == 3
    assert all(type(w) is PrunedQuantizeWrapper for w in wrappers)
    assert all(w.unfinished() for w in wrappers)  # nothing pruned yet
    history = compile_classifier(qat, lr=1e-3).fit(
        x, y, batch_size=BATCH, epochs=3, verbose=0,
        callbacks=[tfaccel.callbacks.PruningSummary()],
    )
    logged = {k: v[-1] for k, v in history.history.items() if k.startswith("sparsity/")}
    assert len(logged) == 3 and all(v == pytest.approx(TARGET, abs=0.006) for v in logged.values())
    assert [w.steps_done() for w in wrappers] == [total] * 3
    assert all(w.unfinished() is None for w in wrappers)
    values = tfaccel.sparsity(qat)
    assert sorted(values) == sorted(tfaccel.sparsity(trained_cnn))  # same keys
    for key, value in values.items():
        assert value == pytest.approx(TARGET, abs=0.006), key
    # The mask is applied before BatchNorm folding and fake quantization:
    # the kernel the int8 op holds is zero exactly where the mask is.
    for w in wrappers:
        mask = np.asarray(w.masks[0]) == 0
        effective = np.asarray(w.quantized_kernel())
        assert np.all(effective[mask] == 0.0)
        assert np.count_nonzero(effective) >= 0.95 * (~mask).sum()
    assert qat.evaluate(xt, digits[3], verbose=0)[1] > 0.85

    # Export: pruning stripped (fixed masks), a sparse int8 file that agrees.
    report = tfaccel.export_tflite(
        qat, tmp_path / "one_fit.tflite", "int8", verification_data=xt
    )
    assert report.int8_coverage == 1.0
    assert report.agreement >= 0.99
    assert any("PrunedQuantizeWrapper" in note for note in report.notes)
    kernels = _kernel_zeros((tmp_path / "one_fit.tflite").read_bytes())
    assert len(kernels) == 3
    for (_, kernel), w in zip(kernels, wrappers):
        assert np.mean(kernel == 0) == pytest.approx(TARGET, abs=0.006)
        assert (kernel == 0).sum() == (np.asarray(w.masks[0]) == 0).sum()


def test_a_pruned_away_filter_keeps_the_file_in_agreement(trained_cnn, digits):
    """An all-zero output channel: its int8 bias must still fit in int32."""
    x, _, xt, _ = digits
    conv = trained_cnn.layers[1]
    kernel = conv.kernel.numpy()
    kernel[..., 0] = 0.0  # the first filter pruned away
    conv.kernel.assign(kernel)
    qat = tfaccel.quantize(trained_cnn, calibration_data=x[:256])
    it = tfl.interpreter(tfl.to_int8_tflite(qat, int8_io=False))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], xt.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], xt)
    it.invoke()
    logits = it.get_tensor(out["index"])
    expected = qat.predict(xt, verbose=0)
    assert np.mean(logits.argmax(-1) == expected.argmax(-1)) >= 0.99
    assert np.abs(logits - expected).max() < 0.5


def test_steps_and_masks_match_prune_low_magnitude(digits):
    """Same weights, same calls: the QAT wrapper prunes like PruneLowMagnitude."""
    x = digits[0][:32].reshape(32, -1)
    schedule = PolynomialDecay(0.0, 0.75, begin_step=2, end_step=9, frequency=3)
    dense = keras.layers.Dense(16, name="d")
    dense.build((None, 64))
    pruned = PruneLowMagnitude(dense, schedule)
    qat = PrunedQuantizeWrapper(keras.layers.Dense(16, name="d"), schedule=schedule)
    pruned(x[:1])
    qat(x[:1])
    qat.layer.set_weights(dense.get_weights())
    for step in range(1, 12):
        pruned(x, training=True)
        qat(x, training=True)
        assert qat.steps_done() == pruned.steps_done() == step
        np.testing.assert_array_equal(np.asarray(qat.masks[0]), np.asarray(pruned.masks[0]))
        assert qat.sparsity() == pruned.sparsity()
        assert (qat.unfinished() is None) == (pruned.unfinished() is None)
    assert qat.sparsity()["d/kernel"] == 0.75


def test_two_four_pattern_in_one_fit_and_in_the_file(digits, tmp_path):
    x, y = digits[0][:320], digits[1][:320]
    schedule = ConstantSparsity(0.5, begin_step=1, end_step=5, frequency=1)
    model = tfaccel.prune(make_mlp((64,)), schedule, structure="2:4")
    qat = compile_classifier(tfaccel.quantize(model, calibration_data=x[:64]))
    wrappers = pruning_wrappers(qat)
    assert [w.structure for w in wrappers] == ["2:4", "2:4"]
    qat.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    for w in wrappers:
        kernel = np.asarray(w.quantized_kernel())  # (in, out): groups along in
        groups = (kernel.T.reshape(kernel.shape[1], -1, 4) != 0).sum(-1)
        assert groups.max() <= 2 and groups.mean() > 1.9
    content = tfl.to_int8_tflite(tfaccel.strip_pruning(qat))
    for _, kernel in _kernel_zeros(content):  # TFLite FC weights are (out, in)
        assert ((kernel.reshape(kernel.shape[0], -1, 4) != 0).sum(-1) <= 2).all()


def test_keras_file_round_trip_mid_schedule(digits, tmp_path):
    x, y = digits[0][:256], digits[1][:256]
    schedule = PolynomialDecay(0.0, TARGET, begin_step=0, end_step=16, frequency=2)
    qat = compile_classifier(tfaccel.quantize(tfaccel.prune(make_cnn(), schedule)))
    qat.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # 4 of 16 steps
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert [type(w) for w in pruning_wrappers(loaded)] == [PrunedQuantizeWrapper] * 3
    for a, b in zip(qat.variables, loaded.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    # Both continue identically to the end of the schedule.
    for model in (qat, loaded):
        model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(pruning_wrappers(qat), pruning_wrappers(loaded)):
        np.testing.assert_array_equal(np.asarray(a.masks[0]), np.asarray(b.masks[0]))
    assert tfaccel.sparsity(loaded) == pytest.approx(
        dict.fromkeys(tfaccel.sparsity(loaded), TARGET), abs=0.006
    )


def test_xla_and_steps_per_execution_count_every_step(digits):
    x, y = digits[0][:320], digits[1][:320]
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=8, frequency=1)
    qat = tfaccel.quantize(tfaccel.prune(make_cnn(), schedule), calibration_data=x[:64])
    qat.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
        steps_per_execution=3,
    )
    qat.fit(x, y, batch_size=32, epochs=1, verbose=0)  # 10 steps
    assert [w.steps_done() for w in pruning_wrappers(qat)] == [10] * 3
    for value in tfaccel.sparsity(qat).values():
        assert value == pytest.approx(0.5, abs=0.006)


def test_strip_before_the_end_warns_and_after_keeps_the_masks(digits):
    x, y = digits[0][:128], digits[1][:128]
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, frequency=1)
    qat = compile_classifier(tfaccel.quantize(tfaccel.prune(make_cnn(), schedule)))
    with pytest.warns(TfaccelWarning, match="quant_conv2d.*end_step=4"):
        tfaccel.strip_pruning(qat)
    qat.fit(x, y, batch_size=32, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TfaccelWarning)
        plain = tfaccel.strip_pruning(qat)
    stripped = [layer for layer in plain.layers if isinstance(layer, QuantizeWrapper)]
    assert len(stripped) == 3
    assert all(type(w) is QuantizeWrapper and w.preserve_sparsity for w in stripped)
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6
    )
    plain.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for w in stripped:
        assert np.mean(np.asarray(w.quantized_kernel()) == 0) >= 0.5 - 0.006


def test_a_finished_schedule_is_stripped_into_fixed_masks(digits):
    x, y = digits[0][:128], digits[1][:128]
    pruned = compile_classifier(
        tfaccel.prune(make_cnn(), ConstantSparsity(0.5, begin_step=1, end_step=2))
    )
    pruned.fit(x, y, batch_size=32, epochs=1, verbose=0)
    qat = tfaccel.quantize(pruned)
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert all(type(w) is QuantizeWrapper and w.preserve_sparsity for w in wrappers)
    assert not pruning_wrappers(qat)


def test_pruned_layer_kept_float_warns_naming_it(digits):
    pruned = tfaccel.prune(make_cnn(), ConstantSparsity(0.5))
    dense = [w.name for w in pruning_wrappers(pruned) if "dense" in w.name]
    with pytest.warns(TfaccelWarning, match=f"cannot continue inside QAT.*{dense[0]!r}"):
        qat = tfaccel.quantize(pruned, skip=dense)
    assert len(pruning_wrappers(qat)) == 2  # the convolutions keep pruning


def test_unfinished_channel_pruning_raises():
    pruned = tfaccel.prune(make_cnn(), ConstantSparsity(0.5), structure="channels")
    with pytest.raises(ValueError, match="end of channel pruning.*strip_pruning"):
        tfaccel.quantize(pruned)


def test_prune_of_a_quantized_model_prunes_inside_qat_or_says_why_not():
    qat = tfaccel.quantize(tfaccel.prune(make_cnn(), ConstantSparsity(0.5)))
    with pytest.raises(ValueError, match=r"\['quant_conv2d', .*\] are already pruned"):
        tfaccel.prune(qat)
    # A QAT model's kernels are pruned inside QAT, not silently left dense.
    pruned = tfaccel.prune(tfaccel.quantize(make_cnn()), ConstantSparsity(0.5))
    wrappers = pruning_wrappers(pruned)
    assert len(wrappers) == 3
    assert all(isinstance(w, PrunedQuantizeWrapper) for w in wrappers)
    with pytest.raises(ValueError, match="prune channels before `quantize`"):
        tfaccel.prune(tfaccel.quantize(make_cnn()), structure="channels")
    with pytest.raises(ValueError, match="allocation='erk'"):
        tfaccel.prune(tfaccel.quantize(make_cnn()), allocation="erk")


def test_pruning_options_cannot_mix_with_fixed_masks():
    with pytest.raises(ValueError, match="preserve_sparsity"):
        PrunedQuantizeWrapper(
            keras.layers.Dense(2), ConstantSparsity(0.5), preserve_sparsity=True
        )


def _depthwise_cnn():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_depthwise_under_mixed_precision_in_one_fit(digits, tmp_path):
    x, y, xt, _ = digits
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        schedule = ConstantSparsity(0.5, begin_step=1, end_step=15, frequency=5)
        qat = tfaccel.quantize(tfaccel.prune(_depthwise_cnn(), schedule), x[:64])
        compile_classifier(qat).fit(x[:640], y[:640], batch_size=32, epochs=1, verbose=0)
        assert all(v == 0.5 for v in tfaccel.sparsity(qat).values())
        report = tfaccel.export_tflite(qat, tmp_path / "dw.tflite", "int8",
                                       verification_data=xt)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert report.ops["DEPTHWISE_CONV_2D"] == {"int8": 1}
    assert report.int8_coverage == 1.0 and report.agreement >= 0.99
    assert sorted(report.tensor_sparsity.values()) == [0.5, 0.5, 0.5]


def test_pruning_a_quantized_model_trains_like_quantizing_a_pruned_one(trained_cnn, digits):
    x, y = digits[0][:320], digits[1][:320]
    schedule = PolynomialDecay(0.0, 0.6, begin_step=0, end_step=8, frequency=2)
    qat = tfaccel.quantize(trained_cnn, calibration_data=x[:64])
    after = prune_quantized(qat, schedule, layers=[keras.layers.Conv2D])
    assert [type(w) for w in pruning_wrappers(after)] == [PrunedQuantizeWrapper] * 2
    np.testing.assert_allclose(after.predict(x, verbose=0), qat.predict(x, verbose=0))
    before = tfaccel.quantize(
        tfaccel.prune(trained_cnn, schedule, layers=keras.layers.Conv2D),
        calibration_data=x[:64],
    )
    for model in (after, before):
        keras.utils.set_random_seed(0)
        compile_classifier(model).fit(x, y, batch_size=32, epochs=1, shuffle=False,
                                      verbose=0)
    assert tfaccel.sparsity(after) == tfaccel.sparsity(before)
    for a, b in zip(pruning_wrappers(after), pruning_wrappers(before)):
        np.testing.assert_array_equal(np.asarray(a.masks[0]), np.asarray(b.masks[0]))
    with pytest.raises(ValueError, match="already pruned"):
        prune_quantized(after)
    with pytest.raises(ValueError, match="prune channels before `quantize`"):
        prune_quantized(qat, structure="channels")


def test_unfinished_schedule_on_a_layer_qat_lowers_into_several_ops_warns():
    # Conv1D becomes Reshape + CONV_2D + Reshape in QAT: its schedule cannot
    # follow the kernel there, so quantize says so instead of dropping it.
    inputs = keras.Input((16, 4))
    x = keras.layers.Conv1D(8, 3, name="conv1d")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    pruned = tfaccel.prune(model, PolynomialDecay(0.0, 0.5, 0, 100, frequency=10))
    with pytest.warns(TfaccelWarning, match=r"pruning cannot continue inside QAT.*'conv1d'"):
        qat = tfaccel.quantize(pruned)
    # The Dense keeps its schedule; the Conv1D is an ordinary QAT layer.
    assert [w.name for w in pruning_wrappers(qat)] == ["quant_" + model.layers[-1].name]
