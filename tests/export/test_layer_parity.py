"""`compare_layers`: per-layer parity of an int8 file with its QAT model."""

import numpy as np
import pytest

from tfaccel import export_tflite
from tfaccel.export import compare_layers
from tfaccel.quantization import QuantizeWrapper, quantize


@pytest.fixture(scope="module")
def qat_file(trained_cnn, digits, tmp_path_factory):
    x_train, _, x_test, _ = digits
    qat = quantize(trained_cnn, calibration_data=x_train[:256])
    path = str(tmp_path_factory.mktemp("parity") / "cnn_int8.tflite")
    export_tflite(qat, path, verification_data=x_test[:64])
    return qat, path, x_test[:64]


def test_every_quantized_layer_is_found_and_matches_the_file(qat_file):
    qat, path, x = qat_file
    rows = compare_layers(qat, path, x)
    wrappers = [layer.name for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert wrappers and set(wrappers) <= {r.layer for r in rows}
    assert [r.op_index for r in rows] == sorted(r.op_index for r in rows)
    for row in rows:
        # Bit-exact up to outputs on a rounding boundary: a step at most.
        assert row.off_by_more == 0.0, row
        assert row.exact >= 0.95, row


def test_a_layer_that_computes_differently_is_pointed_at(qat_file):
    qat, path, x = qat_file
    wrapper = next(layer for layer in qat.layers if isinstance(layer, QuantizeWrapper))
    kernel = wrapper.layer.kernel
    saved = kernel.numpy()
    kernel.assign(saved * -1.0)  # the Keras model no longer is the file's
    try:
        rows = {r.layer: r for r in compare_layers(qat, path, x)}
    finally:
        kernel.assign(saved)
    assert rows[wrapper.name].off_by_more > 0.2
    assert rows[wrapper.name].max_steps >= 10


def test_bad_inputs_are_named(qat_file):
    qat, path, x = qat_file
    with pytest.raises(ValueError, match=r"`x` must be a batch .*Received: x.shape"):
        compare_layers(qat, path, x[:, :4])
    assert np.isfinite(x).all()


def test_alone_each_layer_matches_the_file_on_its_own_inputs(qat_file):
    qat, path, x = qat_file
    rows = compare_layers(qat, path, x)
    alone = [r for r in rows if r.alone_differ is not None]
    # Every layer after the first reads compared layers' tensors.
    assert len(alone) >= len(rows) - 2, rows
    for row in alone:
        assert row.alone_max_steps <= 1 and row.alone_differ <= 0.02, row


def test_alone_tells_a_modelling_error_from_what_it_passes_on(qat_file):
    qat, path, x = qat_file
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    broken, after = wrappers[0], wrappers[1]
    kernel = broken.layer.kernel
    saved = kernel.numpy()
    kernel.assign(saved * -1.0)
    try:
        rows = {r.layer: r for r in compare_layers(qat, path, x)}
    finally:
        kernel.assign(saved)
    assert rows[broken.name].alone_differ is not None
    assert rows[broken.name].alone_max_steps >= 10  # wrong on its own
    assert rows[after.name].off_by_more > 0.2  # wrong inputs, end to end
    assert rows[after.name].alone_max_steps <= 1  # but right on the file's inputs


def test_alone_runs_through_operations_between_layers(digits, tmp_path):
    # `x + y` and a ReLU op between layers (keras.ops nodes, no `training`),
    # a pooling without weights before the head.
    import keras

    x_train, y_train, x_test, _ = digits
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.ops.relu(x + y)
    x = keras.layers.MaxPooling2D()(x)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train[:512], y_train[:512], epochs=2, verbose=0)
    qat = quantize(model, calibration_data=x_train[:256])
    path = str(tmp_path / "m.tflite")
    export_tflite(qat, path, verification_data=x_test[:64])
    rows = compare_layers(qat, path, x_test[:64])
    alone = [r for r in rows if r.alone_differ is not None]
    assert len(alone) >= 3, rows
    for row in alone:
        assert row.alone_max_steps <= 1, row
