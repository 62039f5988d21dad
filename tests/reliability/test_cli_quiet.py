"""Issue 11: `tfaccel --help` and every command print no TensorFlow or
LiteRT log noise, only their own lines."""

import os
import subprocess
import sys

import pytest

from tests.reliability._cli_helpers import small_int8_tflite
from tfaccel import cli


def test_commands_write_nothing_native_to_stderr(tmp_path, capfd):
    path = small_int8_tflite(str(tmp_path / "m.tflite"))
    capfd.readouterr()
    assert cli.main(["inspect", path]) == 0
    out, err = capfd.readouterr()
    assert "CONV_2D[int8] x1" in out
    assert err == ""
    assert cli.main(["bench", path, "--runs", "2", "--warmup", "0"]) == 0
    out, err = capfd.readouterr()
    assert "median ms" in out
    assert err == ""  # no "Created TensorFlow Lite XNNPACK delegate"


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["nonsense"]])
def test_help_prints_no_tensorflow_logs(argv):
    # `tfaccel` is `tfaccel_command:main` (setup.cfg): TensorFlow's start-up
    # lines are silenced while the package loads.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "tfaccel_command", *argv],
                          capture_output=True, text=True, env=env, timeout=300)
    if argv == ["nonsense"]:
        assert proc.returncode == 2
        assert "oneDNN" not in proc.stderr and "cuda" not in proc.stderr.lower()
        assert "invalid choice" in proc.stderr
        return
    assert proc.returncode == 0 and "usage:" in proc.stdout
    assert proc.stderr == ""
