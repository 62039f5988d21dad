"""Pins the public surface: what `import tfaccel` offers and where it lives."""

import subprocess
import sys

import keras
import numpy as np

import tfaccel

EXPECTED = {
    "ExportReport",
    "TfaccelWarning",
    "callbacks",
    "cluster",
    "distill",
    "distribute",
    "export_tflite",
    "inspect_tflite",
    "prune",
    "quantize",
    "schedules",
    "sparsity",
    "strip_clustering",
    "strip_pruning",
}


def test_top_level_names_are_pinned():
    assert set(tfaccel.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(tfaccel, name) is not None, name


def test_subpackages_export_what_they_list():
    import tfaccel.callbacks
    import tfaccel.clustering
    import tfaccel.distillation
    import tfaccel.distribute
    import tfaccel.export
    import tfaccel.graph
    import tfaccel.pruning
    import tfaccel.quantization

    for module in (
        tfaccel.callbacks,
        tfaccel.clustering,
        tfaccel.distillation,
        tfaccel.distribute,
        tfaccel.export,
        tfaccel.graph,
        tfaccel.pruning,
        tfaccel.quantization,
    ):
        assert module.__all__, module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
    assert {"ConstantSparsity", "PolynomialDecay", "PruningSchedule"} <= set(
        tfaccel.schedules.__all__
    )


def test_saved_model_loads_in_a_fresh_process_with_plain_keras(tmp_path):
    """A pruned+QAT `.keras` file loads with `keras.models.load_model` alone
    once tfaccel is imported (which registers its classes), as any Keras
    plugin; no custom_objects, no scope."""
    from tests.tiny_models import make_cnn

    x = np.random.default_rng(0).random((32, 8, 8, 1), dtype="float32")
    pruned = tfaccel.prune(make_cnn(), tfaccel.schedules.ConstantSparsity(0.5))
    qat = tfaccel.quantize(tfaccel.strip_pruning(pruned), calibration_data=x)
    path = str(tmp_path / "m.keras")
    qat.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(qat(x)))
    script = (
        "import numpy as np, keras, tfaccel\n"
        f"m = keras.models.load_model({path!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"y = np.load({str(tmp_path / 'y.npy')!r})\n"
        "np.testing.assert_allclose(keras.ops.convert_to_numpy(m(x)), y, atol=1e-5)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_api_reference_is_current():
    """docs/api.md is generated from the docstrings: regenerate with `make docs`."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "gen_api", os.path.join(root, "docs", "gen_api.py")
    )
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    with open(os.path.join(root, "docs", "api.md")) as f:
        assert f.read() == gen_api.render(), "docs/api.md is stale: run `make docs`"
