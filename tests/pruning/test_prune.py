"""`prune`, `strip_pruning`, `sparsity`: layer coverage, selection, errors."""

import keras
import numpy as np
import pytest

from tests.tiny_models import make_cnn, make_mlp
from tfaccel._warnings import TfaccelWarning
from tfaccel.pruning import (
    PruneLowMagnitude,
    prune,
    register_prunable,
    sparsity,
    strip_pruning,
)
from tfaccel.schedules import ConstantSparsity, PolynomialDecay

EVERY_STEP = ConstantSparsity(0.5, begin_step=0, frequency=1)


def _wrapped_names(model):
    names = []
    for layer in model.layers:
        if isinstance(layer, PruneLowMagnitude):
            names.append(layer.name)
        elif isinstance(layer, keras.Model):
            names += _wrapped_names(layer)
    return names


def _all_layers_model():
    tokens = keras.Input((8,), dtype="int32")
    h = keras.layers.Embedding(32, 8, name="embedding")(tokens)
    h = keras.layers.MultiHeadAttention(2, 4, name="attention")(h, h)
    h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 8), name="einsum")(h)
    h = keras.layers.Conv1D(8, 3, padding="same", name="conv1d")(h)
    h = keras.layers.Reshape((8, 8, 1))(h)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv2d")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = keras.layers.SeparableConv2D(8, 3, padding="same", name="separable")(h)
    h = keras.layers.Conv2DTranspose(4, 3, padding="same", name="transpose")(h)
    h = keras.layers.Reshape((8, 8, 4, 1))(h)
    h = keras.layers.Conv3D(2, 3, padding="same", name="conv3d")(h)
    h = keras.layers.GlobalAveragePooling3D()(h)
    outputs = keras.layers.Dense(10, name="dense")(h)
    return keras.Model(tokens, outputs)


EXPECTED_KEYS = {
    "embedding/embeddings",
    "attention/query/kernel",
    "attention/key/kernel",
    "attention/value/kernel",
    "attention/attention_output/kernel",
    "einsum/kernel",
    "conv1d/kernel",
    "conv2d/kernel",
    "depthwise/kernel",
    "separable/depthwise_kernel",
    "separable/pointwise_kernel",
    "transpose/kernel",
    "conv3d/kernel",
    "dense/kernel",
}


def test_every_listed_layer_type_is_pruned(tmp_path):
    model = _all_layers_model()
    tokens = np.random.default_rng(0).integers(0, 32, (4, 8)).astype("int32")
    expected = model.predict(tokens, verbose=0)
    pruned = prune(model, EVERY_STEP)
    assert len(_wrapped_names(pruned)) == 10
    # Same weights as the input model before any training step.
    np.testing.assert_allclose(pruned.predict(tokens, verbose=0), expected, atol=1e-5)
    pruned(tokens, training=True)  # one training step prunes (frequency=1)
    result = sparsity(pruned)
    assert set(result) == EXPECTED_KEYS
    for wrapper in (lyr for lyr in pruned.layers if isinstance(lyr, PruneLowMagnitude)):
        for variable, value in wrapper.masked_weights():
            assert int((value == 0).sum()) == round(0.5 * value.size), variable.path
        # Biases are never pruned.
        for variable in wrapper.layer.weights:
            if "bias" in variable.name:
                assert np.all(variable.numpy() != 0) or np.all(
                    variable.numpy() == 0
                )
                assert all(variable is not v for v, _ in wrapper._pruned)
    # Save / load with no custom objects, MultiHeadAttention included.
    path = tmp_path / "all.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert sparsity(loaded) == result
    np.testing.assert_allclose(
        loaded.predict(tokens, verbose=0), pruned.predict(tokens, verbose=0), atol=1e-5
    )
    plain = strip_pruning(loaded)
    assert not _wrapped_names(plain) and sparsity(plain) == result
    np.testing.assert_allclose(
        plain.predict(tokens, verbose=0), pruned.predict(tokens, verbose=0), atol=1e-5
    )


def test_nm_axes_of_each_layer_type():
    model = _all_layers_model()
    pruned = prune(model, layers=["conv1d", "conv2d", "depthwise", "transpose", "dense"])
    axes = {
        w.name: [(tuple(v.shape), axis) for v, axis in w._pruned]
        for w in pruned.layers if isinstance(w, PruneLowMagnitude)
    }
    assert axes["conv1d"] == [((3, 8, 8), -2)]
    assert axes["depthwise"] == [((3, 3, 4, 1), -2)]
    assert axes["transpose"] == [((3, 3, 4, 8), -1)]  # (kh, kw, out, in)
    assert axes["dense"] == [((2, 10), -2)]
    attention = prune(model, layers=[keras.layers.MultiHeadAttention]).get_layer("attention")
    # Query kernel (dim, heads, head_dim) contracts dim; output kernel
    # (heads, head_dim, dim) contracts heads first.
    assert [axis for _, axis in attention._pruned] == [0, 0, 0, 0]


def test_input_model_untouched_and_strip_matches(digits):
    x, y, x_test, _ = digits
    model = make_cnn()
    before = [w.copy() for w in model.get_weights()]
    pruned = prune(model, PolynomialDecay(0.0, 0.6, 0, 20, frequency=5))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=64, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not _wrapped_names(model)
    assert all(v == 0.0 for v in sparsity(model).values())
    plain = strip_pruning(pruned)
    assert [type(lyr).__name__ for lyr in plain.layers] == [
        type(lyr).__name__ for lyr in model.layers
    ]
    np.testing.assert_allclose(
        plain.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-6
    )
    reached = sparsity(pruned)
    assert reached == sparsity(plain)
    assert set(reached) == {"conv2d/kernel", "conv2d_1/kernel", "dense/kernel"}
    assert all(abs(v - 0.6) < 0.01 for v in reached.values())


def test_nested_model():
    inner = make_mlp()
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(3, name="head")(inner(inputs))
    model = keras.Model(inputs, outputs)
    pruned = prune(model, EVERY_STEP)
    assert sorted(_wrapped_names(pruned)) == ["dense", "dense_1", "head"]
    assert not _wrapped_names(inner)
    pruned(np.ones((2, 8, 8, 1), "float32"), training=True)
    assert sparsity(pruned) == {"dense/kernel": 0.5, "dense_1/kernel": 0.5, "head/kernel": 0.5}
    plain = strip_pruning(pruned)
    assert sparsity(plain) == sparsity(pruned) and not _wrapped_names(plain)


def test_layers_by_name_class_and_predicate():
    model = make_cnn()
    conv, conv_1, dense = "conv2d", "conv2d_1", "dense"
    assert _wrapped_names(prune(model, layers=[conv_1])) == [conv_1]
    assert _wrapped_names(prune(model, layers=[keras.layers.Dense])) == [dense]
    assert _wrapped_names(prune(model, layers=[conv, keras.layers.Dense])) == [conv, dense]
    by_predicate = prune(model, layers=lambda layer: layer.name.startswith("conv"))
    assert _wrapped_names(by_predicate) == [conv, conv_1]
    # Selected but not prunable layers are left alone.
    assert _wrapped_names(prune(model, layers=["flatten", dense])) == [dense]


class Scaled(keras.layers.Layer):
    """A custom layer that opts in with `get_prunable_weights`."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 8), name="w")
        self.scale = self.add_weight(shape=(8,), initializer="ones", name="scale")

    def call(self, x):
        return keras.ops.matmul(x, self.w) * self.scale

    def get_prunable_weights(self):
        return [self.w]


class Plain(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 4), name="w")

    def call(self, x):
        return keras.ops.matmul(x, self.w)


def test_custom_layer_protocol_and_registry():
    inputs = keras.Input((8,))
    outputs = Plain(name="plain")(Scaled(name="scaled")(inputs))
    model = keras.Model(inputs, outputs)
    # Plain has no prunable weights until registered.
    assert _wrapped_names(prune(model)) == ["scaled"]
    register_prunable(Plain, lambda layer: [(layer.w, 0)])
    pruned = prune(model, EVERY_STEP, structure="2:4")
    assert _wrapped_names(pruned) == ["scaled", "plain"]
    pruned(np.random.default_rng(0).normal(size=(2, 8)).astype("float32"), training=True)
    for wrapper in pruned.layers[1:]:
        (variable, axis), = wrapper._pruned
        assert variable.name == "w" and axis in (0, -2)
        _, value = wrapper.masked_weights()[0]
        np.testing.assert_array_equal((value.reshape(-1, 4, value.shape[1]) != 0).sum(1), 2)
    scale = pruned.get_layer("scaled").layer.scale
    assert np.all(keras.ops.convert_to_numpy(scale) == 1.0)  # never pruned
    with pytest.raises(TypeError, match="layer_cls.*Received: layer_cls=3"):
        register_prunable(3, lambda layer: [])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(4)

    def call(self, x):
        return self.dense(x)


def test_errors():
    model = make_cnn()
    with pytest.raises(ValueError, match=r"Sequential or functional.*PruneLowMagnitude.*Received: model of type Subclassed"):
        prune(Subclassed())
    with pytest.raises(TypeError, match=r"`model` must be a keras.Model. Received: model='cnn'"):
        prune("cnn")
    with pytest.raises(ValueError, match=r"`layers` matched no layer.*layers=\['nope'\]"):
        prune(model, layers=["nope"])
    with pytest.raises(ValueError, match=r"No prunable layer selected.*selected: \['re_lu'\]"):
        prune(model, layers=["re_lu"])
    flat = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="No prunable layer selected"):
        prune(flat)
    with pytest.raises(ValueError, match=r"'unstructured' or an 'N:M'.*Received: structure='2-4'"):
        prune(model, structure="2-4")
    # The first conv has 1 input channel: 2:4 cannot group it. Named, it is
    # an error; by default it stays dense with a warning (see test_nm_skip).
    with pytest.raises(ValueError, match=r"structure='2:4' needs M=4 to divide.*'conv2d'.*\(3, 3, 1, 8\)"):
        prune(model, structure="2:4", layers=["conv2d"])
    with pytest.raises(TypeError, match=r"`schedule` must be a tfaccel.schedules.PruningSchedule. Received: schedule=0.5"):
        prune(model, schedule=0.5)
    with pytest.raises(TypeError, match=r"`layers` must be None, a list.*Received: layers=5"):
        prune(model, layers=5)
    with pytest.raises(TypeError, match=r"`layers` entries.*Received entry: 3"):
        prune(model, layers=["dense", 3])
    with pytest.raises(ValueError, match=r"already pruned"):
        prune(prune(model))
    with pytest.raises(ValueError, match=r"'re_lu' \(ReLU\) has no prunable weights"):
        PruneLowMagnitude(keras.layers.ReLU(name="re_lu"))
    with pytest.raises(ValueError, match=r"Sequential or functional"):
        strip_pruning(Subclassed())


def test_strip_warns_before_end_step(digits):
    x, y, _, _ = digits
    pruned = prune(make_mlp(), PolynomialDecay(0.0, 0.8, 0, 100, frequency=10))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=64, epochs=1, verbose=0)  # 22 steps < 100
    with pytest.warns(TfaccelWarning, match=r"before their schedule's end_step.*layer 'dense' at step 22, end_step=100, target sparsity 0.8, reached: dense/kernel=0\.\d+; layer 'dense_1'"):
        strip_pruning(pruned)


def test_public_api():
    import tfaccel.callbacks
    import tfaccel.pruning
    import tfaccel.schedules

    assert set(tfaccel.pruning.__all__) >= {
        "PruneLowMagnitude", "allocate", "prune", "register_prunable", "sparsity",
        "strip_pruning",
    }
    assert tfaccel.schedules.__all__ == [
        "PruningSchedule", "ConstantSparsity", "PolynomialDecay", "ScaledSparsity",
    ]
    assert "PruningSummary" in tfaccel.callbacks.__all__
    for module in (tfaccel.pruning, tfaccel.schedules, tfaccel.callbacks):
        assert all(hasattr(module, name) for name in module.__all__)


def test_strip_before_the_first_pruning_step_warns():
    # The k-th step sees step k (tfmot's rule): begin_step=0 and frequency=100
    # first prune at step 100. Stripping earlier must not pass silently.
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
    pruned = prune(model, ConstantSparsity(0.5, begin_step=0, frequency=100))
    for _ in range(3):
        pruned(np.ones((2, 8), "float32"), training=True)
    with pytest.warns(TfaccelWarning, match=r"'d' at step 3: its first pruning step \(100.*masks are all ones"):
        strip_pruning(pruned)


def test_sparsity_view_lists_what_a_pruned_model_left_dense(tmp_path):
    # An RGB-like stem (3 input channels) cannot take 2:4: left dense with a
    # warning, and `sparsity` says so beside the pruned layers' figures.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="stem")(inputs)
    x = keras.layers.Conv2D(8, 3, name="body")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(x))
    assert sparsity(model).dense == {}  # nothing asked of a plain model
    with pytest.warns(TfaccelWarning, match=r"left dense.*'stem'"):
        pruned = prune(model, EVERY_STEP, structure="2:4")
    view = sparsity(pruned)
    assert set(view) == {"stem/kernel", "body/kernel", "head/kernel"}
    assert view.dense == {
        "stem/kernel": "structure='2:4' needs M=4 to divide its input channels "
                       "(axis -2 of shape (3, 3, 3, 8))",
    }
    only_body = prune(model, EVERY_STEP, structure="2:4", layers=["body"])
    assert sparsity(only_body).dense["head/kernel"] == (
        "not pruned: not selected by `layers`")
    pruned.save(tmp_path / "p.keras")  # derived from the model: survives a reload
    assert sparsity(keras.models.load_model(tmp_path / "p.keras")).dense == view.dense
