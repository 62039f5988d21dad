"""`cluster`, `ClusterWeights` and `strip_clustering`: values, state, saving."""

import keras
import numpy as np
import pytest

from tests.clustering.conftest import (
    BATCH,
    compile_model,
    kernels,
    prune_in_place,
    small_cnn,
)
from tfaccel.clustering import (
    ClusterWeights,
    cluster,
    distinct_values,
    initial_centroids,
    strip_clustering,
)
from tfaccel.clustering.wrapper import channel_view


def _fit(model, digits, steps=8, **compile_kwargs):
    x, y, _, _ = digits
    compile_model(model, **compile_kwargs)
    model.fit(x[: steps * BATCH], y[: steps * BATCH], batch_size=BATCH, epochs=1,
              verbose=0, shuffle=False)
    return model


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, ClusterWeights)]


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_every_centroid_init_gives_n_values(cnn_small, init):
    plain = strip_clustering(cluster(cnn_small, 6, centroid_init=init))
    assert all(1 < n <= 6 for n in distinct_values(plain).values())


def test_per_channel_clusters_each_output_channel_under_xla(cnn_small, digits):
    clustered = cluster(cnn_small, 3, per_channel=True)
    _fit(clustered, digits, steps=3, jit_compile=True)
    assert int(_wrappers(clustered)[0].cluster_step.numpy()) == 3
    plain = strip_clustering(clustered)
    assert max(distinct_values(plain, per_channel=True).values()) <= 3
    # Per channel, not per tensor: the 10-channel kernel holds more than 3.
    assert distinct_values(plain)["dense/kernel"] > 3


def test_depthwise_channels_span_input_and_multiplier():
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
    assert channel_view(layer, (3, 3, 4, 2)) == (9, 8)
    assert channel_view(keras.layers.Dense(2), (5, 2)) == (5, 2)


def test_sparsity_preserving_keeps_every_zero_and_survives_a_keras_file(
    cnn_small, digits, tmp_path
):
    pruned = prune_in_place(cnn_small, 0.6)
    zeros = {k: v == 0 for k, v in kernels(pruned).items()}
    clustered = cluster(pruned, 5)  # preserve_sparsity="auto"
    assert all(w.preserve_sparsity for w in _wrappers(clustered))
    _fit(clustered, digits, steps=6, lr=1e-2)
    plain = strip_clustering(clustered)
    for name, kernel in kernels(plain).items():
        assert np.all(kernel[zeros[name]] == 0), name  # every zero kept
        assert np.mean(kernel == 0) == pytest.approx(np.mean(zeros[name]))
        assert len(np.unique(kernel)) <= 5  # zero is one of the 5 values

    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    x = digits[2][:32]
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               clustered.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    for old, new in zip(_wrappers(clustered), _wrappers(loaded)):
        old_config, new_config = old.get_config(), new.get_config()
        old_config.pop("layer"), new_config.pop("layer")
        assert new_config == old_config
        for a, b in zip(old.weights, new.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_auto_preserves_sparsity_only_where_there_are_zeros(cnn_small):
    assert not any(w.preserve_sparsity for w in _wrappers(cluster(cnn_small, 4)))


def test_assignments_follow_the_latent_weights_in_the_graph(cnn_small, digits):
    clustered = cluster(cnn_small, 4, update_frequency=3)
    wrapper = _wrappers(clustered)[0]
    x = digits[0][:8]
    clustered(x, training=True)  # step 0: due
    # Move the latent weights as training would; steps 1 and 2 are not due.
    latent = wrapper.layer.kernel.numpy() + 0.05
    wrapper.layer.kernel.assign(latent)
    centroids = wrapper.centroids[0].numpy()
    nearest = np.argmin(np.abs(latent[..., None] - centroids), axis=-1)
    for _ in range(2):
        clustered(x, training=True)
    assert not np.array_equal(wrapper.assignments[0].numpy(), nearest)  # stale
    clustered(x, training=True)  # step 3: due
    np.testing.assert_array_equal(wrapper.assignments[0].numpy(), nearest)
    assert int(wrapper.cluster_step.numpy()) == 4
    clustered(x, training=False)
    assert int(wrapper.cluster_step.numpy()) == 4


def test_mirrored_fit_trains_centroids_and_strip_holds_n_values(two_cpus, digits):
    with two_cpus.scope():
        clustered = cluster(small_cnn(), 6)
        before = [w.centroids[0].numpy().copy() for w in _wrappers(clustered)]
        _fit(clustered, digits, steps=4)
    for wrapper, start in zip(_wrappers(clustered), before):
        assert not np.allclose(wrapper.centroids[0].numpy(), start)  # trained
        for variable in (*wrapper.centroids, *wrapper.assignments, wrapper.cluster_step):
            values = [v.numpy() for v in variable.value.values]
            assert len(values) == 2, variable.path  # one copy per replica
            np.testing.assert_array_equal(values[0], values[1])
        assert int(wrapper.cluster_step.numpy()) == 4
    plain = strip_clustering(clustered)
    assert not _wrappers(plain)
    counts = distinct_values(plain)
    assert set(counts) == {"conv/kernel", "dense/kernel"}
    assert all(1 < n <= 6 for n in counts.values()), counts
    x = digits[2][:64]
    np.testing.assert_allclose(plain.predict(x, verbose=0),
                               clustered.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_initial_centroids_span_the_weights():
    values = np.random.default_rng(0).normal(size=1000)
    for method in ("kmeans++", "linear", "density", "random"):
        c = initial_centroids(values, 8, method)
        assert c.shape == (8,) and np.all(np.diff(c) >= 0)
        assert values.min() <= c[0] and c[-1] <= values.max()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"number_of_clusters": 1}, "number_of_clusters"),
        ({"number_of_clusters": "16"}, "number_of_clusters"),
        ({"number_of_clusters": True}, "number_of_clusters"),
        ({"number_of_clusters": 4, "centroid_init": "kmeans"}, "centroid_init"),
        ({"number_of_clusters": 4, "preserve_sparsity": "yes"}, "preserve_sparsity"),
        ({"number_of_clusters": 4, "per_channel": 1}, "per_channel"),
        ({"number_of_clusters": 4, "update_frequency": 0}, "update_frequency"),
        ({"number_of_clusters": 4, "layers": ["no_such_layer"]}, "layers"),
        ({"number_of_clusters": 4, "layers": 3.5}, "layers"),
    ],
)
def test_invalid_arguments_are_named(cnn_small, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        cluster(cnn_small, **kwargs)


def test_clustering_twice_or_nothing_says_so(cnn_small):
    clustered = cluster(cnn_small, 4)
    with pytest.raises(ValueError, match="already clustered"):
        cluster(clustered, 4)
    with pytest.raises(ValueError, match="No clusterable layer"):
        cluster(cnn_small, 4, layers=keras.layers.BatchNormalization)
