"""KerasHub backbones (built from a config) through QAT to a verified int8 file."""

import subprocess
import sys

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

from tests.quantization.conftest import compile_classifier  # noqa: E402
from tests.tiny_models import load_digits_split  # noqa: E402
from tfaccel import export_tflite  # noqa: E402
from tfaccel.export import benchmark_tflite  # noqa: E402
from tfaccel.export.run import signature_runner  # noqa: E402
from tfaccel.graph import all_layers, copy_layer, copy_weights  # noqa: E402
from tfaccel.quantization import (  # noqa: E402
    QuantizedSublayers,
    quantize,
    quantize_kind,
)

SEQ, PAD = 20, 17  # a class token, 16 patch tokens, 3 padded out (masked)
KERNEL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")


@pytest.fixture(scope="module")
def digits():
    x_train, y_train, x_test, y_test = load_digits_split()
    return x_train[:1024], y_train[:1024], x_test, y_test  # 397 held out


def _tokens(x):
    """Digits as BERT inputs: a class token (65), then the ink of each 2x2
    patch (0..64) as a token id, then padding (masked out)."""
    ink = np.rint(x.reshape(len(x), 4, 2, 4, 2).sum((2, 4)) * 16).reshape(len(x), 16)
    ids = np.zeros((len(x), SEQ), "int32")
    ids[:, 0], ids[:, 1:PAD] = 65, ink
    mask = (np.arange(SEQ) < PAD).astype("int32") * np.ones_like(ids)
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def _bert():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=66, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=SEQ, dropout=0.0,
    )
    inputs = {
        n: keras.Input((SEQ,), dtype="int32", name=n)
        for n in ("token_ids", "segment_ids", "padding_mask")
    }
    x = backbone(inputs)["sequence_output"]
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, logits)


def _vit():
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 1), patch_size=2, num_layers=2, num_heads=2,
        hidden_dim=16, mlp_dim=32,
    )
    inputs = keras.Input((8, 8, 1))
    return keras.Model(inputs, keras.layers.Dense(10)(backbone(inputs)[:, 0]))


def _qat(model_fn, x_train, y_train, float_epochs=0):
    """QAT of a new model, or of one trained `float_epochs` in float first."""
    keras.utils.set_random_seed(0)
    model = model_fn()
    if float_epochs:
        compile_classifier(model).fit(x_train, y_train, epochs=float_epochs,
                                      batch_size=64, verbose=0)
    calibration = keras.tree.map_structure(lambda a: a[:64], x_train)
    qat = compile_classifier(quantize(model, calibration_data=calibration),
                             lr=1e-3 if float_epochs else 3e-3)
    qat.fit(x_train, y_train, epochs=1 if float_epochs else 6, batch_size=64, verbose=0)
    return qat


@pytest.fixture(scope="module")
def bert(digits, tmp_path_factory):
    x_train, y_train, x_test, _ = digits
    # QAT from scratch leaves this BERT at chance (8% held-out after 6
    # epochs; float training learns slowly from ink-count tokens too), and
    # a model at chance makes top-1 agreement with its file a weak check:
    # float training first, then one epoch of QAT fine-tuning.
    qat = _qat(_bert, _tokens(x_train), y_train, float_epochs=10)
    path = str(tmp_path_factory.mktemp("hub") / "bert.tflite")
    report = export_tflite(qat, path, quantization="int8", verification_data=_tokens(x_test))
    return qat, path, report


@pytest.fixture(scope="module")
def vit(digits, tmp_path_factory):
    x_train, y_train, x_test, _ = digits
    qat = _qat(_vit, x_train, y_train)
    path = str(tmp_path_factory.mktemp("hub") / "vit.tflite")
    report = export_tflite(qat, path, quantization="int8", verification_data=x_test)
    return qat, path, report


def _check_int8_export(qat, path, report, x, y, min_accuracy):
    for op in KERNEL_OPS:
        assert set(report.ops[op]) == {"int8"}, (op, report.ops[op])
    assert report.ops["FULLY_CONNECTED"]["int8"] >= 12  # 2 blocks x (4 + 2), head
    assert report.ops["BATCH_MATMUL"]["int8"] == 4  # 2 blocks x 2 products
    n = len(keras.tree.flatten(x)[0])
    assert report.num_samples == n
    assert report.mean_abs_error < 0.05, str(report)
    # Top-1 agreement where the QAT model has one: its logits are int8
    # steps, so two classes can tie exactly, and a tie is no prediction.
    runner = signature_runner(path)
    (name, *_) = runner.get_input_details()
    feeds = x if isinstance(x, dict) else {name: x}
    got = np.concatenate([
        next(iter(runner(**{k: v[i : i + 1] for k, v in feeds.items()}).values()))
        for i in range(n)
    ])
    want = np.asarray(qat(x, training=False))
    # A model that learned: agreement with a model at chance checks little.
    assert (np.argmax(want, -1) == y).mean() >= min_accuracy
    top2 = np.sort(want, -1)[:, -2:]
    untied = top2[:, 1] > top2[:, 0]
    assert untied.mean() > 0.9
    agree = np.argmax(got, -1) == np.argmax(want, -1)
    assert agree[untied].mean() >= 0.99, agree[untied].mean()
    assert report.agreement >= 0.95, str(report)


def test_bert_encoder_blocks_quantize_and_export_int8(bert, digits):
    qat, path, report = bert
    wrapped = [w for w in all_layers(qat) if isinstance(w, QuantizedSublayers)]
    assert [type(w.layer).__name__ for w in wrapped] == ["TransformerEncoder"] * 2
    _check_int8_export(qat, path, report, _tokens(digits[2]), digits[3], 0.5)


def test_vit_blocks_quantize_and_export_int8(vit, digits):
    qat, path, report = vit
    names = {type(w.layer).__name__ for w in all_layers(qat)
             if isinstance(w, QuantizedSublayers)}
    assert names == {"ViTPatchingAndEmbedding", "ViTEncoder"}
    _check_int8_export(qat, path, report, digits[2], digits[3], 0.75)
    assert report.ops["CONV_2D"] == {"int8": 1}  # the patch embedding


def test_a_fresh_bert_converts_after_calibration_alone(digits, tmp_path):
    # Untrained LayerNorms (beta = 0): the converter drops ADD(y, 0) and
    # kept the "normalized" and "output" ranges on one tensor, which
    # calibration leaves apart (scales 0.025555 and 0.025597): it rejected
    # the RESHAPE after the embeddings' LayerNorm ("same scale
    # constraint"). The export traces the output's range alone there.
    keras.utils.set_random_seed(0)
    x_train, _, x_test, _ = digits
    qat = quantize(_bert(), calibration_data=_tokens(x_train[:64]))
    report = export_tflite(qat, str(tmp_path / "fresh.tflite"), quantization="int8",
                           verification_data=_tokens(x_test[:128]))
    assert set(report.ops["FULLY_CONNECTED"]) == {"int8"}
    assert set(report.ops["BATCH_MATMUL"]) == {"int8"}
    assert report.agreement >= 0.95, str(report)


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_keras_round_trip_of_qat_model(name, request, digits, tmp_path):
    qat = request.getfixturevalue(name)[0]
    x = _tokens(digits[2][:16]) if name == "bert" else digits[2][:16]
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)), np.asarray(qat(x, training=False)),
        atol=1e-5,
    )


def test_token_and_position_embedding_feeds_int8_attention(digits, tmp_path):
    """The embedding's own sum gets a range: the encoder's projections read
    int8 (else its FULLY_CONNECTEDs stay float); the QAT model round-trips
    although the embedding's get_config reads its (swapped) sublayer."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((SEQ,), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(66, SEQ, 16)(ids)
    x = keras_hub.layers.TransformerEncoder(32, 2)(x)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(x))
    tokens = _tokens(digits[2])["token_ids"]
    qat = quantize(keras.Model(ids, outputs), calibration_data=tokens[:64])
    report = export_tflite(
        qat, str(tmp_path / "m.tflite"), quantization="int8", verification_data=tokens
    )
    assert report.ops["FULLY_CONNECTED"] == {"int8": 7}
    assert report.ops["BATCH_MATMUL"] == {"int8": 2}
    assert report.mean_abs_error < 0.05
    qat.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(
        np.asarray(loaded(tokens[:8])), np.asarray(qat(tokens[:8])), atol=1e-5
    )


def test_keras_hub_layers_are_registered_lazily():
    code = "import sys, tfaccel; print('keras_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
    encoder = keras_hub.layers.TransformerEncoder(32, 2)
    encoder.build((None, 4, 16))
    assert quantize_kind(encoder) == "layer"
    assert quantize_kind(keras_hub.layers.PositionEmbedding(8)) == "output"


def test_copy_layer_of_vit_patching_regression(digits):
    """keras-hub 0.32's ViTPatchingAndEmbedding.get_config() has keys its
    constructor rejects (num_patches, num_positions): its own from_config
    fails; copy_layer drops them and the copy computes the same."""
    from keras_hub.src.models.vit.vit_layers import ViTPatchingAndEmbedding

    layer = ViTPatchingAndEmbedding((8, 8), (2, 2), 16, num_channels=1)
    layer.build((None, 8, 8, 1))
    with pytest.raises(TypeError, match="num_patches"):
        type(layer).from_config(layer.get_config())  # fails the day it is fixed
    copy = copy_layer(layer)
    copy_weights(layer, copy)
    x = digits[2][:4]
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(layer(x)))


def test_copy_layer_still_raises_on_a_config_it_cannot_fix():
    class Strict(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = int(units)

        def get_config(self):
            return {**super().get_config(), "units": "many"}

    with pytest.raises(TypeError, match="many"):
        copy_layer(Strict(3))


def test_benchmark_tflite_token_ids_in_range_and_real_inputs(bert, digits):
    path = bert[1]
    (row,) = benchmark_tflite(path, runs=2, warmup=1)  # random ids within the table
    assert row["median_ms"] > 0
    sample = {k: v[:1] for k, v in _tokens(digits[2]).items()}
    (row,) = benchmark_tflite(path, runs=2, warmup=1, inputs=sample)
    assert row["runs"] == 2
    with pytest.raises(ValueError, match="has no array for the file.s input"):
        benchmark_tflite(path, runs=1, inputs={"token_ids": sample["token_ids"]})
