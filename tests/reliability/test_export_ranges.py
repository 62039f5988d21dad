"""Issue 12 items 2 and 6 (export side): ranges are checked before the
converter, which crashed the process (SIGSEGV) on `[0, inf]` and gave a
message without "NaN" for a NaN range."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tests.tiny_models import make_mlp
from tfaccel.export import export_tflite
from tfaccel.quantization import quantize

_INF_RANGE = textwrap.dedent(
    """
    import os, sys
    import keras, numpy as np
    from tfaccel.export import export_tflite
    from tfaccel.quantization import ActivationQuantizer, quantize

    out = sys.argv[1]
    x = np.random.default_rng(0).random((32, 4), dtype="float32")
    qat = quantize(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]),
                   calibration_data=x)
    q = [l for l in qat._flatten_layers() if isinstance(l, ActivationQuantizer)][-1]
    q.range_max.assign(np.inf)
    qat.save(os.path.join(out, "inf.keras"))
    for model in (qat, keras.models.load_model(os.path.join(out, "inf.keras"))):
        try:
            export_tflite(model, os.path.join(out, "m.tflite"), verification_data=x)
        except ValueError as e:
            print("REFUSED:", str(e).splitlines()[0])
    print("FILES:", sorted(os.listdir(out)))
    """
)


@pytest.mark.slow
def test_inf_range_is_refused_before_the_converter(tmp_path):
    # A subprocess: before the fix the converter killed the process (-11).
    result = subprocess.run(
        [sys.executable, "-c", _INF_RANGE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    refused = [line for line in result.stdout.splitlines() if "REFUSED" in line]
    assert len(refused) == 2  # the in-memory model and the loaded .keras file
    for line in refused:
        assert "inf in " in line and "range_max" in line and "calibrate(" in line
    assert "FILES: ['inf.keras']" in result.stdout  # no orphan temp file


def test_nan_ranges_after_a_nan_batch_in_fit_are_named(tmp_path, digits):
    x, y = digits[0][:128].copy(), digits[1][:128]
    qat = quantize(make_mlp(), calibration_data=x[:64])
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x[100, 0, 0, 0] = np.nan  # in the 4th batch of 32
    qat.fit(
        x,
        y,
        batch_size=32,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    with pytest.raises(ValueError, match=r"NaN in .*range_(min|max).*calibrate\("):
        export_tflite(qat, tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_nan_range_is_named_with_what_to_do(tmp_path, digits):
    qat = quantize(make_mlp(), calibration_data=digits[0][:64])
    wrapper = next(w for w in qat.layers if hasattr(w, "output_quantizer"))
    wrapper.output_quantizer.range_min.assign(np.nan)
    with pytest.raises(
        ValueError,
        match=r"NaN in .*output_quantizer/range_min.*Recalibrate the quantization "
        r"ranges with tfaccel\.quantization\.calibrate",
    ):
        export_tflite(qat, tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []
