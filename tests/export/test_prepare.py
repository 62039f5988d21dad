"""The export chain: steps registered by features, run in order."""

import subprocess
import sys

import keras
import numpy as np

from tfaccel.export import export_tflite, prepare


def test_a_registered_step_runs_and_notes(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "_STEPS", dict(prepare._STEPS))
    seen = []

    def apply(model, notes):
        seen.append(model.name)
        notes.append("test step ran")
        return model

    prepare.register_export_step(
        "test_step", lambda m: m.name == "tagged", apply, order=5
    )
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(2)], name="tagged"
    )
    report = export_tflite(model, tmp_path / "m.tflite", verify=False)
    assert seen == ["tagged"]
    assert "test step ran" in report.notes
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    export_tflite(other, tmp_path / "n.tflite", verify=False)
    assert seen == ["tagged"]  # `applies` said no


def test_steps_run_by_order():
    names = [s.name for s in sorted(prepare._STEPS.values(), key=lambda s: s.order)]
    core = [n for n in names if n in ("distiller", "strip_pruning", "float32")]
    assert core == ["distiller", "strip_pruning", "float32"]


def test_the_feature_steps_register_on_import_in_a_fresh_process():
    code = (
        "from tfaccel.export import prepare\n"
        "import keras\n"
        "m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])\n"
        "prepare.prepare_for_export(m, [])\n"
        "print(sorted(prepare._STEPS))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "'distiller', 'float32', 'fuse_lstm', 'strip_pruning', 'unroll_recurrent'" in out


def test_a_step_with_an_option_is_skipped_when_the_option_is_false():
    seen = []
    prepare.register_export_step(
        "optional_probe", lambda m: True, lambda m, notes: seen.append(1) or m,
        order=98, option="probe_option",
    )
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        prepare.prepare_for_export(model, [], {"probe_option": False})
        assert seen == []
        prepare.prepare_for_export(model, [])  # options default to on
        prepare.prepare_for_export(model, [], {"probe_option": True})
        assert seen == [1, 1]
    finally:
        del prepare._STEPS["optional_probe"]


def test_prepare_leaves_a_plain_model_alone():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    notes = []
    assert prepare.prepare_for_export(model, notes) is model
    assert notes == []
    np.testing.assert_array_equal(model.get_weights()[1], np.zeros(2))
