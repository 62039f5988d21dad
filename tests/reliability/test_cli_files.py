"""Issue 12, command-line side: untrusted files and paths (items 3, 4, 9,
10, 11, 12, 14 and the contained conversion). Each test fails on the
`tfaccel` command of the first release."""

import os
import zipfile

import keras
import numpy as np
import pytest

from tests.reliability._cli_helpers import set_zero_point, small_int8_tflite
from tfaccel import cli
from tfaccel.cli import contained, files
from tfaccel.export import InvalidTFLiteError, validate_tflite


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("tfaccel: error:")]
    return code, out, err, (lines[-1] if lines else "")


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    return small_int8_tflite(str(tmp_path_factory.mktemp("int8") / "m.tflite"))


@pytest.fixture
def dense_model(tmp_path):
    """A tiny float .keras model and a verification .npy beside it."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", np.ones((3, 4), "float32"))
    return tmp_path


@pytest.fixture
def no_conversion(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the conversion started although an argument was bad")

    monkeypatch.setattr("tfaccel.cli.export.run_contained", fail)


@pytest.fixture
def no_interpreter(monkeypatch):
    from ai_edge_litert import interpreter

    def fail(*args, **kwargs):
        raise AssertionError("an interpreter read the file before validation")

    monkeypatch.setattr(interpreter, "Interpreter", fail)


# Item 3: a crafted zero point is refused before any interpreter reads it.
@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_crafted_zero_point_is_refused_by_inspect_and_bench(
    int8_file, tmp_path, capsys, no_interpreter, command
):
    with open(int8_file, "rb") as f:
        crafted = set_zero_point(f.read(), "serving_default", 2**31 - 1)
    path = tmp_path / "crafted.tflite"
    path.write_bytes(crafted)
    code, out, _, line = run(capsys, command, path)
    assert code == cli.EXIT_BAD_MODEL_FILE == 3
    assert str(path) in line and "zero point 2147483647, outside [-128, 127]" in line
    assert out == ""
    with pytest.raises(InvalidTFLiteError, match="zero point 2147483647"):
        validate_tflite(crafted)
    validate_tflite(int8_file)  # control: the original is fine


# Item 4: no output path may be an input, or another output.
@pytest.mark.parametrize(
    "case", ["output_is_model", "report_is_output", "report_is_verification",
             "output_is_symlink_to_model", "output_is_hard_link_to_model"],
)
def test_outputs_never_overwrite_inputs(dense_model, capsys, no_conversion, case):
    model, data = dense_model / "model.keras", dense_model / "x.npy"
    out = dense_model / "m.tflite"
    before = {p: p.read_bytes() for p in (model, data)}
    argv = ["export", model, "-o", out, "--verification", data]
    if case == "output_is_model":
        argv[3] = model
    elif case == "report_is_output":
        argv += ["--report", out]
    elif case == "report_is_verification":
        argv += ["--report", data]
    elif case == "output_is_symlink_to_model":
        os.symlink(model, dense_model / "link.tflite")
        argv[3] = dense_model / "link.tflite"
    else:
        os.link(model, dense_model / "hard.tflite")
        argv[3] = dense_model / "hard.tflite"
    code, _, _, line = run(capsys, *argv)
    assert code == cli.EXIT_USAGE == 2
    assert "refusing to write over" in line and "are the same file" in line
    assert {p: p.read_bytes() for p in before} == before
    assert not out.exists()


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    report = tmp_path / "r.json"
    report.write_text("previous")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.write_text_atomic(str(report), "{}")
    assert report.read_text() == "previous"
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left


# Item 9: a load error names its cause; "Lambda" in a class name is no Lambda.
@pytest.mark.parametrize("class_name", ["ScaleByTwo", "LambdaScale"])
def test_unknown_class_is_named_not_mistaken_for_code(tmp_path, class_name):
    base = type(class_name, (keras.layers.Layer,), {"call": lambda self, x: 2 * x})
    layer_class = keras.saving.register_keras_serializable("reltest")(base)
    inputs = keras.Input((4,))
    keras.Model(inputs, layer_class()(inputs)).save(tmp_path / "m.keras")
    # The file now names a class no process knows (as on another machine).
    keras.saving.get_custom_objects().pop(f"reltest>{class_name}")
    with pytest.raises(cli.CliError) as info:
        files.load_model_safely(str(tmp_path / "m.keras"))
    assert info.value.code == 3
    assert f"unknown class '{class_name}'" in str(info.value)
    assert "Python code" not in str(info.value)


# Item 10: one calibration sample, progress bar on, as with it off.
def test_single_sample_calibration_with_the_progress_bar(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.save(tmp_path / "conv.keras")
    np.save(tmp_path / "one.npy", np.full((8, 8, 1), 0.5, "float32"))  # no N axis
    code, _, err, line = run(capsys, "export", tmp_path / "conv.keras", "-o",
                             tmp_path / "m.tflite", "--int8", "--calibration",
                             tmp_path / "one.npy")
    assert code == 0, line
    assert "1/1 samples" in err
    assert (tmp_path / "m.tflite").stat().st_size > 0


# Item 11: bad output paths fail up front, naming the option, not a temp file.
@pytest.mark.parametrize("output", ["", "newdir/", "blocker/m.tflite"])
def test_bad_output_paths_fail_before_conversion(dense_model, capsys, no_conversion,
                                                 output):
    (dense_model / "blocker").write_text("a file, not a directory")
    # (pathlib would drop the trailing slash of "newdir/")
    argv = ["export", dense_model / "model.keras", "-o",
            output and f"{dense_model}{os.sep}{output}"]
    code, _, _, line = run(capsys, *argv)
    assert code == 2
    assert line.startswith("tfaccel: error: -o/--output: ")
    assert ".tmp" not in line and "tfaccel-" not in line
    assert not (dense_model / "newdir").exists()


# Item 12: a zip bomb is refused from the central directory, nothing inflated.
def test_zip_bomb_is_refused_without_inflating(dense_model, tmp_path, capsys,
                                               monkeypatch, no_conversion):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(dense_model / "model.keras") as good, \
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", good.read("config.json"))
        z.writestr("metadata.json", good.read("metadata.json"))
        with z.open("model.weights.h5", "w") as member:
            zeros = bytes(2**20)
            for _ in range(300):  # 300 MiB of zeros: about 300 KB on disk
                member.write(zeros)
    inflated = []
    real_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real_read(self, n)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    code, _, _, line = run(capsys, "export", bomb, "-o", tmp_path / "x.tflite")
    assert code == 3
    assert "model.weights.h5" in line and "zip bomb" in line
    assert sum(inflated) < 2**20  # config.json at most
    # Safe mode and the archive checks still hold for ordinary files.
    assert files.check_keras_archive(str(dense_model / "model.keras"))["class_name"]


# Item 14: a directory is named as such by every command.
@pytest.mark.parametrize("command", ["inspect", "bench"])
def test_directory_is_reported_as_a_directory(tmp_path, capsys, command):
    code, _, _, line = run(capsys, command, tmp_path)
    assert code == 3
    assert "received a directory" in line and "not found" not in line


# A conversion that crashes is contained: exit 4, nothing left behind.
def test_crashing_conversion_exits_4_and_leaves_no_file(dense_model, capsys,
                                                        monkeypatch):
    def crash(target, *args, **kwargs):
        return contained.run_contained(
            "tests.reliability._cli_helpers:crash_writing", *args, **kwargs
        )

    monkeypatch.setattr("tfaccel.cli.export.run_contained", crash)
    before = sorted(os.listdir(dense_model))
    code, _, _, line = run(capsys, "export", dense_model / "model.keras", "-o",
                           dense_model / "m.tflite")
    assert code == cli.EXIT_EXPORT_FAILED == 4
    assert "crashed" in line and "SIGABRT" in line
    assert sorted(os.listdir(dense_model)) == before
