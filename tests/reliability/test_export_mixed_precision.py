"""Issue 12 item 8: a mixed-precision model with a `Lambda` layer exports.

Its float32 twin was rebuilt by re-deserializing the user's own in-memory
model in safe mode ("pass safe_mode=False"). The in-memory model is the
user's own code; a `.keras` file is still loaded in safe mode.
"""

import keras
import numpy as np
import pytest

from tfaccel.export import export_tflite


@pytest.fixture
def mixed_lambda_model():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8)(inputs)
        hidden = keras.layers.Lambda(lambda t: t * 2.0)(hidden)
        outputs = keras.layers.Dense(3, dtype="float32")(hidden)
        return keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_mixed_precision_model_with_lambda_exports(tmp_path, mixed_lambda_model):
    x = np.random.default_rng(0).random((16, 4), dtype="float32")
    report = export_tflite(
        mixed_lambda_model,
        tmp_path / "m.tflite",
        verification_data=x,
        tolerance={"max_error": 5e-2},
    )
    assert any("Mixed-precision model" in note for note in report.notes)
    assert report.agreement == 1.0 or report.agreement > 0.9


def test_a_lambda_file_is_still_refused_in_safe_mode(tmp_path, mixed_lambda_model):
    export_tflite(mixed_lambda_model, tmp_path / "m.tflite", verify=False)
    path = tmp_path / "m.keras"
    mixed_lambda_model.save(path)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(path)
