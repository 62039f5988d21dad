"""Issue 12 item 1: verification never passes garbage.

NaN/inf outputs (file or Keras side) always fail with `VerificationError`;
without `min_agreement`, a low agreement warns and is noted in the report;
the file is validated before the interpreter reads it.
"""

import os

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn
from tfaccel import TfaccelWarning
from tfaccel.export import VerificationError, export_tflite
from tfaccel.export.validate import InvalidTFLiteError


def _nan_model():
    # Finite weights, NaN outputs: sqrt of a negative number.
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3)(inputs)
    outputs = keras.layers.Lambda(lambda t: keras.ops.sqrt(t - 100.0))(hidden)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "tolerance", [{"min_agreement": 0.99, "max_error": 1e-3}, None]
)
def test_all_nan_outputs_fail_whatever_the_tolerance(tmp_path, tolerance):
    # Was: agreement 1.0 and max error 0.0 (NaN == NaN counted as no error).
    x = np.random.default_rng(0).random((32, 4), dtype="float32")
    with pytest.raises(VerificationError, match=r"has 96 NaN/inf value\(s\)") as info:
        export_tflite(
            _nan_model(),
            tmp_path / "m.tflite",
            verification_data=x,
            tolerance=tolerance,
        )
    assert "NaN/inf outputs always fail" in str(info.value)
    assert any("Rejected, not written" in n for n in info.value.report.notes)
    assert os.listdir(tmp_path) == []


def test_wrong_scale_int8_without_tolerance_warns(tmp_path, digits):
    # Was: an int8 file calibrated on 255x the data's scale (agreement far
    # below 90%) exported with no warning.
    x_train, y_train, x_test, _ = digits
    model = make_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    with pytest.warns(TfaccelWarning, match=r"agrees with the Keras model on only"):
        report = export_tflite(
            model,
            tmp_path / "m.tflite",
            "int8",
            representative_data=x_train[:200] * 255.0,
            verification_data=x_test[:200],
        )
    assert report.agreement < 0.9
    assert any("on only" in note for note in report.notes)
    assert not any("samples" in note for note in report.notes)  # 200 are enough
    assert (tmp_path / "m.tflite").exists()  # a warning, not a rejection
    # Few calibration samples are named as a cause too.
    with pytest.warns(TfaccelWarning, match=r"representative_data held 20 samples"):
        export_tflite(
            model,
            tmp_path / "few.tflite",
            "int8",
            representative_data=x_train[:20] * 255.0,
            verification_data=x_test[:200],
        )


def test_file_is_validated_before_the_interpreter_reads_it(tmp_path, monkeypatch):
    import tfaccel.export.validate as validate

    seen = []

    def refuse(path_or_bytes):
        seen.append(path_or_bytes)
        raise InvalidTFLiteError(str(path_or_bytes), "provoked")

    monkeypatch.setattr(validate, "validate_tflite", refuse)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x = np.random.default_rng(0).random((8, 4), dtype="float32")
    with pytest.raises(InvalidTFLiteError, match="provoked"):
        export_tflite(model, tmp_path / "m.tflite", verification_data=x)
    assert len(seen) == 1 and str(seen[0]).endswith(".tmp")
    assert os.listdir(tmp_path) == []
