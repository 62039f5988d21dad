"""Pruning LSTM, GRU, SimpleRNN and Bidirectional kernels and recurrent kernels."""

import keras
import numpy as np
import pytest

from tests.recurrent_models import (
    bilstm_classifier,
    digit_tokens,
    text_classifier,
    train,
)
from tfaccel._warnings import TfaccelWarning
from tfaccel.pruning import prune, sparsity, strip_pruning
from tfaccel.pruning.registry import prunable_weights
from tfaccel.schedules import ConstantSparsity, PolynomialDecay

L = keras.layers
EVERY_STEP = ConstantSparsity(0.5, begin_step=1, frequency=1)


@pytest.fixture(scope="module")
def tokens():
    return digit_tokens()


def test_lstm_text_classifier_prunes_trains_strips_and_round_trips(tokens, tmp_path):
    keras.utils.set_random_seed(0)
    pruned = prune(text_classifier(), PolynomialDecay(0.0, 0.6, 0, 40, frequency=5))
    assert type(pruned.get_layer("lstm")).__name__ == "PruneLowMagnitude"
    train(pruned, tokens, epochs=3)  # 66 steps, past end_step
    view = sparsity(pruned)
    for key in ("lstm/lstm_cell/kernel", "lstm/lstm_cell/recurrent_kernel"):
        assert view[key] == pytest.approx(0.6, abs=0.01), key
    assert view.dense == {}
    x_test, y_test = tokens[2], tokens[3]
    accuracy = float(np.mean(pruned.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert accuracy > 0.5  # real digits, 10 classes: chance is 0.1
    plain = strip_pruning(pruned)
    assert type(plain.get_layer("lstm")) is L.LSTM
    np.testing.assert_allclose(
        plain.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-5
    )
    assert sparsity(plain) == view
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    assert sparsity(loaded) == view
    np.testing.assert_allclose(
        loaded.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-6
    )


@pytest.mark.parametrize(
    "layer, keys",
    [
        (L.Bidirectional(L.LSTM(8), name="bilstm"),
         ["bilstm/forward_lstm/lstm_cell/kernel",
          "bilstm/forward_lstm/lstm_cell/recurrent_kernel",
          "bilstm/backward_lstm/lstm_cell/kernel",
          "bilstm/backward_lstm/lstm_cell/recurrent_kernel"]),
        (L.GRU(8, name="gru"), ["gru/gru_cell/kernel", "gru/gru_cell/recurrent_kernel"]),
        (L.SimpleRNN(8, name="rnn"),
         ["rnn/simple_rnn_cell/kernel", "rnn/simple_rnn_cell/recurrent_kernel"]),
        (L.RNN(L.StackedRNNCells([L.LSTMCell(8), L.GRUCell(8)]), name="stacked"),
         None),
    ],
)
def test_every_recurrent_kernel_is_pruned_never_the_bias(tokens, layer, keys):
    model = text_classifier(layer)
    pruned = prune(model, EVERY_STEP, structure="2:4")
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(tokens[0][:64], tokens[1][:64], batch_size=32, verbose=0, epochs=1)
    wrapper = pruned.get_layer(layer.name)
    pruned_vars = [v for v, _ in wrapper._pruned]
    assert len(pruned_vars) == (4 if keys is None else len(keys))
    assert all("kernel" in v.name and "bias" not in v.name for v in pruned_vars)
    view = sparsity(pruned)
    recurrent = {k: v for k, v in view.items() if k.startswith(layer.name + "/")}
    if keys is not None:
        assert sorted(recurrent) == sorted(keys)
    assert len(recurrent) == len(pruned_vars)  # one key per weight
    for _, value in wrapper.masked_weights():
        groups = (value.reshape(-1, 4, value.shape[-1]) != 0).sum(1)
        np.testing.assert_array_equal(groups, 2)  # 2 of every 4 inputs kept


def test_a_layer_with_kernels_and_no_rule_warns_by_name():
    inputs = keras.Input((8, 8, 1))
    x = L.ConvLSTM1D(4, 3, name="conv_lstm")(inputs)
    x = L.Flatten()(x)
    model = keras.Model(inputs, L.Dense(10, name="logits")(x))
    assert prunable_weights(model.get_layer("conv_lstm")) == []
    with pytest.warns(TfaccelWarning, match=r"no pruning rule.*'conv_lstm' \(ConvLSTM1D: .*kernel"):
        pruned = prune(model)
    assert [type(layer).__name__ for layer in pruned.layers][1:2] == ["ConvLSTM1D"]


def test_bilstm_pruned_model_exports(tokens, tmp_path):
    from tfaccel.export import export_tflite

    keras.utils.set_random_seed(0)
    pruned = train(prune(bilstm_classifier(), EVERY_STEP), tokens, epochs=1)
    report = export_tflite(pruned, tmp_path / "m.tflite", verification_data=tokens[2][:64],
                           tolerance={"min_agreement": 0.99})
    assert report.sparsity == pytest.approx(0.5, abs=0.05)


def test_pruning_callback_prunes_recurrent_kernels_in_place(tokens):
    from tfaccel.callbacks import Pruning

    keras.utils.set_random_seed(0)
    model = bilstm_classifier()
    train(model, tokens, epochs=1, callbacks=[Pruning(EVERY_STEP)])
    view = sparsity(model)
    keys = [k for k in view if k.startswith("bilstm/")]
    assert len(keys) == 4  # kernel and recurrent kernel, both directions
    for key in keys:
        assert view[key] == pytest.approx(0.5, abs=0.01), key


def _stacked_recurrent(merge_mode="concat"):
    """Embedding, Bidirectional(LSTM) sequences, LSTM sequences, GRU, Dense."""
    inputs = keras.Input((8, 8), dtype="int32")
    x = L.Reshape((8, 32))(L.Embedding(17, 4)(inputs))
    x = L.Bidirectional(L.LSTM(12, return_sequences=True, dropout=0.1),
                        merge_mode=merge_mode, name="bi")(x)
    x = L.LSTM(10, return_sequences=True, name="lstm")(x)
    x = L.GRU(6, name="gru")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x))


def test_lstm_units_are_channel_pruned_and_shrunk_exactly(tokens, tmp_path):
    from tfaccel.export import export_tflite
    from tfaccel.pruning.channels import (
        PruneChannels,
        channel_fractions,
        prune_channels,
    )

    keras.utils.set_random_seed(0)
    model = _stacked_recurrent()
    with pytest.warns(TfaccelWarning, match=r"keeps every unit of the recurrent layers 'gru' \(GRU\)"):
        pruned = prune_channels(model, 0.5)
    assert isinstance(pruned.get_layer("bi_channels"), PruneChannels)
    assert isinstance(pruned.get_layer("lstm_channels"), PruneChannels)
    train(pruned, tokens, epochs=1)
    assert channel_fractions(pruned) == {"bi_channels": 0.5, "lstm_channels": 0.5}
    x = tokens[2][:64]
    # A masked unit's h is exactly zero at every timestep.
    bi = pruned.get_layer("bi_channels")
    h = keras.Model(pruned.inputs, bi.output).predict(x, verbose=0)
    masked = np.asarray(bi.mask) == 0
    assert masked.sum() == 12 and np.all(h[..., masked] == 0) and np.any(h[..., ~masked] != 0)
    want = pruned.predict(x, verbose=0)
    small = strip_pruning(pruned)
    units = [small.get_layer("bi").forward_layer.units, small.get_layer("bi").backward_layer.units]
    assert units == [6, 6] and small.get_layer("lstm").units == 5
    assert small.get_layer("lstm").cell.kernel.shape == (12, 20)  # its input rows sliced
    assert small.get_layer("gru").cell.kernel.shape == (5, 18)
    assert small.count_params() < 0.5 * model.count_params()
    np.testing.assert_allclose(small.predict(x, verbose=0), want, atol=1e-5)
    report = export_tflite(small, tmp_path / "m.tflite", verification_data=x)
    assert report.ops["UNIDIRECTIONAL_SEQUENCE_LSTM"] == {"float32": 3}
    assert report.max_abs_error < 1e-4


def test_a_channel_pruned_lstm_round_trips_through_keras_files(tokens, tmp_path):
    from tfaccel.pruning.channels import prune_channels

    keras.utils.set_random_seed(0)
    pruned = train(prune_channels(text_classifier(units=8), 0.25), tokens, epochs=1)
    pruned.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(back.get_layer("lstm_channels").mask,
                                  pruned.get_layer("lstm_channels").mask)
    x = tokens[2][:32]
    np.testing.assert_allclose(back.predict(x, verbose=0), pruned.predict(x, verbose=0),
                               atol=1e-6)


def test_lstms_whose_units_cannot_be_removed_are_named():
    from tfaccel.pruning.channels import prune_channels

    model = _stacked_recurrent(merge_mode="sum")
    with pytest.warns(TfaccelWarning, match=r"'bi' \(Bidirectional\), 'gru' \(GRU\)"):
        pruned = prune_channels(model, 0.5)
    assert type(pruned.get_layer("bi")) is L.Bidirectional  # kept whole
    assert type(pruned.get_layer("lstm_channels")).__name__ == "PruneChannels"
    with pytest.raises(ValueError, match=r"'bi' \(Bidirectional\) cannot be channel-pruned.*"
                       r"joined by 'concat'.*Prune a recurrent layer's kernels"):
        prune_channels(model, 0.5, layers="bi")


def test_both_directions_keep_as_many_units_before_a_dense_layer(tokens):
    from tfaccel.pruning.channels import prune_channels

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8), dtype="int32")
    x = L.Reshape((8, 32))(L.Embedding(17, 4)(inputs))
    x = L.Bidirectional(L.LSTM(6, return_sequences=True), name="first")(x)
    x = L.Bidirectional(L.LSTM(6), name="second")(x)
    pruned = prune_channels(keras.Model(inputs, L.Dense(10, name="logits")(x)), 0.5)
    train(pruned, tokens, epochs=1)
    # Unequal masks (5 forward units against 1 backward): shrink removes one
    # from each direction and keeps the other four forward units, zeroed.
    pruned.get_layer("second_channels").mask.assign(
        np.array([0, 0, 0, 0, 0, 1] + [1, 1, 0, 1, 1, 1], "float32"))
    x_test = tokens[2][:64]
    want = pruned.predict(x_test, verbose=0)
    small = strip_pruning(pruned)
    second = small.get_layer("second")
    assert second.forward_layer.units == second.backward_layer.units == 5
    assert small.get_layer("logits").kernel.shape == (10, 10)
    np.testing.assert_allclose(small.predict(x_test, verbose=0), want, atol=1e-5)


def test_a_constant_left_by_removed_channels_folds_into_the_lstm_bias(tokens):
    from tfaccel.pruning.channels import prune_channels

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8), dtype="int32")
    x = L.Reshape((8, 32))(L.Embedding(17, 4)(inputs))
    x = L.Dense(12, activation="relu", name="features")(x)
    x = L.LSTM(6, name="lstm")(x + 1.0)  # a removed feature reads 1.0, not 0
    pruned = prune_channels(keras.Model(inputs, L.Dense(10, name="logits")(x)), 0.5,
                            layers="features")
    train(pruned, tokens, epochs=1)
    x_test = tokens[2][:64]
    want = pruned.predict(x_test, verbose=0)
    small = strip_pruning(pruned)
    assert small.get_layer("lstm").cell.kernel.shape == (6, 24)
    np.testing.assert_allclose(small.predict(x_test, verbose=0), want, atol=1e-5)
