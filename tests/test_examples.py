"""Every example runs as a user runs it (a subprocess) and writes its files.

The three examples start together (each is one process importing
TensorFlow and training for one epoch) so the whole check costs about as
much as the slowest of them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# example -> files it must write into its output directory.
EXAMPLES = {
    "add_to_existing_training": ["digits_int8.tflite", "digits_trained.keras"],
    "distillation": ["digits_student.keras", "digits_student.tflite"],
    "mobile_export": ["digits_int8.tflite", "digits_float16.tflite", "labels.txt",
                      "digits_int8.json"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Runs all examples concurrently; name -> (returncode, output, out_dir)."""
    procs = {}
    for name in EXAMPLES:
        out_dir = tmp_path_factory.mktemp(name)
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TFACCEL_EXAMPLE_EPOCHS": "1",
            "TFACCEL_EXAMPLE_OUT_DIR": str(out_dir),
            # Two processes on two cores: keep TF from oversubscribing them.
            "TF_NUM_INTRAOP_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1",
        }
        log = open(out_dir / "log.txt", "w+")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / f"{name}.py")],
            cwd=out_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        procs[name] = (proc, log, out_dir)
    results = {}
    for name, (proc, log, out_dir) in procs.items():
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        log.seek(0)
        results[name] = (code, log.read(), out_dir)
        log.close()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_and_writes_its_artifacts(finished, name):
    code, output, out_dir = finished[name]
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    for artifact in EXAMPLES[name]:
        path = out_dir / artifact
        assert path.is_file() and path.stat().st_size > 0, f"{artifact} missing"
    # Nothing written outside the requested directory.
    assert not (out_dir / "saved_models").exists()


@pytest.mark.slow
def test_mobile_export_sidecar_matches_the_int8_file(finished):
    from ai_edge_litert.interpreter import Interpreter

    code, output, out_dir = finished["mobile_export"]
    assert code == 0, output[-3000:]
    sidecar = json.loads((out_dir / "digits_int8.json").read_text())
    interpreter = Interpreter(model_path=str(out_dir / sidecar["model"]))
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    assert inp["dtype"].__name__ == sidecar["input"]["dtype"] == "int8"
    assert inp["quantization"] == pytest.approx(
        (sidecar["input"]["scale"], sidecar["input"]["zero_point"]))
    assert out["quantization"] == pytest.approx(
        (sidecar["output"]["scale"], sidecar["output"]["zero_point"]))
    labels = (out_dir / "labels.txt").read_text().split()
    assert labels == [str(d) for d in range(10)]


def test_examples_document_their_change():
    """The docstrings carry what a reader comes for (kept honest by the runs)."""
    add = (ROOT / "examples" / "add_to_existing_training.py").read_text()
    assert "```diff" in add and "+model = prune(" in add and "+model = quantize(" in add
    mobile = (ROOT / "examples" / "mobile_export.py").read_text()
    for text in ("zero_point", "Android", "iOS", "Metadata", 'input_type="int8"'):
        assert text in mobile
