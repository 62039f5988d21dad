"""inspect_tflite and ExportReport serialization."""

import json

import keras
import numpy as np
import pytest

from tfaccel.export import ExportReport, export_tflite, inspect_tflite


@pytest.fixture(scope="module")
def files(trained_cnn, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    x_train, _, x_test, _ = digits
    return {
        mode: export_tflite(
            trained_cnn,
            out / f"{mode}.tflite",
            mode,
            representative_data=x_train[:200] if mode == "int8" else None,
            verification_data=x_test[:200],
        )
        for mode in (None, "float16", "int8")
    }


def test_inspect_matches_export_structure(files):
    for mode, report in files.items():
        info = inspect_tflite(report.path)
        assert info.quantization == (mode or "float32")
        assert info.ops == report.ops
        assert info.bytes == report.bytes and info.gzip_bytes == report.gzip_bytes
        assert info.sparsity == report.sparsity
        assert not info.verified and info.agreement is None


def test_inspect_accepts_bytes_and_reads_weights(files):
    path = files["int8"].path
    with open(path, "rb") as f:
        info = inspect_tflite(f.read())
    assert info.path is None
    assert info.int8_coverage == 1.0
    assert info.inputs == [
        {"name": info.inputs[0]["name"], "shape": [-1, 8, 8, 1], "dtype": "float32"}
    ]
    assert len(info.tensor_sparsity) == 3  # two conv kernels and the dense kernel


def test_sparsity_counts_zero_weights(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    kernel = np.arange(1, 21, dtype="float32").reshape(4, 5)
    kernel[:, :2] = 0.0  # 8 of 20 weights
    model.layers[0].set_weights([kernel, np.zeros(5, "float32")])
    for mode in (None, "dynamic"):
        report = export_tflite(model, tmp_path / f"{mode}.tflite", mode)
        assert report.sparsity == pytest.approx(8 / 20)
    assert report.ops == {"FULLY_CONNECTED": {"float32": 1}}  # too small to quantize


def test_inspect_errors(tmp_path):
    with pytest.raises(
        ValueError, match="`path` must be a .tflite file.*is a directory"
    ):
        inspect_tflite(tmp_path)
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"not a flatbuffer" * 4)
    with pytest.raises(ValueError, match="`path` must hold a TFLite flatbuffer model"):
        inspect_tflite(bogus)
    with pytest.raises(FileNotFoundError):
        inspect_tflite(tmp_path / "missing.tflite")


def test_report_json_round_trip(files):
    report = files["int8"]
    data = json.loads(report.to_json())
    assert data["quantization"] == "int8"
    assert data["ops"]["CONV_2D"] == {"int8": 2}
    assert data["agreement"] == report.agreement
    assert data["num_samples"] == 200
    assert ExportReport(**data) == report


def test_report_markdown_and_str(files):
    report = files["float16"]
    text = report.to_markdown()
    assert "| quantization | float16 |" in text
    assert "| DEQUANTIZE | float16 | 6 |" in text
    assert f"| top-1 agreement | {report.agreement:.2%} |" in text
    summary = str(report)
    assert summary.startswith("ExportReport")
    assert f"{report.bytes:,} bytes" in summary and "DEQUANTIZE[float16] x6" in summary
    assert report.op_counts["CONV_2D"] == 2
