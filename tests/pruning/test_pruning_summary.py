"""`PruningSummary`: reporting only, logs sparsity, warns on long schedules."""

import os

import keras
import pytest
import tensorflow as tf

from tests.tiny_models import make_cnn, make_mlp
from tfaccel._warnings import TfaccelWarning
from tfaccel.callbacks import PruningSummary
from tfaccel.pruning import prune
from tfaccel.schedules import ConstantSparsity, PolynomialDecay


def _model(end_step):
    model = prune(make_mlp(), PolynomialDecay(0.0, 0.8, 0, end_step, frequency=5))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_logs_sparsity_and_writes_tensorboard(digits, tmp_path):
    x, y, _, _ = digits
    model = _model(end_step=30)
    log_dir = str(tmp_path / "logs")
    with _no_tfaccel_warning():
        history = model.fit(
            x, y, batch_size=64, epochs=2, verbose=0, callbacks=[PruningSummary(log_dir)]
        )
    first, last = history.history["sparsity/dense/kernel"]
    assert 0.0 < first < 0.8 and last == pytest.approx(0.8, abs=1 / 2048)
    assert history.history["sparsity/dense_1/kernel"][-1] == pytest.approx(0.8, abs=1 / 320)
    (events,) = [
        os.path.join(root, f)
        for root, _, files in os.walk(log_dir)
        for f in files
        if f.startswith("events.out.tfevents")
    ]
    written = {}
    for event in tf.compat.v1.train.summary_iterator(events):
        for value in event.summary.value:
            assert value.metadata.plugin_data.plugin_name == "scalars"
            written[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    assert written[("sparsity/dense/kernel", 0)] == pytest.approx(first)
    assert written[("sparsity/dense/kernel", 1)] == pytest.approx(last)


def test_warns_when_schedule_outlasts_training(digits):
    x, y, _, _ = digits
    model = _model(end_step=100)
    with pytest.warns(TfaccelWarning, match=r"ends at step 100 but training stops at step 43 \(starting at step 0, 2 epochs x 22 steps\).*0.8 will not be reached"):
        model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[PruningSummary()])
    # A second fit starts from the current step (44): 44 + 3 * 22 - 1 = 109 >= 100.
    with _no_tfaccel_warning():
        model.fit(x, y, batch_size=64, epochs=3, verbose=0, callbacks=[PruningSummary()])


def test_warning_counts_only_the_epochs_fit_runs(digits):
    x, y, _, _ = digits
    model = _model(end_step=30)
    # Regression: 3 epochs would run steps 0..65 (>= 30), but a fit resumed
    # at initial_epoch=2 runs one epoch, steps 0..21 (< 30): it must warn.
    with pytest.warns(TfaccelWarning, match=r"stops at step 21 \(starting at step 0, 1 epochs x 22"):
        model.fit(
            x, y, batch_size=64, epochs=3, initial_epoch=2, verbose=0,
            callbacks=[PruningSummary()],
        )


def test_reports_channel_pruning(digits):
    # Regression: only PruneLowMagnitude was reported; channel wrappers
    # share the PruningWrapper interface and are logged and checked alike.
    x, y, _, _ = digits
    model = prune(
        make_cnn(),
        PolynomialDecay(0.0, 0.75, 0, 40, frequency=5),
        structure="channels",
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with _no_tfaccel_warning():
        history = model.fit(
            x, y, batch_size=64, epochs=2, verbose=0, callbacks=[PruningSummary()]
        )
    # 6 of 8 and 12 of 16 output channels at the end (steps 0..43 >= 40): a
    # masked channel zeroes a whole column of the kernel.
    for key in ("sparsity/conv2d/kernel", "sparsity/conv2d_1/kernel"):
        first, last = history.history[key]
        assert 0.0 < first < 0.75 and last == pytest.approx(0.75)
    late = prune(
        make_cnn(), PolynomialDecay(0.0, 0.5, 0, 100, frequency=5), structure="channels"
    )
    late.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(TfaccelWarning, match=r"conv2d_\d+_channels' ends at step 100"):
        late.fit(
            x[:640], y[:640], batch_size=64, epochs=1, verbose=0,
            callbacks=[PruningSummary()],
        )


class _no_tfaccel_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", TfaccelWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def test_layers_left_dense_by_2_4_are_logged_with_the_reason(digits):
    # The first conv has one input channel: 2:4 cannot tile it, so prune
    # leaves it dense with a warning; the summary shows it at 0 beside the
    # pruned ones, and says why.
    x, y, _, _ = digits
    with pytest.warns(TfaccelWarning, match="left dense.*'conv2d'"):
        model = prune(make_cnn(), ConstantSparsity(0.5, begin_step=1, frequency=1),
                      structure="2:4")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    summary = PruningSummary()
    history = model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0,
                        callbacks=[summary])
    assert history.history["sparsity/conv2d/kernel"] == [0.0]
    assert history.history["sparsity/dense/kernel"] == [0.5]
    assert list(summary.left_dense) == ["conv2d/kernel"]
    assert "needs M=4 to divide its input channels (axis -2 of shape (3, 3, 1, 8))" \
        in summary.left_dense["conv2d/kernel"]
