"""The `tfaccel` command: exit codes, messages, safe loading, real exports."""

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn
from tfaccel import cli


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tfaccel: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    """A briefly trained digits CNN saved as .keras, and .npy data files."""
    x_train, y_train, x_test, _ = digits
    root = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    model = make_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    model.save(root / "cnn.keras")
    np.save(root / "calib.npy", x_train[:64])
    np.save(root / "test.npy", x_test[:100])
    return root


def test_help_teaches_commands_examples_and_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for text in ("demo", "export", "inspect", "bench", "examples:", "exit codes:",
                 "unreadable or unsafe model file", "verification failed"):
        assert text in out
    code, out, _ = run(capsys, "export", "--help")
    assert code == 0
    assert "--calibration" in out and "--input-type" in out and "exit codes:" in out
    assert "tfaccel export qat.keras" in out  # an example in the epilog


def test_demo_is_forwarded_to_the_demo_parser(capsys):
    code, out, _ = run(capsys, "demo", "--help")
    assert code == 0
    assert "--out-dir" in out and "--epochs" in out


def test_export_float32_with_reports_then_inspect_and_bench(files, tmp_path, capsys):
    out_file = tmp_path / "cnn.tflite"
    code, out, err = run(
        capsys, "export", files / "cnn.keras", "-o", out_file,
        "--verification", files / "test.npy", "--max-error", "1e-3",
        "--report", tmp_path / "r.json", "--markdown", tmp_path / "r.md",
        "--plot", tmp_path / "sizes.png",
    )
    assert code == 0, err
    assert out_file.stat().st_size > 1000
    assert "ExportReport" in out and "top-1 agreement" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["quantization"] == "float32"
    assert report["num_samples"] == 100
    assert report["agreement"] == 1.0 and report["max_abs_error"] < 1e-4
    assert report["ops"]["CONV_2D"] == {"float32": 2}
    assert "| CONV_2D | float32 | 2 |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, _ = run(capsys, "inspect", out_file, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["bytes"] == out_file.stat().st_size
    assert 0 < info["gzip_bytes"] < info["bytes"]
    assert info["ops"]["FULLY_CONNECTED"] == {"float32": 1}
    code, out, _ = run(capsys, "inspect", out_file)
    assert code == 0
    assert "CONV_2D" in out and "gzip size" in out and "zero weights" in out

    code, out, _ = run(capsys, "bench", out_file, "--threads", "1", "2",
                       "--runs", "5", "--warmup", "1", "--json")
    assert code == 0
    rows = json.loads(out)["results"]
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    code, out, _ = run(capsys, "bench", out_file, "--runs", "3")
    assert code == 0 and "median ms" in out


def test_export_int8_calibrates_with_a_progress_bar(files, tmp_path, capsys):
    out_file = tmp_path / "int8.tflite"
    code, out, err = run(
        capsys, "export", files / "cnn.keras", "-o", out_file, "--int8",
        "--calibration", files / "calib.npy", "--input-type", "int8",
        "--report", tmp_path / "r.json", "--min-agreement", "0.9",
    )
    assert code == 0, err
    assert "calibrating [" in err and "64/64 samples" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ops"]["CONV_2D"] == {"int8": 2}
    assert report["float_ops"] == []  # every op of the body is integer
    assert report["inputs"][0]["dtype"] == "int8"
    assert report["outputs"][0]["dtype"] == "int8"
    assert report["agreement"] >= 0.9


def test_verification_failure_exits_1_and_writes_nothing(files, tmp_path, capsys):
    out_file = tmp_path / "int8.tflite"
    out_file.write_bytes(b"previous file")
    code, _, err = run(
        capsys, "export", files / "cnn.keras", "-o", out_file, "--int8",
        "--calibration", files / "calib.npy", "--max-error", "0", "--no-progress",
    )
    assert code == cli.EXIT_VERIFICATION_FAILED == 1
    line = one_error_line(err)
    assert "verification failed" in line and "max" in line
    assert "calibrating" not in err
    assert out_file.read_bytes() == b"previous file"


def test_qat_model_exports_int8_without_calibration(digits, tmp_path, capsys):
    from tfaccel.quantization import quantize

    qat = quantize(make_cnn(), calibration_data=digits[0][:64])
    qat.save(tmp_path / "qat.keras")
    np.save(tmp_path / "test.npy", digits[2][:50])
    code, out, err = run(
        capsys, "export", tmp_path / "qat.keras", "-o", tmp_path / "qat.tflite",
        "--input-type", "int8", "--verification", tmp_path / "test.npy",
        "--report", tmp_path / "r.json",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["quantization"] == "int8"
    assert report["ops"]["CONV_2D"] == {"int8": 2}
    assert report["int8_coverage"] == 1.0


def test_pruned_model_file_loads_and_exports_stripped(digits, tmp_path, capsys):
    from tfaccel.pruning import prune
    from tfaccel.schedules import ConstantSparsity

    x, y = digits[0][:128], digits[1][:128]
    pruned = prune(make_cnn(), ConstantSparsity(0.5, begin_step=0, frequency=1))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=1, batch_size=64, verbose=0)
    pruned.save(tmp_path / "pruned.keras")
    code, out, err = run(capsys, "export", tmp_path / "pruned.keras",
                         "-o", tmp_path / "pruned.tflite", "--report", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert any("PruneLowMagnitude" in note for note in report["notes"])
    assert report["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_lstm_exports_fused_by_default_and_unrolled_on_request(tmp_path, capsys):
    from tests.recurrent_models import digit_tokens, text_classifier

    keras.utils.set_random_seed(0)
    text_classifier().save(tmp_path / "lstm.keras")
    np.save(tmp_path / "tokens.npy", digit_tokens()[2][:20])
    ops = {}
    for flag in ([], ["--unroll-lstm"]):
        code, _, err = run(
            capsys, "export", tmp_path / "lstm.keras", "-o", tmp_path / "lstm.tflite",
            "--verification", tmp_path / "tokens.npy", "--report", tmp_path / "r.json",
            *flag,
        )
        assert code == 0, err
        ops[bool(flag)] = json.loads((tmp_path / "r.json").read_text())["ops"]
    assert ops[False]["UNIDIRECTIONAL_SEQUENCE_LSTM"] == {"float32": 1}
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops[True]
    assert ops[True]["FULLY_CONNECTED"] == {"float32": 17}  # 8 steps x 2 + logits


def test_lambda_model_is_refused_and_never_executed(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    # A Python lambda is stored as bytecode in the .keras file: loading it
    # unsafely runs it (creating `marker`) when the functional graph is rebuilt.
    side_effect = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(side_effect)(inputs))
    model.save(tmp_path / "lambda.keras")
    marker.unlink()

    code, out, err = run(capsys, "export", tmp_path / "lambda.keras",
                         "-o", tmp_path / "x.tflite")
    assert code == cli.EXIT_BAD_MODEL_FILE == 3
    line = one_error_line(err)
    assert "refusing to load" in line and "Lambda" in line
    assert not marker.exists()
    assert not (tmp_path / "x.tflite").exists()
    # Control: the file really carries code that runs when loaded unsafely.
    keras.models.load_model(tmp_path / "lambda.keras", safe_mode=False)
    assert marker.exists()


def _keras_bytes(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.save(tmp_path / "good.keras")
    return (tmp_path / "good.keras").read_bytes()


@pytest.mark.parametrize(
    "kind, match",
    [
        ("truncated", "not a .keras zip archive"),
        ("text", "not a .keras zip archive"),
        ("missing", "model file not found"),
        ("h5", "expected a Keras v3 model file ending in '.keras'"),
        ("zip_without_config", "not a .keras model \\(no config.json\\)"),
        ("bad_crc", "corrupt .keras archive"),
        ("directory", "received a directory"),
    ],
)
def test_unreadable_model_files_exit_3(tmp_path, capsys, kind, match):
    path = tmp_path / "model.keras"
    if kind == "truncated":
        data = _keras_bytes(tmp_path)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not a model")
    elif kind == "h5":
        path = tmp_path / "model.h5"
        path.write_bytes(b"\x89HDF\r\n\x1a\n")
    elif kind == "zip_without_config":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("model.weights.h5", b"")
    elif kind == "bad_crc":
        data = bytearray(_keras_bytes(tmp_path))
        with zipfile.ZipFile(tmp_path / "good.keras") as z:
            info = z.getinfo("config.json")
        # Flip a byte of config.json's stored data: the CRC no longer matches.
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        data[start + 5] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "directory":
        path.mkdir()
    code, _, err = run(capsys, "export", path, "-o", tmp_path / "x.tflite")
    assert code == 3
    assert re.search(match, one_error_line(err))


@pytest.mark.parametrize(
    "args, match",
    [
        (["export", "{m}", "-o", "{t}/x.tflite", "--int8",
          "--calibration", "{t}/missing.npy"], "--calibration: file not found"),
        (["export", "{m}", "-o", "{t}/x.tflite", "--int8",
          "--calibration", "{t}/strings.npy"], "expected a numeric array"),
        (["export", "{m}", "-o", "{t}/x.tflite", "--int8",
          "--calibration", "{t}/wrong_shape.npy"], "representative_data"),
        (["export", "{m}", "-o", "{t}"], "expected a file path"),
        (["export", "{m}", "-o", "{t}/x.tflite", "--min-agreement", "99"],
         "--min-agreement: expected a fraction"),
        (["bench", "{t}/model.tflite", "--runs", "0"], "--runs: expected"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, args, match):
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    np.save(tmp_path / "wrong_shape.npy", np.zeros((4, 5, 5, 1), "float32"))
    (tmp_path / "model.tflite").write_bytes(b"\x00\x00\x00\x00TFL3" + b"\x00" * 64)
    argv = [a.format(m=files / "cnn.keras", t=tmp_path, c=files / "calib.npy")
            for a in args]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert re.search(match, one_error_line(err))
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--int8"], "--int8 on a float model needs calibration data"),
        (["--input-type", "int8"], "--input-type/--output-type int8 needs --int8"),
        (["--dynamic", "--calibration", "{c}"], "--calibration is only used by --int8"),
    ],
)
def test_a_plain_models_option_errors_come_before_the_conversion_child(
        files, tmp_path, capsys, monkeypatch, args, match):
    # Read off the file's config: no TensorFlow child is started for them.
    def no_child(*_, **__):
        raise AssertionError("the conversion child was started")

    monkeypatch.setattr(cli.export, "run_contained", no_child)
    argv = [a.format(c=files / "calib.npy") for a in args]
    code, _, err = run(capsys, "export", files / "cnn.keras", "-o", tmp_path / "x.tflite",
                       *argv)
    assert code == 2
    assert re.search(match, one_error_line(err))
    assert not (tmp_path / "x.tflite").exists()


def test_a_config_naming_a_tfaccel_class_at_any_depth_is_left_to_the_child():
    # Such a model (QAT, pruned, ...) is checked once loaded.
    nested = {"config": {"layers": [
        {"class_name": "Dense", "registered_name": None},
        {"class_name": "Functional", "config": {"layers": [
            {"class_name": "QuantizeWrapper", "registered_name": "tfaccel>QuantizeWrapper"},
        ]}},
    ]}}
    assert cli.export._uses_tfaccel(nested)
    nested["config"]["layers"][1]["config"]["layers"][0]["registered_name"] = "my>Layer"
    assert not cli.export._uses_tfaccel(nested)


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "m.keras"],  # missing -o
        ["export", "m.keras", "-o", "x.tflite", "--int8", "--float16"],
        ["bench", "x.tflite", "--threads", "one"],
        ["nonsense"],
        [],
    ],
)
def test_argparse_usage_errors_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "tfaccel: error:" in err


@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_non_tflite_file_exits_3(tmp_path, capsys, command):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a flatbuffer")
    code, _, err = run(capsys, command, path)
    assert code == 3
    assert "not a TFLite flatbuffer" in one_error_line(err)
    code, _, err = run(capsys, command, tmp_path / "missing.tflite")
    assert code == 3
    assert "TFLite file not found" in one_error_line(err)


def test_console_entry_point_exit_codes(tmp_path):
    """The real process: exit status and stderr as a shell script sees them."""
    bad = tmp_path / "bad.keras"
    bad.write_text("garbage")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "tfaccel.cli", "export", str(bad), "-o",
         str(tmp_path / "x.tflite")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("tfaccel: error: ")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tfaccel.cli", "--version"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("tfaccel ")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_redraws_on_a_terminal_and_logs_deciles_otherwise(terminal):
    stream = _Terminal() if terminal else io.StringIO()
    data = np.arange(250, dtype="float32").reshape(250, 1)
    batches = list(cli.calibration_dataset(data, stream)())
    assert len(batches) == 250
    assert all(b[0].shape == (1, 1) for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), data)
    text = stream.getvalue()
    assert "250/250 samples" in text
    if terminal:
        assert text.count("\r") == 250 and text.endswith("\n")
    else:
        assert "\r" not in text
        assert len(text.splitlines()) == 11  # 0%, 10%, ..., 100%


def test_two_input_model_takes_npz_by_name_or_in_input_order(tmp_path, capsys, digits):
    x_train, _, x_test, _ = digits
    top = keras.Input((4, 8), name="top")
    bottom = keras.Input((4, 8), name="bottom")
    joined = keras.layers.Concatenate()(
        [keras.layers.Flatten()(top), keras.layers.Flatten()(bottom)])
    model = keras.Model([top, bottom], keras.layers.Dense(10)(joined))
    model.save(tmp_path / "two.keras")
    halves = lambda x: (x[:, :4, :, 0], x[:, 4:, :, 0])  # noqa: E731
    np.savez(tmp_path / "calib.npz", bottom=halves(x_train[:32])[1],
             top=halves(x_train[:32])[0])
    np.savez(tmp_path / "test.npz", *halves(x_test[:40]))  # arr_0, arr_1
    code, out, err = run(
        capsys, "export", tmp_path / "two.keras", "-o", tmp_path / "two.tflite",
        "--int8", "--calibration", tmp_path / "calib.npz",
        "--verification", tmp_path / "test.npz", "--no-progress",
    )
    assert code == 0, err
    assert "40 samples" in out and "FULLY_CONNECTED[int8]" in out
    np.savez(tmp_path / "bad.npz", top=halves(x_test[:4])[0], left=x_test[:4, :4, :, 0])
    code, _, err = run(
        capsys, "export", tmp_path / "two.keras", "-o", tmp_path / "bad.tflite",
        "--int8", "--calibration", tmp_path / "bad.npz", "--no-progress",
    )
    assert code == 2
    assert "dict keyed by those names" in one_error_line(err)
    assert not (tmp_path / "bad.tflite").exists()


def test_inspect_names_the_layer_of_each_float_op(tmp_path, capsys, digits):
    from tfaccel.export import export_tflite
    from tfaccel.quantization import quantize

    x_train = digits[0][:64, ..., 0]
    model = keras.Sequential([
        keras.Input((8, 8)), keras.layers.SimpleRNN(8, name="rnn"),
        keras.layers.Dense(10, name="logits")])
    qat = quantize(model, calibration_data=x_train, skip=["rnn"])  # no QAT rule
    export_tflite(qat, tmp_path / "m.tflite", verify=False)
    code, out, _ = run(capsys, "inspect", tmp_path / "m.tflite")
    assert code == 0
    assert re.search(r"float ops +32 in the integer body", out)
    assert "TANH[float32] x8 in layer 'rnn': float island" in out
    code, out, _ = run(capsys, "inspect", tmp_path / "m.tflite", "--json")
    assert {op["layer"] for op in json.loads(out)["float_ops"]} == {"rnn"}
