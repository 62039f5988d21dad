"""Mixed precision: a pruned + QAT model trains and still exports int8."""

import keras
import numpy as np
import pytest

from tests.distribute import _helpers

pytestmark = pytest.mark.skipif(
    not (_helpers.can_prune() and _helpers.can_quantize() and _helpers.can_export()),
    reason="needs tfaccel.pruning, tfaccel.quantization and tfaccel.export",
)


@pytest.fixture
def policy(request):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"], indirect=True)
def test_pruned_qat_trains_and_exports_int8(policy, digits, tmp_path):
    from tfaccel.pruning import sparsity

    x, y, x_test, y_test = digits
    x, y = x[:640], y[:640]
    total = _helpers.steps(len(x), _helpers.BATCH, 2)
    model = _helpers.pruned_cnn(total)
    assert model.layers[1].dtype_policy.name == policy
    _helpers.compile_model(model)
    model.fit(x, y, batch_size=_helpers.BATCH, epochs=2, verbose=0)
    for value in sparsity(model).values():
        assert value == pytest.approx(_helpers.TARGET, abs=1e-3)
    for variable in model.variables:
        # State variables stay full precision under a mixed policy.
        if variable.name.endswith("_mask"):
            assert variable.dtype == "float32", variable.path

    qat = _helpers.quantized(model, x)
    _helpers.compile_model(qat)
    history = qat.fit(x, y, batch_size=_helpers.BATCH, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    accuracy = qat.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.6

    report = _helpers.export_int8(qat, str(tmp_path / "m.tflite"), x_test)
    assert report["quantization"] == "int8"
    assert report["int8_coverage"] == 1.0
    assert report["sparsity"] >= 0.45
    assert report["agreement"] >= 0.9
