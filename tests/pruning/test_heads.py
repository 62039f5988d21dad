"""Attention-head pruning removes whole heads and keeps the others' function."""

import keras
import numpy as np
import pytest

import tfaccel
from tests.tiny_models import load_digits_split, make_transformer_block
from tfaccel.pruning.head_wrapper import PruneHeads
from tfaccel.pruning.heads import head_importance, prune_heads
from tfaccel.schedules import ConstantSparsity, PolynomialDecay

EVERY_STEP = ConstantSparsity(0.5, begin_step=0, frequency=1)


@pytest.fixture(scope="module")
def rows():
    return load_digits_split()[0][:64, :, :, 0]


def _block(heads=4):
    keras.utils.set_random_seed(0)
    return make_transformer_block(dim=16, heads=heads)


def _attention(model):
    (layer,) = [
        lay for lay in model.layers if isinstance(lay, keras.layers.MultiHeadAttention)
    ]
    return layer


def test_pruned_model_equals_the_original_with_those_heads_zeroed(rows):
    model = _block(heads=4)
    small = prune_heads(model, 0.5)
    mha, kept = _attention(model), _attention(small)
    assert kept.num_heads == 2
    assert small.count_params() < model.count_params()
    order = np.argsort(-head_importance(mha), kind="stable")
    dropped = order[2:]
    # Zero the dropped heads' output rows in the original: same function.
    kernel, *rest = mha._output_dense.get_weights()
    kernel[dropped] = 0.0
    mha._output_dense.set_weights([kernel, *rest])
    np.testing.assert_allclose(
        small.predict(rows, verbose=0), model.predict(rows, verbose=0), atol=1e-5
    )
    # The kept heads' query slices, in order.
    np.testing.assert_array_equal(
        kept._query_dense.get_weights()[0],
        mha._query_dense.get_weights()[0][:, np.sort(order[:2])],
    )


def test_original_is_untouched_and_one_head_always_stays(rows):
    model = _block(heads=2)
    before = [w.copy() for w in model.get_weights()]
    small = prune_heads(model, 0.9)
    assert _attention(small).num_heads == 1
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_are_named():
    model = _block()
    with pytest.raises(ValueError, match="`fraction` must be in"):
        prune_heads(model, 1.0)
    mlp = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no selected MultiHeadAttention"):
        prune_heads(mlp, 0.5)


# -- prune(structure="heads"): heads masked inside fit, sliced on strip ----


def _digits_rows():
    x, y, _, _ = load_digits_split()
    return x[:256, :, :, 0], y[:256]


def _heads_mask(model):
    return keras.ops.convert_to_numpy(_wrapper(model).head_mask)


def _wrapper(model):
    (layer,) = [lay for lay in model.layers if isinstance(lay, PruneHeads)]
    return layer


def test_fit_reaches_the_head_fraction_at_the_schedule_steps():
    x, y = _digits_rows()
    pruned = tfaccel.prune(
        _block(heads=4), PolynomialDecay(0.0, 0.5, 0, 6, frequency=2),
        structure="heads",
    )
    wrapper = _wrapper(pruned)
    assert wrapper.structure == "heads" and wrapper.name == "multi_head_attention"
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    # 32 samples per batch: 8 steps per epoch. After 3 calls the schedule
    # (evaluated at steps 1..3, pruning at 2) asks round(0.5*(1-(1-2/6)^3)*4)=1.
    pruned.fit(x[:96], y[:96], batch_size=32, epochs=1, verbose=0)
    assert int(wrapper.step.numpy()) == 3
    assert (_heads_mask(pruned) == 0).sum() == 1
    pruned.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert int(wrapper.step.numpy()) == 11
    assert (_heads_mask(pruned) == 0).sum() == 2
    assert wrapper.unfinished() is None
    sparsity = tfaccel.sparsity(pruned)
    for name in ("query", "key", "value", "attention_output"):
        assert sparsity[f"multi_head_attention/{name}/kernel"] == 0.5
    # The 4 Dense layers are listed as left dense, not mistaken for N:M misfits.
    assert list(sparsity.dense.values()) == ["not pruned: not selected by `layers`"] * 4


def test_masked_heads_contribute_nothing_and_strip_slices_them(rows):
    model = _block(heads=4)
    pruned = tfaccel.prune(model, EVERY_STEP, structure="heads")
    pruned(rows[:4], training=True)  # one training call masks 2 heads
    dropped = np.flatnonzero(_heads_mask(pruned) == 0)
    assert len(dropped) == 2
    expected = np.sort(np.argsort(-head_importance(_attention(model)))[2:])
    np.testing.assert_array_equal(dropped, expected)
    # Zeroing the dropped heads' output rows in the original: same outputs.
    mha = _attention(model)
    kernel, *rest = mha._output_dense.get_weights()
    kernel[dropped] = 0.0
    mha._output_dense.set_weights([kernel, *rest])
    masked = pruned.predict(rows, verbose=0)
    np.testing.assert_allclose(masked, model.predict(rows, verbose=0), atol=1e-5)
    small = tfaccel.strip_pruning(pruned)
    kept = _attention(small)
    assert kept.num_heads == 2 and kept.name == "multi_head_attention"
    assert small.count_params() < model.count_params()
    np.testing.assert_allclose(small.predict(rows, verbose=0), masked, atol=1e-5)


def test_keras_round_trip_mid_schedule_keeps_mask_and_step(rows, tmp_path):
    pruned = tfaccel.prune(
        _block(heads=4), PolynomialDecay(0.0, 0.75, 0, 10, frequency=1),
        structure="heads",
    )
    for _ in range(4):
        pruned(rows[:8], training=True)
    path = str(tmp_path / "heads.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(_wrapper(loaded), PruneHeads)
    assert int(_wrapper(loaded).step.numpy()) == 4
    np.testing.assert_array_equal(_heads_mask(loaded), _heads_mask(pruned))
    assert _wrapper(loaded).schedule == _wrapper(pruned).schedule
    np.testing.assert_allclose(
        loaded.predict(rows, verbose=0), pruned.predict(rows, verbose=0), atol=1e-6
    )
    for model in (pruned, loaded):  # both continue the same schedule
        for _ in range(6):
            model(rows[:8], training=True)
    np.testing.assert_array_equal(_heads_mask(loaded), _heads_mask(pruned))
    assert (_heads_mask(loaded) == 0).sum() == 3


def test_layers_that_cannot_lose_heads_are_refused():
    with pytest.raises(ValueError, match="has none selected"):
        tfaccel.prune(
            keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]),
            EVERY_STEP, structure="heads",
        )
    inputs = keras.Input((6, 8))
    gated = keras.layers.MultiHeadAttention(2, 4, use_gate=True, name="gated")
    model = keras.Model(inputs, gated(inputs, inputs))
    with pytest.raises(ValueError, match="without gating.*layer='gated'"):
        tfaccel.prune(model, EVERY_STEP, structure="heads")
    with pytest.raises(ValueError, match="PruneHeads.*MultiHeadAttention"):
        PruneHeads(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="allocation='erk'"):
        tfaccel.prune(_block(), EVERY_STEP, structure="heads", allocation="erk")
    already = tfaccel.prune(_block(), EVERY_STEP, structure="heads")
    with pytest.raises(ValueError, match="already pruned"):
        tfaccel.prune(already, EVERY_STEP, structure="heads")


def test_two_replicas_agree_on_the_head_mask(two_cpus):
    x, y = _digits_rows()
    keras.utils.set_random_seed(0)
    with two_cpus.scope():
        pruned = tfaccel.prune(
            make_transformer_block(dim=16, heads=4), EVERY_STEP, structure="heads"
        )
        pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    pruned.fit(x, y, batch_size=64, epochs=1, verbose=0)
    wrapper = _wrapper(pruned)
    replicas = [
        v.numpy() for v in two_cpus.experimental_local_results(wrapper.head_mask.value)
    ]
    assert len(replicas) == 2
    np.testing.assert_array_equal(replicas[0], replicas[1])
    assert (replicas[0] == 0).sum() == 2
    assert int(keras.ops.convert_to_numpy(wrapper.step)) == 4


def test_export_strips_the_masked_heads_into_a_smaller_file(rows, tmp_path):
    model = _block(heads=4)
    pruned = tfaccel.prune(model, EVERY_STEP, structure="heads")
    pruned(rows[:4], training=True)
    full = tfaccel.export_tflite(model, str(tmp_path / "full.tflite"), verify=False)
    report = tfaccel.export_tflite(
        pruned, str(tmp_path / "heads.tflite"), verification_data=rows,
        tolerance={"max_error": 1e-4},
    )
    assert report.bytes < full.bytes  # 2 heads' projections are gone
