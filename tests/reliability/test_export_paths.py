"""Issue 12 items 11 and 14 (function side): output paths.

Bad paths fail before any conversion with a ValueError naming `path`; a
failed export removes the parent directories it created; the next export of
a path removes the temporary file a `kill -9`ed export of it left.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import pytest
import tensorflow as tf

from tfaccel.export import export_tflite


def _model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])


@pytest.fixture
def no_conversion(monkeypatch):
    def fail(model):
        raise AssertionError("converted although `path` was invalid")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", staticmethod(fail))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", r"`path` must name a file\. Received: path=''"),
        ("newdir/", r"`path` must name a file, not a directory .*path='newdir/'"),
        (
            "blocker/m.tflite",
            r"`path` must be a writable file path.*is not a directory",
        ),
    ],
)
def test_bad_paths_fail_before_converting(
    tmp_path, monkeypatch, no_conversion, path, message
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "blocker").write_text("a file, not a directory")
    monkeypatch.chdir(work)
    with pytest.raises((ValueError, OSError), match=message):
        export_tflite(_model(), path, verify=False)
    assert sorted(os.listdir(work)) == ["blocker"]
    assert os.listdir(tmp_path) == ["work"]  # nothing in the parent either


def test_failed_export_removes_the_directories_it_created(tmp_path, monkeypatch):
    class Broken:
        def convert(self):
            raise ValueError("provoked converter failure")

    monkeypatch.setattr(
        tf.lite.TFLiteConverter, "from_keras_model", staticmethod(lambda m: Broken())
    )
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError, match="provoked"):
        export_tflite(
            _model(), tmp_path / "kept" / "a" / "b" / "m.tflite", verify=False
        )
    assert os.listdir(tmp_path) == ["kept"]
    assert os.listdir(tmp_path / "kept") == []


_HANGING_EXPORT = textwrap.dedent(
    """
    import sys, time
    import keras, tensorflow as tf
    from tfaccel.export import export_tflite

    def hang(model):
        time.sleep(600)

    tf.lite.TFLiteConverter.from_keras_model = staticmethod(hang)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    export_tflite(model, sys.argv[1], verify=False)
    """
)


@pytest.mark.slow
def test_temp_file_of_a_killed_export_is_removed_by_the_next(tmp_path):
    path = tmp_path / "m.tflite"
    (tmp_path / ".other.tmp").write_text("not ours")
    process = subprocess.Popen(
        [sys.executable, "-c", _HANGING_EXPORT, str(path)],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(os.listdir(tmp_path)) < 2:
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 2 and any(n.startswith(".m.tflite.") for n in left), left
    export_tflite(_model(), path, verify=False)
    assert sorted(os.listdir(tmp_path)) == [".other.tmp", "m.tflite"]


def test_only_temp_files_of_dead_or_old_writers_are_removed(tmp_path):
    from tfaccel.export.atomic import remove_stale_temp_files

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead, alive = int(done.stdout), os.getppid()
    names = {
        "dead": f".m.tflite.tfaccel-{dead}-x1.tmp",
        "alive": f".m.tflite.tfaccel-{alive}-x2.tmp",
        "alive_but_old": f".m.tflite.tfaccel-{alive}-x3.tmp",
        "other_target": f".n.tflite.tfaccel-{dead}-x4.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / names["alive_but_old"], (two_days_ago, two_days_ago))
    removed = remove_stale_temp_files(str(tmp_path / "m.tflite"))
    assert sorted(removed) == sorted([names["dead"], names["alive_but_old"]])
    assert sorted(os.listdir(tmp_path)) == sorted(
        [names["alive"], names["other_target"]]
    )
