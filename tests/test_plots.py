"""tfaccel.plots writes legible, decodable PNGs and rejects bad input."""

import sys
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("matplotlib")  # an optional dependency of tfaccel

from matplotlib.image import imread  # noqa: E402

from tfaccel import plots  # noqa: E402

VARIANTS = [
    {"name": "float32", "accuracy": 0.975, "bytes": 41_200, "gzip_bytes": 37_900},
    {"name": "pruned 80%", "accuracy": 0.971, "bytes": 41_200, "gzip_bytes": 12_300},
    {"name": "int8", "accuracy": 0.973, "bytes": 14_100, "gzip_bytes": 10_800},
    {"name": "pruned+int8", "accuracy": 0.969, "bytes": 14_100, "gzip_bytes": 4_900},
]


def _decode(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    # Non-trivial: many distinct colours, not a blank canvas.
    flat = (image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(flat, axis=0)) > 20
    assert image[..., :3].std() > 0.05
    return image


def test_accuracy_vs_size_png(tmp_path):
    path = plots.plot_accuracy_vs_size(VARIANTS, tmp_path / "acc.png")
    assert path == str(tmp_path / "acc.png")
    image = _decode(path)
    assert image.shape[:2] == (int(4.5 * 120), int(7.0 * 120))


def test_accuracy_vs_size_accepts_objects_and_partial_sizes(tmp_path):
    @dataclass
    class Row:
        name: str
        accuracy: float
        bytes: int | None = None
        gzip_bytes: int | None = None

    rows = [Row("a", 0.5, bytes=1000), Row("b", 0.6, gzip_bytes=500)]
    _decode(plots.plot_accuracy_vs_size(rows, tmp_path / "rows.png"))


def test_sparsity_per_layer_png_grows_with_layers(tmp_path):
    few = {"conv2d/kernel": 0.8, "dense/kernel": 0.8}
    many = {f"block_{i}/conv/kernel": i / 20 for i in range(20)}
    a = _decode(plots.plot_sparsity_per_layer(few, tmp_path / "few.png", target=0.8))
    b = _decode(plots.plot_sparsity_per_layer(many, tmp_path / "many.png"))
    assert a.shape[1] == b.shape[1] == 840
    assert b.shape[0] > a.shape[0]  # one readable row per weight


def test_sizes_png(tmp_path):
    sizes = {"Keras weights": 40_000.0, "TFLite file": 14_000.0, "TFLite gzip": 6_000.0}
    _decode(plots.plot_sizes(sizes, tmp_path / "sizes.png"))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: plots.plot_accuracy_vs_size([], p), r"`variants` must contain"),
        (lambda p: plots.plot_accuracy_vs_size([{"name": "x", "bytes": 1}], p),
         r"variants\[0\]` needs a 'accuracy'"),
        (lambda p: plots.plot_accuracy_vs_size([{"name": "x", "accuracy": 97.5,
                                                 "bytes": 1}], p),
         r"fraction in \[0, 1\]. Received: 97.5"),
        (lambda p: plots.plot_accuracy_vs_size([{"name": "x", "accuracy": 0.9}], p),
         r"needs 'bytes' or 'gzip_bytes'"),
        (lambda p: plots.plot_sparsity_per_layer({}, p), r"`sparsity_dict` must"),
        (lambda p: plots.plot_sparsity_per_layer({"k": 1.5}, p),
         r"sparsity_dict\['k'\]` must be a fraction .* Received: 1.5"),
        (lambda p: plots.plot_sparsity_per_layer({"k": 0.5}, p, target=80),
         r"`target` must be a fraction"),
        (lambda p: plots.plot_sizes({"a": -1}, p), r"must be >= 0 bytes"),
        (lambda p: plots.plot_sizes({"a": 1}, p.parent / "missing" / "x.png"),
         r"`path`: directory does not exist"),
    ],
)
def test_bad_input(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import` raise ImportError.
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"needs matplotlib.*pip install matplotlib"):
        plots.plot_sizes({"a": 1.0}, tmp_path / "x.png")
