"""The rows of the coverage matrix: model builders and their digits data.

Each row builds its model with the Keras module it is given (`keras` for
tfaccel, `tf_keras` for the tfmot peer), so both sides train the same
architecture on the same data. Nothing here imports Keras or tfaccel at
module level (the tfmot process must not import tfaccel).

Every row trains on scikit-learn's real digits, shaped for the model:
keras.applications rows see the 8x8 digits resized to their input with 3
channels (labels 0-9 under the default 1000-class softmax head); the
keras.io-style rows see the digits as token sequences, rows of pixels or
images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import common
import numpy as np

# Pixel ranges: rows whose model rescales its input itself (EfficientNet,
# EfficientNetV2, ConvNeXt, MobileNetV3 `include_preprocessing`) get 0-255.
_PIXELS_255 = (0.0, 255.0)
_PIXELS_SIGNED = (-1.0, 1.0)
# VGG16's own preprocessing (`vgg16.preprocess_input`, "caffe": 0-255 less
# the ImageNet channel means) gives about this range. On [-1, 1] its 16
# layers without BatchNormalization start from near-zero logits, and 128
# Adam steps (1e-3, 1e-4 or 3e-5) learned only the class prior (8.6%).
_PIXELS_CAFFE = (-128.0, 127.0)


@dataclass(frozen=True)
class Row:
    """One row: how to build the model and shape the digits for it.

    `build(k)` returns an uncompiled model built with Keras module `k`;
    `inputs(x8)` maps (n, 8, 8, 1) digits in [0, 1] to the model's inputs
    (an array or a list); `targets(x8, y)` gives the training targets;
    `loss(k)` the loss (or list of losses) to compile with.
    """

    name: str
    kind: str  # "applications" or "keras.io"
    build: Callable[[Any], Any]
    inputs: Callable[[np.ndarray], Any]
    targets: Callable[[np.ndarray, np.ndarray], Any]
    loss: Callable[[Any], Any]
    description: str = ""
    notes: list[str] = field(default_factory=list)
    float_lr: float | None = None  # the float fine-tune's Adam rate, if not common.LR


def _resize(size: int, pixels: tuple[float, float]):
    def inputs(x8: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = tf.image.resize(x8, (size, size), method="bilinear").numpy()
        x = np.repeat(np.clip(x, 0.0, 1.0), 3, axis=-1)
        low, high = pixels
        return (low + (high - low) * x).astype("float32")

    return inputs


def _labels(x8, y):
    return y


def _sparse_ce(k, from_logits=False):
    return k.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


# BatchNormalization momentum for the short fine-tunes: at Keras' 0.99 the
# moving statistics of a 32-step run stay 73% at their initial values, and
# the model in inference mode (what is exported and compared) is untrained.
BN_MOMENTUM = 0.9


def _application(name: str, size: int, pixels=_PIXELS_SIGNED, float_lr=None,
                 **kwargs) -> Row:
    def build(k):
        model = getattr(k.applications, name)(weights=None, input_shape=(size, size, 3),
                                              **kwargs)
        for layer in model.layers:
            if isinstance(layer, k.layers.BatchNormalization):
                layer.momentum = BN_MOMENTUM
        return model

    extra = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    lr = f", float fine-tune Adam {float_lr}" if float_lr else ""
    return Row(name, "applications", build, _resize(size, pixels), _labels,
               _sparse_ce, f"{name}(weights=None{', ' + extra if extra else ''}), "
               f"{size}x{size}x3, default 1000-class softmax head, pixels in {pixels}, "
               f"BatchNormalization momentum {BN_MOMENTUM}{lr}", float_lr=float_lr)


# Smallest input each family accepts (32 for most, 71 Xception, 75 InceptionV3).
APPLICATIONS = [
    _application("MobileNet", 32),
    _application("MobileNetV2", 32),
    _application("MobileNetV3Small", 32, _PIXELS_255),
    _application("MobileNetV3Large", 32, _PIXELS_255),
    _application("ResNet50", 32),
    _application("ResNet50V2", 32),
    _application("EfficientNetB0", 32, _PIXELS_255),
    _application("EfficientNetV2B0", 32, _PIXELS_255),
    _application("DenseNet121", 32),
    _application("NASNetMobile", 32),
    _application("Xception", 71),
    _application("InceptionV3", 75),
    _application("ConvNeXtTiny", 32, _PIXELS_255),
    # Its own pixel range and a lower rate: see _PIXELS_CAFFE (86.7% held out).
    _application("VGG16", 32, _PIXELS_CAFFE, float_lr=1e-4),
]


# --------------------------------------------------------------------------
# keras.io-style models on digits.

VOCAB = 17  # digit pixels are integers 0..16: a 64-token "sentence" per digit


def _tokens(x8: np.ndarray) -> np.ndarray:
    return np.round(x8.reshape(len(x8), 64) * 16).astype("int32")


def _pixel_rows(x8: np.ndarray) -> np.ndarray:
    return x8.reshape(len(x8), 8, 8).astype("float32")


def _image(x8: np.ndarray) -> np.ndarray:
    return x8.astype("float32")


def conv1d_text(k):
    """keras.io "text classification from scratch": Embedding, Conv1D, pooling."""
    inputs = k.Input((64,), dtype="int32", name="tokens")
    x = k.layers.Embedding(VOCAB, 16)(inputs)
    x = k.layers.Conv1D(32, 5, strides=2, activation="relu")(x)
    x = k.layers.Conv1D(32, 3, activation="relu")(x)
    x = k.layers.GlobalMaxPooling1D()(x)
    x = k.layers.Dense(32, activation="relu")(x)
    return k.Model(inputs, k.layers.Dense(10)(x), name="conv1d_text")


def bilstm_text(k):
    """keras.io "bidirectional LSTM on IMDB": Embedding, 2 x Bidirectional(LSTM)."""
    inputs = k.Input((64,), dtype="int32", name="tokens")
    x = k.layers.Embedding(VOCAB, 16)(inputs)
    x = k.layers.Bidirectional(k.layers.LSTM(16, return_sequences=True))(x)
    x = k.layers.Bidirectional(k.layers.LSTM(16))(x)
    return k.Model(inputs, k.layers.Dense(10)(x), name="bilstm_text")


def transformer_encoder(k):
    """keras.io "text classification with Transformer": a post-norm block
    (MultiHeadAttention, Add, LayerNorm, FFN, Add, LayerNorm) over the 8
    pixel rows of a digit."""
    inputs = k.Input((8, 8), name="rows")
    x = k.layers.Dense(16)(inputs)
    attn = k.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = k.layers.LayerNormalization(epsilon=1e-6)(k.layers.Add()([x, attn]))
    ffn = k.layers.Dense(32, activation="relu")(x)
    ffn = k.layers.Dense(16)(ffn)
    x = k.layers.LayerNormalization(epsilon=1e-6)(k.layers.Add()([x, ffn]))
    x = k.layers.GlobalAveragePooling1D()(x)
    return k.Model(inputs, k.layers.Dense(10)(x), name="transformer_encoder")


def conv_autoencoder(k):
    """keras.io "convolutional autoencoder": strided Conv2D down,
    Conv2DTranspose and UpSampling2D up, sigmoid image out."""
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    x = k.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu")(x)
    x = k.layers.UpSampling2D()(x)
    x = k.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    return k.Model(inputs, x, name="conv_autoencoder")


def two_io(k):
    """A functional model with two inputs (image, row/column ink) and two
    outputs (class logits, mean ink)."""
    image = k.Input((8, 8, 1), name="image")
    side = k.Input((16,), name="side")
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = k.layers.Flatten()(x)
    s = k.layers.Dense(8, activation="relu")(side)
    x = k.layers.Concatenate()([x, s])
    x = k.layers.Dense(32, activation="relu")(x)
    logits = k.layers.Dense(10, name="digit")(x)
    ink = k.layers.Dense(1, name="ink")(x)
    return k.Model([image, side], [logits, ink], name="two_io")


def _two_inputs(x8):
    img = x8.astype("float32")
    side = np.concatenate([img.mean(axis=(2, 3)), img.mean(axis=(1, 3))], axis=1)
    return [img, side.astype("float32")]


def _two_targets(x8, y):
    return [y, x8.mean(axis=(1, 2, 3)).astype("float32")[:, None]]


def nested_sequential(k):
    """A Sequential feature block (Conv-BN-ReLU-MaxPool x2) inside a functional
    model with its own head."""
    block = k.Sequential([
        k.Input((8, 8, 1)),
        k.layers.Conv2D(8, 3, padding="same", use_bias=False),
        k.layers.BatchNormalization(momentum=BN_MOMENTUM),
        k.layers.ReLU(),
        k.layers.MaxPooling2D(),
        k.layers.Conv2D(16, 3, padding="same", use_bias=False),
        k.layers.BatchNormalization(momentum=BN_MOMENTUM),
        k.layers.ReLU(),
    ], name="features")
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.GlobalAveragePooling2D()(block(inputs))
    x = k.layers.Dense(32, activation="relu")(x)
    return k.Model(inputs, k.layers.Dense(10)(x), name="nested_sequential")


def grouped_conv(k):
    """A grouped convolution, Conv2D(groups=2), between plain ones."""
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = k.layers.Conv2D(16, 3, padding="same", groups=2, activation="relu")(x)
    x = k.layers.Conv2D(16, 1, activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(10)(x), name="grouped_conv")


def _logits_ce(k):
    return _sparse_ce(k, from_logits=True)


# The three smallest keras.io rows barely learn in 128 steps at Adam 1e-3
# (held-out accuracy 8-20%: a QAT file agreeing with an untrained model is
# no evidence); at 1e-2 they reach 55-92% (nested_sequential also needs the
# BatchNormalization momentum of the applications rows).
_SMALL_LR = 1e-2


KERAS_IO = [
    Row("conv1d_text", "keras.io", conv1d_text, _tokens, _labels, _logits_ce,
        "Embedding(17,16), Conv1D(32,5,s2), Conv1D(32,3), GlobalMaxPool1D, Dense; "
        f"digits as 64 tokens; float fine-tune Adam {_SMALL_LR}", float_lr=_SMALL_LR),
    Row("bilstm_text", "keras.io", bilstm_text, _tokens, _labels, _logits_ce,
        "Embedding(17,16), 2 x Bidirectional(LSTM(16)), Dense; digits as 64 tokens"),
    Row("transformer_encoder", "keras.io", transformer_encoder, _pixel_rows, _labels,
        _logits_ce, "Dense(16), MultiHeadAttention(2x8), Add+LayerNorm, FFN(32), "
        "Add+LayerNorm, GAP1D, Dense; digits as 8 rows of 8 pixels"),
    Row("conv_autoencoder", "keras.io", conv_autoencoder, _image, lambda x8, y: x8,
        lambda k: k.losses.BinaryCrossentropy(),
        "Conv2D s2 x2, Conv2DTranspose s2, UpSampling2D, Conv2D sigmoid; 8x8 digits "
        "reconstructed"),
    Row("two_io", "keras.io", two_io, _two_inputs, _two_targets,
        lambda k: [_sparse_ce(k, from_logits=True), k.losses.MeanSquaredError()],
        "inputs image 8x8x1 + 16 row/column means; outputs 10 logits + mean ink"),
    Row("nested_sequential", "keras.io", nested_sequential, _image, _labels, _logits_ce,
        "Sequential(Conv-BN-ReLU-MaxPool-Conv-BN-ReLU) inside a functional model, GAP, "
        f"Dense x2; BatchNormalization momentum {BN_MOMENTUM}, float fine-tune Adam "
        f"{_SMALL_LR}", float_lr=_SMALL_LR),
    Row("grouped_conv", "keras.io", grouped_conv, _image, _labels, _logits_ce,
        "Conv2D(8), Conv2D(16, groups=2), Conv2D(16,1), GAP, Dense; float fine-tune "
        f"Adam {_SMALL_LR}", float_lr=_SMALL_LR),
]

ROWS: dict[str, Row] = {r.name: r for r in APPLICATIONS + KERAS_IO}


def row_data(row: Row, n_train: int, n_test: int) -> dict[str, Any]:
    """The row's training and held-out data, from `common.load_digits_split`.

    Returns `{"x", "y", "x_test", "y_test"}` shaped for `row`; `x_test` is
    the verification set (digits not trained on).
    """
    x8, y, x8_test, y_test = common.load_digits_split()
    x8, y = x8[:n_train], y[:n_train]
    x8_test, y_test = x8_test[:n_test], y_test[:n_test]
    return {"x": row.inputs(x8), "y": row.targets(x8, y),
            "x_test": row.inputs(x8_test), "y_test": row.targets(x8_test, y_test)}


def take(x, n: int):
    """The first `n` samples of an array or of each array in a list."""
    if isinstance(x, (list, tuple)):
        return [a[:n] for a in x]
    return x[:n]
