"""LayerNormalization under QAT computes what its int8 TFLite ops compute."""

import keras
import numpy as np
import pytest

from tests.quantization import tflite_utils as tfl
from tests.quantization.conftest import compile_classifier
from tests.tiny_models import load_digits_split
from tfaccel.quantization import QuantizedLayerNormalization, quantize, quantize_kind

# The file's ops of one QuantizedLayerNormalization (center and scale).
LN_OPS = ["MEAN", "SUB", "MUL", "MEAN", "ADD", "RSQRT", "MUL", "MUL", "ADD"]
CONFIGS = {
    "default": {},
    "no_center": {"center": False},
    "no_scale": {"scale": False},
    "neither": {"center": False, "scale": False},
    "rms_scaling": {"rms_scaling": True},
}


@pytest.fixture(scope="module")
def rows():
    """Real digits as sequences: 8 tokens (rows) of 8 pixels."""
    return load_digits_split()[0][:128, :, :, 0]


def _model(**config):
    """Dense (a real, int8 input to the norm) then a LayerNormalization."""
    inputs = keras.Input((8, 8))
    x = keras.layers.Dense(12, name="dense")(inputs)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="ln", **config)(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(1)
    for w in model.weights:  # as after training: gamma != 1, beta and bias != 0
        centre = 1.0 if w.path.endswith("gamma") else 0.0
        if not w.path.endswith("kernel"):
            w.assign(rng.normal(centre, 0.3, w.shape).astype("float32"))
    return model


def _interpreter(qat):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_content=tfl.to_int8_tflite(qat),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    it.allocate_tensors()
    return it


def _real(it, tensor):
    scale, zero = tensor["quantization"]
    return (it.get_tensor(tensor["index"]).astype(np.float64) - zero) * scale


_FLOAT_OPS = {
    "MEAN": lambda a: a[0].mean(-1, keepdims=True),
    "SUB": lambda a: a[0] - a[1],
    "MUL": lambda a: a[0] * a[1],
    "ADD": lambda a: a[0] + a[1],
    "RSQRT": lambda a: 1.0 / np.sqrt(a[0]),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_op_is_int8_and_rounds_like_its_fake_quant(rows, name):
    qat = quantize(_model(**CONFIGS[name]), calibration_data=rows)
    layer = qat.get_layer("quant_ln")
    assert isinstance(layer, QuantizedLayerNormalization)
    it = _interpreter(qat)
    tfl.predict_int8(it, rows)
    ops = tfl.ops_with_tensors(it)
    assert tfl.float_ops(it) == []  # no float op in the body
    start = [op for op, _, _ in ops].index("MEAN")
    body = ops[start:]
    expected = list(LN_OPS)
    if not layer.center or layer.rms_scaling:
        expected.pop()
    if not layer.scale and not layer.rms_scaling:
        expected.pop(-2 if layer.center else -1)
    assert [op for op, _, _ in body] == expected
    stages = layer._stages()
    assert len(stages) == len(body)
    for stage, (op, ins, outs) in zip(stages, body, strict=True):
        # The file's tensor holds exactly the QAT quantizer's int8 grid ...
        quantizer = getattr(layer, f"{stage}_quantizer")
        low, high = float(quantizer.range_min), float(quantizer.range_max)
        scale, _ = outs[0]["quantization"]
        np.testing.assert_allclose(scale, (high - min(low, 0.0)) / 255, rtol=1e-5)
        # ... and the int8 kernel, on the file's own int8 inputs, gives the
        # float op rounded to that grid, within one step.
        args = [_real(it, t) for t in ins if t["dtype"] == np.int8]
        zero = outs[0]["quantization"][1]
        want = np.clip(np.round(_FLOAT_OPS[op](args) / scale) + zero, -128, 127)
        got = it.get_tensor(outs[0]["index"]).astype(np.float64)
        assert np.abs(got - want).max() <= 1.0, (stage, op)


@pytest.mark.parametrize("name", ["default", "neither"])
def test_qat_forward_matches_the_int8_file(rows, name):
    qat = quantize(_model(**CONFIGS[name]), calibration_data=rows)
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    scale = it.get_output_details()[0]["quantization"][0]
    steps = np.round(np.abs(qat.predict(rows, verbose=0) - tfl.predict_int8(it, rows)) / scale)
    # A chain of nine int8 ops: LiteRT's int8 MEAN rounds twice when 1/n
    # moves into its multiplier's shift (docs/transformers.md), so some
    # variances are one step up; RSQRT and the products carry that on.
    assert np.mean(steps <= 1.0) >= 0.99
    assert steps.max() <= 4.0


def test_qat_tracks_the_float_layer_and_trains_under_xla(rows):
    model = _model()
    qat = quantize(model, calibration_data=rows)
    float_out = model.predict(rows, verbose=0)
    scale = float(qat.get_layer("quant_ln").output_quantizer.range_max) / 127
    assert np.abs(qat.predict(rows, verbose=0) - float_out).mean() < 2 * scale
    labels = load_digits_split()[1][: len(rows)]
    head = keras.Sequential([qat, keras.layers.GlobalAveragePooling1D(),
                             keras.layers.Dense(10)])
    head.compile(  # XLA, as on TPU: RSQRT's top and the ranges compile
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    history = head.fit(rows, labels, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_keras_file_round_trip_gives_identical_predictions(rows, tmp_path):
    qat = quantize(_model(), calibration_data=rows)
    path = str(tmp_path / "ln.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("quant_ln"), QuantizedLayerNormalization)
    np.testing.assert_array_equal(
        loaded.predict(rows, verbose=0), qat.predict(rows, verbose=0)
    )
    for a, b in zip(loaded.weights, qat.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_ranges_stay_identical_across_mirrored_replicas(rows, two_cpus):
    labels = load_digits_split()[1][: len(rows)]
    with two_cpus.scope():
        base = _model()
        qat = quantize(base, calibration_data=rows)
        head = keras.Sequential([qat, keras.layers.GlobalAveragePooling1D(),
                                 keras.layers.Dense(10)])
        compile_classifier(head)
    before = {v.path: np.asarray(v) for v in head.variables}
    head.fit(rows, labels, batch_size=32, epochs=1, shuffle=False, verbose=0)
    layer = qat.get_layer("quant_ln")
    ranges = [v for v in layer.variables if v.path.endswith(("range_min", "range_max"))]
    assert len(ranges) == 2 * len(layer._stages())
    assert any(not np.array_equal(np.asarray(v), before[v.path]) for v in ranges)
    for variable in head.variables:
        first, second = (np.asarray(v) for v in variable.value.values)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)


def test_other_axes_are_refused_naming_the_layer():
    inputs = keras.Input((8, 8))
    model = keras.Model(inputs, keras.layers.LayerNormalization(axis=1, name="ln")(inputs))
    assert quantize_kind(model.get_layer("ln")) is None
    with pytest.raises(ValueError, match="'ln' of class LayerNormalization"):
        quantize(model)
    layer = QuantizedLayerNormalization(axis=1, name="tokens_norm")
    with pytest.raises(ValueError, match="'tokens_norm'.*Received: axis=1"):
        layer.build((None, 8, 8))


def test_skip_keeps_layer_normalization_float(rows):
    qat = quantize(_model(), calibration_data=rows, skip=keras.layers.LayerNormalization)
    assert type(qat.get_layer("ln")) is keras.layers.LayerNormalization
    ops = tfl.ops_with_tensors(tfl.interpreter(tfl.to_int8_tflite(qat)))
    (rsqrt,) = [ins for op, ins, _ in ops if op == "RSQRT"]
    assert rsqrt[0]["dtype"] == np.float32


def test_a_flat_token_gives_the_top_of_rsqrt_without_stretching_its_range():
    # Token 0 is constant: its variance is 0 in int8, where TFLite's RSQRT
    # returns its largest value. 1/sqrt(epsilon) must not set the range.
    x = np.random.default_rng(0).normal(size=(4, 6, 8)).astype("float32")
    x[:, 0, :] = 0.5
    layer = QuantizedLayerNormalization(epsilon=1e-6)
    y = np.asarray(layer(x, training=True))
    top = float(layer.inv_std_quantizer.range_max)
    assert 1.0 < top < 10.0
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[:, 0, :], y[0, 0, 0], atol=1e-6)


def test_mixed_precision_normalizes_in_float32(rows):
    x = rows[:16].astype("float16")
    reference = QuantizedLayerNormalization(dtype="float32")
    expected = np.asarray(reference(x.astype("float32"), training=True))
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = QuantizedLayerNormalization()
        y = layer(x, training=True)
    finally:
        keras.config.set_dtype_policy("float32")
    assert y.dtype == "float16"
    assert all(v.dtype == "float32" for v in layer.non_trainable_variables)
    np.testing.assert_allclose(np.asarray(y, "float32"), expected, atol=2e-2)


def test_a_fresh_layer_converts(rows):
    # gamma = 1 and beta = 0, as built: the converter drops `x * 1` and
    # `x + 0`, which must not leave int8 ranges it cannot reconcile.
    inputs = keras.Input((8, 8))
    x = keras.layers.Dense(32)(inputs)
    for _ in range(2):
        h = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        h = keras.layers.MultiHeadAttention(4, 8)(h, h)
        x = keras.layers.Add()([h, x])
        h = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        h = keras.layers.Dense(64, activation="gelu")(h)
        x = keras.layers.Add()([keras.layers.Dense(32)(h), x])
    outputs = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    qat = quantize(keras.Model(inputs, outputs), calibration_data=rows)
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    assert tfl.float_ops(it) == []


@pytest.mark.parametrize("name", ["default", "no_center", "neither"])
def test_post_training_int8_keeps_no_op_float(rows, name, tmp_path):
    # Keras' own form `x * inv + (beta - mean * inv)` leaves a float NEG in
    # the converter's post-training int8 file; export traces it centered.
    from tfaccel.export import export_tflite

    model = _model(**CONFIGS[name])
    keras_call = keras.layers.LayerNormalization.call
    report = export_tflite(model, tmp_path / "ln.tflite", quantization="int8",
                           representative_data=rows, verification_data=rows)
    assert report.float_ops == []
    assert "NEG" not in report.ops and "RSQRT" in report.ops
    assert report.mean_abs_error <= 0.05 * float(np.std(model.predict(rows, verbose=0)))
    assert keras.layers.LayerNormalization.call is keras_call  # restored


def test_the_export_form_equals_keras_on_any_axes(rows):
    from tfaccel.quantization.layernorm import centered_for_export

    x = rows[:16] * 3.0 + 1.0
    for axis in (-1, 1, [1, 2]):
        layer = keras.layers.LayerNormalization(axis=axis, epsilon=1e-5)
        layer.build(x.shape)
        rng = np.random.default_rng(0)
        for w in layer.weights:
            w.assign(rng.normal(1.0, 0.3, w.shape).astype("float32"))
        want = np.asarray(layer(x))
        with centered_for_export():
            got = np.asarray(layer(x))
        np.testing.assert_allclose(got, want, atol=2e-5)
