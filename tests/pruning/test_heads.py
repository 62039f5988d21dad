"""Attention-head pruning removes whole heads and keeps the others' function."""

import keras
import numpy as np
import pytest

from tests.tiny_models import load_digits_split, make_transformer_block
from tfaccel.pruning.heads import head_importance, prune_heads


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
