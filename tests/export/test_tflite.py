"""export_tflite: each quantization mode, verified, written atomically."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfaccel.export import ExportReport, VerificationError, export_tflite


@pytest.fixture(scope="module")
def exports(trained_cnn, digits, tmp_path_factory):
    """The trained CNN exported once in each mode: {mode: ExportReport}."""
    x_train, y_train, x_test, _ = digits
    out = tmp_path_factory.mktemp("exports")
    calibration = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32)
    reports = {}
    for mode in (None, "float16", "dynamic", "int8"):
        reports[mode] = export_tflite(
            trained_cnn,
            out / f"{mode}.tflite",
            quantization=mode,
            representative_data=calibration if mode == "int8" else None,
            verification_data=x_test,
            max_samples=300,
        )
    return reports


def _run(path, x):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()
    return next(iter(runner(**{name: x}).values()))


def test_float32_matches_keras(exports, trained_cnn, digits):
    report = exports[None]
    assert isinstance(report, ExportReport)
    assert report.quantization == "float32"
    assert report.num_samples == 300  # capped by max_samples
    assert report.agreement == 1.0
    assert report.max_abs_error < 1e-4
    assert report.ops["CONV_2D"] == {"float32": 2}
    assert report.ops["FULLY_CONNECTED"] == {"float32": 1}
    assert report.int8_coverage == 0.0
    assert report.bytes == os.path.getsize(report.path)
    assert report.conversion_seconds > 0
    # The figures are honest: an independent run of the file agrees.
    x = digits[2][:50]
    np.testing.assert_allclose(
        _run(report.path, x), trained_cnn.predict(x, verbose=0), atol=1e-4
    )


def test_float16_stores_half_weights(exports):
    report = exports["float16"]
    assert report.agreement >= 0.98
    assert 0 < report.max_abs_error < 0.05
    assert report.ops["DEQUANTIZE"] == {"float16": 6}
    assert report.ops["CONV_2D"] == {"float32": 2}
    assert report.bytes < 0.7 * exports[None].bytes


def test_dynamic_range_has_hybrid_ops(exports):
    report = exports["dynamic"]
    assert report.agreement >= 0.98
    hybrid = sum(
        by_dtype.get("float32/int8", 0)
        for op, by_dtype in report.ops.items()
        if op in ("CONV_2D", "FULLY_CONNECTED")
    )
    assert hybrid >= 2  # the 8-filter first conv is too small to quantize
    assert report.int8_coverage == 0.0
    assert report.bytes < 0.5 * exports[None].bytes


def test_int8_post_training_is_full_integer(exports):
    report = exports["int8"]
    assert report.agreement >= 0.98, str(report)
    assert report.ops["CONV_2D"] == {"int8": 2}
    assert report.ops["FULLY_CONNECTED"] == {"int8": 1}
    assert report.int8_coverage == 1.0
    assert report.inputs[0]["dtype"] == "float32"  # QUANTIZE op inside
    assert report.bytes < 0.5 * exports[None].bytes


@pytest.mark.parametrize("input_type,output_type", [("int8", "int8"), ("uint8", None)])
def test_integer_io_types(
    trained_cnn, digits, tmp_path, exports, input_type, output_type
):
    x_train, _, x_test, _ = digits
    report = export_tflite(
        trained_cnn,
        tmp_path / "io.tflite",
        "int8",
        representative_data=x_train[:300],
        input_type=input_type,
        output_type=output_type,
        verification_data=x_test,
        max_samples=300,
    )
    assert report.inputs[0]["dtype"] == input_type
    assert report.outputs[0]["dtype"] == (output_type or "float32")
    # Verification quantized the inputs and dequantized the outputs: the
    # figures match the float-interface int8 file's.
    assert report.agreement >= 0.98
    assert abs(report.agreement - exports["int8"].agreement) <= 0.01
    assert report.max_abs_error < 3 * exports["int8"].max_abs_error + 0.05


def test_tolerance_failure_keeps_existing_file(trained_cnn, digits, tmp_path):
    x_train, _, x_test, _ = digits
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous model")
    with pytest.raises(
        VerificationError, match=r"max abs error .* > max_error 1e-09"
    ) as info:
        export_tflite(
            trained_cnn,
            path,
            "int8",
            representative_data=x_train[:100],
            verification_data=x_test[:100],
            tolerance={"max_error": 1e-9, "min_agreement": 0.5},
        )
    assert path.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["model.tflite"]  # no temp file left
    assert info.value.report.num_samples == 100
    assert info.value.report.max_abs_error > 1e-9
    assert any("not written" in note for note in info.value.report.notes)


def test_min_agreement_failure_names_figures(
    trained_cnn, digits, tmp_path, monkeypatch
):
    from tfaccel.export import verify as tflite

    # A file that disagrees with Keras: verification sees shifted outputs.
    real = tflite._tflite_outputs
    monkeypatch.setattr(
        tflite,
        "_tflite_outputs",
        lambda *a, **k: {key: np.roll(v, 1, -1) for key, v in real(*a, **k).items()},
    )
    with pytest.raises(
        VerificationError, match=r"top-1 agreement 0\.\d+ < min_agreement 0.99"
    ):
        export_tflite(
            trained_cnn,
            tmp_path / "m.tflite",
            verification_data=digits[2][:100],
            tolerance={"min_agreement": 0.99},
        )
    assert os.listdir(tmp_path) == []


def test_tolerance_met_writes_file(trained_cnn, digits, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous model")
    os.chmod(path, 0o640)
    report = export_tflite(
        trained_cnn,
        path,
        verification_data=digits[2][:64],
        tolerance={"min_agreement": 1.0, "max_error": 1e-4},
    )
    assert path.read_bytes()[4:8] == b"TFL3"
    assert report.path == str(path)
    assert os.stat(path).st_mode & 0o777 == 0o640  # the user's permissions kept
    assert os.listdir(tmp_path) == ["model.tflite"]


def test_conversion_error_keeps_existing_file(trained_cnn, tmp_path, monkeypatch):
    class Broken:
        def convert(self):
            raise ValueError("provoked converter failure")

    monkeypatch.setattr(
        tf.lite.TFLiteConverter, "from_keras_model", staticmethod(lambda m: Broken())
    )
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous model")
    with pytest.raises(RuntimeError, match="TFLite conversion failed.*provoked"):
        export_tflite(trained_cnn, path, verify=False)
    assert path.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["model.tflite"]


def test_creates_parent_directories(trained_cnn, tmp_path):
    path = tmp_path / "a" / "b" / "m.tflite"
    report = export_tflite(trained_cnn, path)
    assert path.exists()
    assert not report.verified
    assert any("Verification skipped" in note for note in report.notes)


def _no_conversion(monkeypatch):
    def fail(model):
        raise AssertionError("converted although the arguments were invalid")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", staticmethod(fail))


def test_directory_path_is_rejected_before_converting(cnn, tmp_path, monkeypatch):
    _no_conversion(monkeypatch)
    with pytest.raises(ValueError, match="`path` must be a file path, not a directory"):
        export_tflite(cnn, tmp_path)


def test_unwritable_path_is_rejected_before_converting(cnn, tmp_path, monkeypatch):
    _no_conversion(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    # Running as root defeats chmod; a file used as a directory fails for all.
    with pytest.raises(OSError, match="`path` must be a writable file path"):
        export_tflite(cnn, blocker / "m.tflite")
    assert os.listdir(tmp_path) == ["file"]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            {"quantization": "int4"},
            ValueError,
            r"`quantization` must be one of None, 'int8'.*Received: quantization='int4'",
        ),
        (
            {"quantization": "int8"},
            ValueError,
            r"pass `representative_data`.*or quantize\(\) the model.*Received: representative_data=None",
        ),
        (
            {"input_type": "int16"},
            ValueError,
            r"`input_type` must be one of.*Received: input_type='int16'",
        ),
        (
            {"input_type": "int8"},
            ValueError,
            r"`input_type`='int8' requires quantization='int8'. Received: quantization=None",
        ),
        (
            {"output_type": "uint8", "quantization": "float16"},
            ValueError,
            r"`output_type`='uint8' requires quantization='int8'",
        ),
        (
            {"tolerance": {"agreement": 0.9}},
            ValueError,
            r"`tolerance` accepts the keys 'min_agreement' and 'max_error'",
        ),
        ({"tolerance": 0.99}, TypeError, r"`tolerance` must be a dict"),
        (
            {"tolerance": {"min_agreement": 1.5}},
            ValueError,
            r"tolerance\['min_agreement'\]` must be in \[0.0, 1.0\]. Received: 1.5",
        ),
        (
            {"tolerance": {"max_error": 0.1}},
            ValueError,
            r"`tolerance` needs samples to verify on",
        ),
        (
            {
                "tolerance": {"max_error": 0.1},
                "verify": False,
                "verification_data": np.zeros((2, 8, 8, 1)),
            },
            ValueError,
            r"`tolerance` needs verify=True",
        ),
        (
            {"max_samples": 0},
            ValueError,
            r"`max_samples` must be a positive integer. Received: max_samples=0",
        ),
        (
            {"converter_options": {"no_such_option": 1}},
            ValueError,
            r"`converter_options`.*unknown key 'no_such_option'",
        ),
    ],
)
def test_bad_arguments(cnn, tmp_path, monkeypatch, kwargs, error, match):
    if "converter_options" not in kwargs:
        _no_conversion(monkeypatch)
    with pytest.raises(error, match=match):
        export_tflite(cnn, tmp_path / "m.tflite", **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "data,error,match",
    [
        (
            np.zeros((4, 8, 8, 3), "float32"),
            ValueError,
            r"`representative_data` has the wrong shape.*Expected batches of shape \(None, 8, 8, 1\).*Received: shape \(4, 8, 8, 3\)",
        ),
        (
            np.zeros((4, 64), "float32"),
            ValueError,
            r"wrong shape.*Received: shape \(4, 64\)",
        ),
        (
            np.array([["a"] * 64] * 2).reshape(2, 8, 8, 1),
            TypeError,
            r"`representative_data` must hold numeric arrays.*Received: an array of dtype <U1",
        ),
        (
            np.full((4, 8, 8, 1), np.nan, "float32"),
            ValueError,
            r"`representative_data` must contain only finite values. Received: 256 NaN/inf",
        ),
        (
            np.zeros((0, 8, 8, 1), "float32"),
            ValueError,
            r"`representative_data` is empty",
        ),
        (
            "empty_dataset",
            ValueError,
            r"`representative_data` is empty. Expected at least one sample",
        ),
        ([], ValueError, r"`representative_data` is empty"),
    ],
)
def test_bad_representative_data(cnn, tmp_path, monkeypatch, data, error, match):
    _no_conversion(monkeypatch)
    if isinstance(data, str):
        data = tf.data.Dataset.from_tensor_slices(
            np.zeros((0, 8, 8, 1), "float32")
        ).batch(4)
    with pytest.raises(error, match=match):
        export_tflite(cnn, tmp_path / "m.tflite", "int8", representative_data=data)
    assert os.listdir(tmp_path) == []


def test_bad_verification_data_names_its_argument(cnn, tmp_path, monkeypatch):
    _no_conversion(monkeypatch)
    bad = np.ones((4, 8, 8, 1), "float32")
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(
        ValueError, match="`verification_data` must contain only finite values"
    ):
        export_tflite(cnn, tmp_path / "m.tflite", verification_data=bad)


def test_model_argument_must_be_a_keras_model(tmp_path):
    with pytest.raises(
        TypeError, match="`model` must be a keras.Model.*Received: model of type str"
    ):
        export_tflite("model.keras", tmp_path / "m.tflite")


def test_multi_input_multi_output_model(digits, tmp_path):
    x_train, y_train, x_test, _ = digits
    image = keras.Input((8, 8, 1), name="image")
    extra = keras.Input((3,), name="extra")
    h = keras.layers.Concatenate()([keras.layers.Flatten()(image), extra])
    h = keras.layers.Dense(32, activation="relu")(h)
    outputs = {
        "logits": keras.layers.Dense(10, name="logits")(h),
        "score": keras.layers.Dense(1, name="score")(h),
    }
    model = keras.Model([image, extra], outputs)
    rng = np.random.default_rng(0)
    x = (x_train[:300], rng.random((300, 3), dtype="float32"))
    x_check = [x_test[:100], rng.random((100, 3), dtype="float32")]
    float_report = export_tflite(
        model,
        tmp_path / "f.tflite",
        verification_data=x_check,
        tolerance={"max_error": 1e-4, "min_agreement": 1.0},
    )
    assert [i["dtype"] for i in float_report.inputs] == ["float32", "float32"]
    # Calibration feeds both inputs by name; outputs are matched by key.
    report = export_tflite(
        model,
        tmp_path / "q.tflite",
        "int8",
        representative_data=[x],
        verification_data=x_check,
    )
    assert report.int8_coverage == 1.0
    assert report.agreement >= 0.9, str(report)


def test_numpy_numbers_are_accepted_as_arguments(cnn, digits, tmp_path):
    # Regression: np.int64 / np.float32 were rejected as "not a number".
    report = export_tflite(
        cnn,
        tmp_path / "m.tflite",
        verification_data=digits[2],
        max_samples=np.int64(40),
        tolerance={"min_agreement": np.float32(0.99)},
    )
    assert report.num_samples == 40
    with pytest.raises(ValueError, match="`max_samples` must be a positive integer"):
        export_tflite(cnn, tmp_path / "b.tflite", max_samples=True)


def test_nan_outputs_of_the_file_fail_max_error(cnn, digits, tmp_path, monkeypatch):
    from tfaccel.export import verify

    # Regression: a NaN output was dropped by `max`, reported as error 0.
    real = verify._tflite_outputs

    def nan_first(*args, **kwargs):
        out = real(*args, **kwargs)
        for value in out.values():
            value[0, 0] = np.nan
        return out

    monkeypatch.setattr(verify, "_tflite_outputs", nan_first)
    with pytest.raises(VerificationError, match=r"max abs error inf > max_error"):
        export_tflite(
            cnn,
            tmp_path / "m.tflite",
            verification_data=digits[2][:20],
            tolerance={"max_error": 1.0},
        )
    assert os.listdir(tmp_path) == []


def test_mixed_precision_model_with_mixed_layer_names(tmp_path):
    # Regression: every string starting with "mixed_" was rewritten to
    # "float32", layer names too, which broke the float32 copy's graph.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, name="mixed_1")(inputs)
        outputs = keras.layers.Dense(3, dtype="float32", name="logits")(hidden)
        model = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    x = np.random.default_rng(0).random((16, 4), dtype="float32")
    report = export_tflite(model, tmp_path / "m.tflite", verification_data=x)
    assert any("Mixed-precision model" in note for note in report.notes)
    assert report.agreement == 1.0 and report.max_abs_error < 1e-5
    # The same weights as the float16-computing model: close to its outputs.
    np.testing.assert_allclose(
        _run(report.path, x), np.asarray(model(x), "float32"), atol=2e-2
    )
