"""A KerasHub BERT backbone built from a config goes through QAT to a verified
int8 file (keras-hub is a test extra: skipped without it)."""

import keras
import numpy as np
import pytest

import tfaccel

keras_hub = pytest.importorskip("keras_hub")

NAMES = ("token_ids", "segment_ids", "padding_mask")


def _tiny_bert_classifier(seq=8):
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=16, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=seq,
    )
    # List inputs: calibration feeds a list in `model.inputs` order.
    inputs = [keras.Input((seq,), dtype="int32", name=n) for n in NAMES]
    pooled = backbone(dict(zip(NAMES, inputs)))["pooled_output"]
    return keras.Model(inputs, keras.layers.Dense(3)(pooled))


def test_qat_of_a_tiny_bert_exports_a_verified_int8_file(tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny_bert_classifier()
    tokens = np.random.default_rng(0).integers(0, 16, (64, 8)).astype("int32")
    x = [tokens, np.zeros_like(tokens), np.ones_like(tokens)]
    # KerasHub's own layers (embeddings, TransformerEncoder) are quantized
    # from the inside (`tfaccel.quantization.sublayers`): nothing is refused.
    qat = tfaccel.quantize(model, calibration_data=x)
    path = tmp_path / "bert.tflite"
    report = tfaccel.export_tflite(
        qat, str(path), quantization="int8", verification_data=x,
        tolerance={"min_agreement": 0.9},
    )
    assert path.exists()
    assert report.agreement >= 0.9
    ops = tfaccel.inspect_tflite(str(path)).ops
    # Every projection, feed-forward, pooler and head matmul is int8.
    assert ops["FULLY_CONNECTED"].get("int8", 0) >= 8, ops
    assert "float32" not in ops["FULLY_CONNECTED"], ops
