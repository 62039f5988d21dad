"""Models nobody here wrote, through every graph rewrite.

Operators between layers (`x + y`, `x * sigmoid(g)`, `x + 3.0`), layers
called with keywords (`MultiHeadAttention(query=, value=, key=)`), a layer
shared by two branches, nested models and keras.applications MobileNetV3:
each through `prune` (unstructured and 2:4), `strip_pruning`, `quantize`,
int8 export and a `.keras` round trip.
"""

import os
import warnings

import keras
import numpy as np
import pytest

import tfaccel
from tfaccel.schedules import ConstantSparsity

EVERY_STEP = ConstantSparsity(0.5, begin_step=0, frequency=1)
L = keras.layers


def residual_gated():
    """keras.io style: residual `x + y` and a gate `x * sigmoid(g)`."""
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = L.Conv2D(8, 3, padding="same")(x)
    x = L.ReLU()(x + y)
    gate = L.Conv2D(8, 1)(x)
    x = x * keras.ops.sigmoid(gate)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x), name="residual_gated")


def transformer_block():
    """keras.io style: keyword attention, `LayerNormalization()(x + inputs)`."""
    inputs = keras.Input((8, 8))
    x = L.Dense(16)(inputs)
    attention = L.MultiHeadAttention(num_heads=2, key_dim=8)(query=x, value=x, key=x)
    x = L.LayerNormalization()(x + attention)
    ffn = L.Dense(16)(L.Dense(32, activation="relu")(x))
    x = L.LayerNormalization()(x + ffn)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(10)(x), name="transformer_block")


def shared_branches():
    """One Dense layer applied to two branches."""
    inputs = keras.Input((8, 8, 1))
    flat = L.Flatten()(inputs)
    shared = L.Dense(16, activation="relu", name="shared")
    a = shared(flat)
    b = shared(L.Dense(64, name="proj")(flat))
    x = L.Concatenate()([a, b])
    return keras.Model(inputs, L.Dense(10, name="head")(x), name="shared_branches")


def nested():
    """A Sequential feature extractor inside a functional model."""
    features = keras.Sequential(
        [keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu"), L.Flatten()],
        name="features",
    )
    inputs = keras.Input((8, 8, 1))
    x = L.Dense(16, activation="relu")(features(inputs))
    return keras.Model(inputs, L.Dense(10)(x), name="nested")


def mobilenet_v3_small():
    return keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10
    )


def _data(model, n=32, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, *model.inputs[0].shape[1:])
    return rng.random(shape, dtype="float32")


def _kernels_at(model, target):
    found = tfaccel.sparsity(model)
    assert found, "no prunable weight found"
    for key, value in found.items():
        assert value == pytest.approx(target, abs=0.02), key
    return found


MODELS = [residual_gated, transformer_block, shared_branches, nested]


# MobileNetV3Large and the rest of keras.applications run in the coverage
# matrix (benchmarks/coverage.py); `make test` keeps the small variant.
@pytest.mark.parametrize(
    "build", MODELS + [mobilenet_v3_small], ids=lambda f: f.__name__
)
def test_prune_strip_round_trip(build, tmp_path):
    model = build()
    x = _data(model)
    pruned = tfaccel.prune(model, EVERY_STEP)
    pruned(x, training=True)  # one training call: masks reach 50%
    _kernels_at(pruned, 0.5)
    expected = np.asarray(pruned(x, training=False))
    path = os.path.join(tmp_path, "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False), expected, rtol=1e-5, atol=1e-5)
    plain = tfaccel.strip_pruning(pruned)
    assert not tfaccel.pruning.base.pruning_wrappers(plain)
    np.testing.assert_allclose(plain(x, training=False), expected, rtol=1e-5, atol=1e-5)
    _kernels_at(plain, 0.5)
    # The original is untouched.
    assert all(v == 0.0 for v in tfaccel.sparsity(model).values())


@pytest.mark.parametrize("build", MODELS + [mobilenet_v3_small], ids=lambda f: f.__name__)
def test_two_four(build):
    model = build()
    x = _data(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = tfaccel.prune(model, EVERY_STEP, structure="2:4")
    pruned(x, training=True)
    wrapped = tfaccel.pruning.base.pruning_wrappers(pruned)
    assert wrapped
    for wrapper in wrapped:
        for variable, axis in wrapper._pruned:
            mask = np.moveaxis(wrapper.masks[wrapper._pruned.index((variable, axis))].numpy(), axis, -1)
            groups = mask.reshape(-1, 4)
            np.testing.assert_array_equal(groups.sum(axis=-1), 2)
    skipped = [w for w in caught if "left dense" in str(w.message)]
    if build is mobilenet_v3_small:
        # The RGB stem conv has 3 input channels: left dense, and said so.
        assert skipped and "'conv'" in str(skipped[0].message)


def test_two_four_stem_named_is_an_error():
    model = mobilenet_v3_small()
    with pytest.raises(ValueError, match=r"needs M=4.*'conv'.*\(3, 3, 3, 16\)"):
        tfaccel.prune(model, EVERY_STEP, structure="2:4", layers=["conv"])


def test_shared_layer_steps_once_per_training_step():
    model = shared_branches()
    schedule = ConstantSparsity(0.5, begin_step=2, frequency=1)
    pruned = tfaccel.prune(model, schedule)
    shared = pruned.get_layer("shared")
    assert shared.calls_per_step == 2
    x = _data(model)
    pruned(x, training=True)  # two calls of `shared`: one step, step 1
    assert shared.steps_done() == 1
    assert tfaccel.sparsity(pruned)["shared/kernel"] == 0.0
    pruned(x, training=True)  # step 2: the schedule begins
    assert shared.steps_done() == 2
    assert tfaccel.sparsity(pruned)["shared/kernel"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "build, skip",
    [
        (residual_gated, None),
        (transformer_block, [L.MultiHeadAttention, L.LayerNormalization]),
        (shared_branches, None),
        (nested, None),
        (mobilenet_v3_small, None),
    ],
    ids=lambda v: getattr(v, "__name__", "skip"),
)
def test_quantize_export_round_trip(build, skip, tmp_path):
    model = build()
    x = _data(model, n=64)
    qat = tfaccel.quantize(model, calibration_data=x, skip=skip)
    assert tfaccel.quantization.is_quantized(qat)
    expected = np.asarray(qat(x, training=False))
    path = os.path.join(tmp_path, "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False), expected, rtol=1e-5, atol=1e-5)
    report = tfaccel.export_tflite(qat, os.path.join(tmp_path, "m.tflite"), "int8", verification_data=x)
    # Every compute op is int8, except the attention left float on purpose.
    assert report.int8_coverage == (1.0 if skip is None else pytest.approx(0.4))
    # The int8 file computes what the QAT model computes.
    spread = float(np.std(expected))
    assert report.max_abs_error <= 0.1 * spread, (report.max_abs_error, spread)


def test_quantize_twice_says_already_quantized():
    qat = tfaccel.quantize(residual_gated())
    with pytest.raises(ValueError, match="already quantized"):
        tfaccel.quantize(qat)


def test_operator_nodes_are_quantized():
    qat = tfaccel.quantize(residual_gated(), calibration_data=_data(residual_gated()))
    names = [layer.name for layer in qat.layers]
    # `x + y` and `x * sigmoid(g)` each get their own int8 output scale.
    assert any(name.startswith("add") and name.endswith("_quant") for name in names)
    assert any(name.startswith("multiply") and name.endswith("_quant") for name in names)
