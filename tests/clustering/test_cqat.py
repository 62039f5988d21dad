"""Cluster-preserving QAT: `quantize` of a clustered model keeps its values."""

import keras
import numpy as np
import pytest

from tests.clustering.conftest import BATCH, compile_model, kernels, prune_in_place
from tfaccel.clustering import cluster, strip_clustering
from tfaccel.export import export_tflite
from tfaccel.quantization import QuantizeWrapper, quantize

_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def int8_kernels(path) -> list[np.ndarray]:
    """The int8 weight tensors of the conv / fully-connected ops of a file."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without delegates: XNNPACK would hide the constant weights.
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    result = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in _WEIGHT_OPS:
            result.append(interpreter.get_tensor(int(op["inputs"][1])))
    return result


def _qat_wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, QuantizeWrapper)]


def _depthwise_cnn():
    """Conv-BN-ReLU, DepthwiseConv-BN-ReLU, Dense: every CQAT weight mode."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def test_pruned_clustered_int8_file_keeps_zeros_and_n_values(digits, tmp_path):
    x, y, x_test, _ = digits
    pruned = prune_in_place(_depthwise_cnn(), 0.5)
    plain = strip_clustering(cluster(pruned, 6))
    qat = quantize(plain, calibration_data=x[:64])
    wrappers = _qat_wrappers(qat)
    assert [w.preserve_clusters for w in wrappers] == [5, 5, 5]  # + the zero
    assert [w.weight_mode for w in wrappers] == ["per_channel", "depthwise", "per_tensor"]
    assert all(w.preserve_sparsity for w in wrappers)
    frozen = [w.layer.kernel.numpy().copy() for w in wrappers]
    centroids = [w.cluster_centroids.numpy().copy() for w in wrappers]
    compile_model(qat, lr=1e-2).fit(x[: 4 * BATCH], y[: 4 * BATCH], batch_size=BATCH,
                                    epochs=1, verbose=0)
    for wrapper, before, start in zip(wrappers, frozen, centroids):
        assert not np.allclose(wrapper.cluster_centroids.numpy(), start)  # trained
        np.testing.assert_array_equal(wrapper.layer.kernel.numpy(), before)
    path = tmp_path / "pcqat.tflite"
    export_tflite(qat, path, quantization="int8", verification_data=x_test[:32])
    files = int8_kernels(path)
    assert len(files) == 3
    zeros = [np.mean(k == 0) for k in kernels(pruned).values()]
    for kernel, zero_fraction in zip(files, zeros):
        assert kernel.dtype == np.int8
        assert np.mean(kernel == 0) == pytest.approx(zero_fraction)
        assert len(np.unique(kernel)) <= 6, np.unique(kernel)  # 5 centroids + 0


def test_quantize_turns_cluster_preservation_on_only_for_clustered_kernels(digits_cnn):
    assert [w.preserve_clusters for w in _qat_wrappers(quantize(digits_cnn))] == [0, 0, 0]
    plain = strip_clustering(cluster(digits_cnn, 4))
    qat = quantize(plain)
    assert [w.preserve_clusters for w in _qat_wrappers(qat)] == [4, 4, 4]
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    # Before training the CQAT wrapper computes what the plain kernel gives.
    for wrapper in _qat_wrappers(qat):
        assert len(np.unique(keras.ops.convert_to_numpy(wrapper.quantized_kernel()))) <= 4
    assert qat(x).shape == (4, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preserve_clusters": -1}, "preserve_clusters"),
        ({"preserve_clusters": 300}, "preserve_clusters"),
        ({"preserve_clusters": True}, "preserve_clusters"),
        (
            {
                "preserve_clusters": 4,
                "weight_mode": "per_tensor",
                "batch_norm": keras.layers.BatchNormalization(),
            },
            "weight_mode",
        ),
    ],
)
def test_invalid_preserve_clusters_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizeWrapper(keras.layers.Dense(2), **kwargs)
