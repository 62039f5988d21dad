"""QAT on real digits: calibration, folding, fine-tuning, agreement with int8."""

import keras
import numpy as np

from tests.quantization import tflite_utils as tfl
from tests.quantization.conftest import compile_classifier
from tests.tiny_models import make_cnn
from tfaccel.quantization import QuantizeWrapper, quantize


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def test_calibrated_qat_model_matches_float_accuracy(trained_cnn, digits):
    x_train, _, x_test, y_test = digits
    float_acc = _accuracy(trained_cnn, x_test, y_test)
    assert float_acc > 0.9  # the float model learned something real
    qat = quantize(trained_cnn, calibration_data=x_train)
    assert abs(_accuracy(qat, x_test, y_test) - float_acc) <= 0.005


def test_folded_outputs_match_float_within_quantization_noise(trained_cnn, digits):
    x_train, _, x_test, _ = digits
    qat = quantize(trained_cnn, calibration_data=x_train)
    want = trained_cnn.predict(x_test, verbose=0)
    got = qat.predict(x_test, verbose=0)
    spread = want.max() - want.min()
    # Three int8 roundings of ~spread/255 each, plus weight rounding.
    assert np.abs(got - want).max() < 0.05 * spread
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.98
    # Without calibration every activation range is [0, 0]: output collapses,
    # so the agreement above comes from calibration, not from luck.
    raw = quantize(trained_cnn).predict(x_test[:32], verbose=0)
    assert np.allclose(raw, 0.0)


def test_fine_tuned_int8_file_agrees_with_qat_model(trained_cnn, digits):
    x_train, y_train, x_test, y_test = digits
    float_acc = _accuracy(trained_cnn, x_test, y_test)
    qat = compile_classifier(quantize(trained_cnn, calibration_data=x_train), lr=1e-3)
    qat.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    keras_logits = qat.predict(x_test, verbose=0)
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    int8_logits = tfl.predict_int8(it, x_test)
    agreement = np.mean(np.argmax(int8_logits, -1) == np.argmax(keras_logits, -1))
    assert agreement >= 0.99
    int8_acc = float(np.mean(np.argmax(int8_logits, -1) == y_test))
    assert int8_acc >= float_acc - 0.01


def test_zero_weights_stay_zero_through_qat_and_into_int8_file(digits):
    x_train, y_train, _, _ = digits
    model = make_cnn()
    rng = np.random.default_rng(0)
    masks = {}
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel = layer.kernel.numpy()
            mask = rng.random(kernel.shape) > 0.7  # 70% zeros
            layer.kernel.assign(kernel * mask)
            masks[layer.name] = mask
    qat = compile_classifier(quantize(model, calibration_data=x_train[:256]))
    qat.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert len(wrappers) == 3
    for wrapper in wrappers:
        mask = masks[wrapper.layer.name]
        effective = np.asarray(wrapper.quantized_kernel())
        assert np.all(effective[~mask] == 0.0)
        assert np.count_nonzero(effective) <= mask.sum()
        assert np.count_nonzero(effective) > 0.9 * mask.sum()
    it = tfl.interpreter(tfl.to_int8_tflite(qat))
    zeros = []
    for name, ins, _ in tfl.ops_with_tensors(it):
        if name in ("CONV_2D", "FULLY_CONNECTED"):
            zeros.append(np.mean(it.get_tensor(ins[1]["index"]) == 0))
    assert len(zeros) == 3
    assert min(zeros) >= 0.7 - 0.02


def test_pruned_model_is_stripped_and_keeps_its_zeros(trained_cnn, digits):
    from tfaccel.pruning import prune, sparsity
    from tfaccel.schedules import ConstantSparsity

    x_train, y_train, _, _ = digits
    pruned = compile_classifier(prune(trained_cnn, ConstantSparsity(0.6, frequency=1)))
    pruned.fit(x_train[:256], y_train[:256], epochs=1, batch_size=64, verbose=0)
    qat = compile_classifier(quantize(pruned, calibration_data=x_train[:256]))
    assert type(qat.get_layer(f"quant_{trained_cnn.layers[1].name}")) is QuantizeWrapper
    qat.fit(x_train[:256], y_train[:256], epochs=1, batch_size=64, verbose=0)
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert all(w.preserve_sparsity for w in wrappers)
    for w in wrappers:
        zeros = np.mean(np.asarray(w.quantized_kernel()) == 0.0)
        assert zeros >= 0.6 - 0.01
    assert min(sparsity(pruned).values()) >= 0.6 - 0.01
