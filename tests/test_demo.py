"""The demo behind `make demo`, run short: every step works and reports."""

import os

import pytest

from tfaccel import demo


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    rows = demo.run(out_dir=str(tmp_path), epochs=2, seed=0)
    names = [r.variant for r in rows]
    assert names[0] == "dense float32"
    assert any("QAT int8" in n for n in names)
    assert any("distilled" in n for n in names)
    by_name = {r.variant: r for r in rows}
    pruned = by_name["pruned 80% float32"]
    int8 = by_name["pruned 80% + QAT int8"]
    dense = by_name["dense float32"]
    # 80% of the prunable weights are zero, in the Keras model and the file.
    assert pruned.sparsity == pytest.approx(0.8, abs=0.01)
    assert int8.sparsity == pytest.approx(0.8, abs=0.01)
    # Zeros compress; int8 is ~4x smaller than float32.
    assert pruned.gzip_bytes < 0.5 * dense.gzip_bytes
    assert int8.bytes < 0.4 * dense.bytes
    assert int8.agreement >= 0.98
    for name in (
        "digits_dense_float32.tflite",
        "digits_pruned_float32.tflite",
        "digits_pruned_int8.tflite",
        "digits_pruned.keras",
        "digits_dense_int8.tflite",
        "digits_pruned_int8_report.json",
        "accuracy_vs_size.png",
        "sparsity_per_layer.png",
    ):
        assert os.path.getsize(tmp_path / name) > 0
    table = capsys.readouterr().out
    assert "variant" in table and "gzip" in table and "agreement" in table
