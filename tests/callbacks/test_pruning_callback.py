"""The `Pruning` callback: any model, the same masks as `prune`, exact zeros."""

import keras
import numpy as np
import pytest

import tfaccel
from tests.distribute._helpers import compile_model
from tests.tiny_models import make_cnn, make_mlp
from tfaccel.callbacks import Pruning
from tfaccel.callbacks.pruning import last_pruning_step
from tfaccel.schedules import ConstantSparsity, PolynomialDecay

BATCH = 64  # 1400 digits -> 22 steps per epoch
TARGET = 0.8
SCHEDULE = PolynomialDecay(0.0, TARGET, begin_step=0, end_step=30, frequency=4)


def _compile(model, **kwargs):
    compile_model(model, **kwargs)  # Adam(1e-2), cross-entropy, accuracy
    return model


def _zeros(model):
    """weight key -> boolean array of exact zeros, for every prunable weight."""
    from tfaccel.pruning.registry import is_prunable, prunable_weights, weight_key

    out = {}
    for layer in tfaccel.graph.all_layers(model):
        if layer.built and is_prunable(layer):
            for variable, _ in prunable_weights(layer):
                out[weight_key(layer, variable)] = variable.numpy() == 0
    return out


def _assert_exact(model, target, keys=None):
    zeros = _zeros(model)
    assert zeros
    for key, zero in zeros.items():
        if keys is None or key in keys:
            assert int(zero.sum()) == round(target * zero.size), key


class ZeroProbe(keras.callbacks.Callback):
    """After `Pruning`: the zeros of every pruned weight at each batch end."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights
        self.history = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.history.append((step, [w.numpy() == 0 for w in self.weights]))


# --- keras.io-style subclassed models --------------------------------------


class SubclassedCNN(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")
        self.conv2 = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
        self.flatten = keras.layers.Flatten()
        self.classifier = keras.layers.Dense(10)

    def call(self, x):
        return self.classifier(self.flatten(self.conv2(self.conv1(x))))


class TransformerBlock(keras.layers.Layer):
    def __init__(self, dim, heads, hidden, **kwargs):
        super().__init__(**kwargs)
        self.att = keras.layers.MultiHeadAttention(heads, dim // heads)
        self.ffn = keras.Sequential(
            [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(dim)]
        )
        self.norm1 = keras.layers.LayerNormalization()
        self.norm2 = keras.layers.LayerNormalization()

    def call(self, x):
        x = self.norm1(x + self.att(x, x))
        return self.norm2(x + self.ffn(x))


class SubclassedTransformer(keras.Model):
    """The 8 rows of a digit as a sequence of 8 tokens."""

    def __init__(self, dim=16, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Dense(dim)
        self.block = TransformerBlock(dim, 2, 2 * dim)
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.classifier = keras.layers.Dense(10)

    def call(self, x):
        x = keras.ops.reshape(x, (-1, 8, 8))
        return self.classifier(self.pool(self.block(self.embed(x))))


# --- the same masks as `prune` ---------------------------------------------


def test_same_weights_and_masks_as_prune_bitwise(digits):
    """Masking in the forward pass or zeroing after the step: same training."""
    x, y, _, _ = digits
    source = make_cnn()
    with_callback = keras.models.clone_model(source)
    with_callback.set_weights(source.get_weights())
    _compile(with_callback).fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
        callbacks=[Pruning(SCHEDULE)],
    )
    pruned = _compile(tfaccel.prune(source, SCHEDULE))
    pruned.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    stripped = tfaccel.strip_pruning(pruned)
    assert list(tfaccel.sparsity(with_callback).values()) == list(
        tfaccel.sparsity(stripped).values()
    )
    for a, b in zip(with_callback.weights, stripped.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    _assert_exact(with_callback, TARGET)


def test_sparsity_rises_monotonically_and_zeros_stay_zero(digits):
    x, y, _, _ = digits
    model = _compile(make_mlp())
    model(x[:1])
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    probe = ZeroProbe(kernels)
    model.fit(
        x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
        callbacks=[Pruning(SCHEDULE), probe],
    )
    previous = [np.zeros(k.shape, bool) for k in kernels]
    assert [step for step, _ in probe.history] == list(range(1, 45))
    for step, zeros in probe.history:
        # Masks are updated before a step: the k-th step runs with step k's.
        due = last_pruning_step(SCHEDULE, step)
        target = float(SCHEDULE.sparsity_at(due))
        for zero, before in zip(zeros, previous):
            assert int(zero.sum()) == round(target * zero.size), step
            assert not (before & ~zero).any(), step  # pruned stays pruned
        if step > SCHEDULE.end_step:  # masks fixed after the last update
            for zero, before in zip(zeros, previous):
                np.testing.assert_array_equal(zero, before)
        previous = zeros
    _assert_exact(model, TARGET)


def test_steps_per_execution_updates_at_execution_boundaries(digits):
    x, y, _, _ = digits
    model = _compile(make_cnn(), steps_per_execution=4)
    model(x[:1])
    pruning = Pruning(SCHEDULE)
    probe = ZeroProbe([])
    pruning_first = [pruning, probe]
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
              callbacks=pruning_first)
    steps = [step for step, _ in probe.history]
    assert steps[:3] == [4, 8, 12]  # callbacks fire once per execution
    assert int(model.optimizer.iterations.numpy()) == 44
    _assert_exact(model, TARGET)


def test_n_m_pattern_exact(digits):
    x, y, _, _ = digits
    model = _compile(make_mlp(units=(32,)))
    model.fit(
        x, y, batch_size=BATCH, epochs=1, verbose=0,
        callbacks=[Pruning(ConstantSparsity(0.5, frequency=5), structure="2:4")],
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel = layer.kernel.numpy()  # (in, out): groups along inputs
            groups = kernel.T.reshape(kernel.shape[1], -1, 4)
            assert ((groups != 0).sum(-1) == 2).all(), layer.name


def test_n_m_that_does_not_divide(digits):
    x, y, _, _ = digits
    model = _compile(make_cnn())  # the stem conv has 1 input channel
    fit = dict(batch_size=BATCH, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="needs M=4 to divide"):
        model.fit(x, y, callbacks=[Pruning(structure="2:4", layers=["conv2d"])],
                  **fit)
    with pytest.warns(tfaccel.TfaccelWarning, match="left dense"):
        model.fit(x, y, callbacks=[Pruning(structure="2:4")], **fit)
    assert not _zeros(model)["conv2d/kernel"].any()


# --- any model -------------------------------------------------------------


@pytest.mark.parametrize("build", [SubclassedCNN, SubclassedTransformer])
@pytest.mark.parametrize("called_first", [True, False])
def test_subclassed_models_reach_the_target(digits, build, called_first):
    x, y, _, _ = digits
    model = _compile(build())
    if called_first:
        model(x[:1])
    pruning = Pruning(SCHEDULE)
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[pruning])
    _assert_exact(model, TARGET)
    # Transformer: embed, MultiHeadAttention's four projections, the nested
    # FFN's two Dense, the classifier; each once.
    expected = 8 if build is SubclassedTransformer else 3
    assert len(pruning.pruned_weights) == expected
    assert model.evaluate(x, y, verbose=0)[1] > 0.2  # chance: 0.1


@pytest.mark.parametrize("build", [SubclassedCNN, SubclassedTransformer])
def test_subclassed_verified_int8_file_holds_the_sparsity(digits, tmp_path, build):
    x, y, x_test, _ = digits
    model = _compile(build())
    pruning = Pruning(SCHEDULE)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[pruning])
    # The subclassed model itself, verification on: exported through a
    # functional view of the shape `fit` built it with.
    path = tmp_path / "model.tflite"
    report = tfaccel.export_tflite(
        model, path, quantization="int8", representative_data=x[:128],
        verification_data=x_test, tolerance={"min_agreement": 0.95},
    )
    assert report.verified and report.int8_coverage == 1.0
    assert any("functional view" in note for note in report.notes)
    assert tfaccel.inspect_tflite(path).sparsity == report.sparsity
    # round(0.8 * size) zeros per weight; int8 rounding adds almost none.
    sizes = [v.numpy().size for v in pruning.pruned_weights]
    expected = sum(round(TARGET * n) for n in sizes) / sum(sizes)
    assert report.sparsity == pytest.approx(expected, abs=2e-3)


def test_mirrored_replicas_identical(digits, two_cpus):
    x, y = digits[0][:640], digits[1][:640]
    with two_cpus.scope():
        model = _compile(make_cnn())
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, shuffle=False,
              callbacks=[Pruning(SCHEDULE)])
    checked = 0
    for variable in model.trainable_variables:
        first, second = (v.numpy() for v in variable.value.values)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
        checked += 1
    assert checked == 8  # 2 kernels, 2 BN gamma+beta, dense kernel+bias
    _assert_exact(model, TARGET)


def test_keras_file_and_second_fit_continue(digits, tmp_path):
    x, y, _, _ = digits
    schedule = PolynomialDecay(0.0, TARGET, begin_step=0, end_step=40, frequency=4)
    model = _compile(make_cnn())
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[Pruning(schedule)])  # 22 steps: halfway
    before = _zeros(model)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations.numpy()) == 22
    probe = ZeroProbe([])
    loaded.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
               callbacks=[Pruning(schedule), probe])
    after = _zeros(loaded)
    for key, zero in before.items():
        assert not (zero & ~after[key]).any(), key  # the saved zeros stay
    _assert_exact(loaded, TARGET)


# --- arguments and errors --------------------------------------------------


def test_config_round_trip():
    pruning = Pruning(SCHEDULE, structure="2:4", layers=["dense", "conv2d"])
    config = pruning.get_config()
    again = Pruning.from_config(config)
    assert again.get_config() == config
    assert again.schedule == SCHEDULE
    with pytest.raises(ValueError, match="layer names or layers"):
        Pruning(layers=keras.layers.Dense).get_config()


def test_argument_errors(digits):
    with pytest.raises(TypeError, match="schedule"):
        Pruning(0.5)
    with pytest.raises(ValueError, match="structure="):
        Pruning(structure="4:2")
    with pytest.raises(TypeError, match="layers"):
        Pruning(layers=3)
    x, y, _, _ = digits
    fit = dict(batch_size=BATCH, epochs=1, verbose=0)
    model = _compile(make_cnn())
    with pytest.raises(ValueError, match=r"matched no layer .*\['nope'\]"):
        model.fit(x, y, callbacks=[Pruning(layers="nope")], **fit)
    with pytest.raises(ValueError, match="No prunable layer selected"):
        model.fit(x, y, callbacks=[Pruning(layers=keras.layers.ReLU)], **fit)
    pruned = _compile(tfaccel.prune(make_cnn()))
    with pytest.raises(ValueError, match="already pruned"):
        pruned.fit(x, y, callbacks=[Pruning()], **fit)


def test_selected_layer_never_built_is_an_error(digits):
    class Unused(SubclassedCNN):
        def __init__(self):
            super().__init__()
            self.spare = keras.layers.Dense(3, name="spare")

    x, y, _, _ = digits
    fit = dict(batch_size=BATCH, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"\['spare'\].*still not built"):
        _compile(Unused()).fit(x, y, callbacks=[Pruning(layers=["spare"])], **fit)
    model = _compile(Unused())
    with pytest.warns(tfaccel.TfaccelWarning, match=r"does not call.*\['spare'\]"):
        model.fit(x, y, callbacks=[Pruning()], **fit)
    assert model.evaluate(x, y, verbose=0)[1] > 0.3


def test_constraints_restored_and_model_plain_after_fit(digits):
    x, y, _, _ = digits
    nonneg = keras.constraints.NonNeg()
    model = _compile(keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", kernel_constraint=nonneg),
        keras.layers.Dense(10),
    ]))
    hidden, logits = model.layers[1].kernel, model.layers[2].kernel
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
              callbacks=[Pruning(SCHEDULE)])
    assert (hidden.numpy() >= 0).all()  # the user's constraint ran too
    _assert_exact(model, TARGET)
    assert hidden.constraint is nonneg and logits.constraint is None
    # A later fit without the callback trains a plain model: weights regrow.
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert (logits.numpy() == 0).mean() < TARGET
