"""Properties of the fake-quant functions (the int8 grid TFLite stores)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tfaccel.quantization import fake_quant_activation, fake_quant_weight

_floats = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (3, 3, 2, 4), elements=_floats))
def test_per_channel_weights_lie_on_symmetric_int8_grid(w):
    q = np.asarray(fake_quant_weight(w, "per_channel"))
    bound = np.maximum(np.abs(w).max(axis=(0, 1, 2)), 1e-8)
    scale = bound / 127.0
    levels = q / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert np.abs(levels).max() <= 127 + 1e-3
    assert np.all(np.abs(q - w) <= scale / 2 + 1e-5)
    assert np.all(q[w == 0] == 0)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (3, 3, 2, 3), elements=_floats))
def test_depthwise_weights_quantized_per_output_channel(w):
    q = np.asarray(fake_quant_weight(w, "depthwise"))
    flat_w, flat_q = w.reshape(3, 3, 6), q.reshape(3, 3, 6)
    scale = np.maximum(np.abs(flat_w).max(axis=(0, 1)), 1e-8) / 127.0
    assert np.all(np.abs(flat_q - flat_w) <= scale / 2 + 1e-5)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float32, (6, 5), elements=_floats))
def test_per_tensor_weights_share_one_scale(w):
    q = np.asarray(fake_quant_weight(w, "per_tensor"))
    scale = max(np.abs(w).max(), 1e-8) / 127.0
    assert np.all(np.abs(q - w) <= scale / 2 + 1e-5)


@settings(max_examples=25, deadline=None)
@given(
    st.floats(-5, 0), st.floats(0.01, 5), arrays(np.float32, (16,), elements=_floats)
)
def test_activation_error_at_most_half_a_step_inside_range(low, high, x):
    q = np.asarray(fake_quant_activation(x, low, high))
    step = (high - low) / 255.0
    inside = (x >= low) & (x <= high)
    assert np.all(
        np.abs(q[inside] - x[inside]) <= step / 2 + 1e-4 * max(1.0, high - low)
    )
    assert np.all(q >= low - step) and np.all(q <= high + step)
    assert (
        float(np.asarray(fake_quant_activation(np.zeros(1, "float32"), low, high))[0])
        == 0.0
    )


def _quantizer_step(relu, x, fused, start=None, training=True):
    """Output, input gradient and range of one ActivationQuantizer step."""
    import tensorflow as tf

    from tfaccel.quantization import ActivationQuantizer

    q = ActivationQuantizer(activation=relu if fused else None)
    q.build(x.shape)
    if start is not None:
        q.range_min.assign(start[0])
        q.range_max.assign(start[1])
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        if fused:
            y = q(x, training=training)
        else:
            y = q(tf.nn.relu6(x) if relu == "relu6" else tf.nn.relu(x), training=training)
        loss = tf.reduce_sum(y * tf.range(1.0, 1.0 + x.shape[-1]))
    grad = tape.gradient(loss, x)
    return y.numpy(), grad.numpy(), (float(q.range_min), float(q.range_max))


@settings(max_examples=20, deadline=None)
@given(
    arrays(np.float32, (4, 7), elements=st.floats(-8, 8, allow_nan=False, width=32)),
    st.sampled_from(["relu", "relu6"]),
    st.sampled_from([None, (0.0, 2.5), (0.0, 6.0)]),
    st.booleans(),
)
def test_relu_folded_into_the_quantizer_is_the_activation_then_the_quantizer(
    x, relu, start, training
):
    # In training the quantizer skips ReLU/ReLU6 and lets its clip to
    # [0, max] be the activation: same output and ranges as applying the
    # activation first; same gradient except on the range's ends.
    y_fused, g_fused, r_fused = _quantizer_step(relu, x, True, start, training)
    y_plain, g_plain, r_plain = _quantizer_step(relu, x, False, start, training)
    np.testing.assert_array_equal(y_fused, y_plain)
    np.testing.assert_allclose(r_fused, r_plain, rtol=1e-6)
    assert r_fused[0] == 0.0 and r_fused[1] <= (6.0 if relu == "relu6" else np.inf)
    inside = (x != 0.0) & (x != 6.0) & (x != r_fused[1])
    np.testing.assert_array_equal(g_fused[inside], g_plain[inside])


def test_activation_argument_is_checked_and_saved():
    import pytest

    from tfaccel.quantization import ActivationQuantizer

    with pytest.raises(ValueError, match="`activation` must be None, 'relu' or 'relu6'"):
        ActivationQuantizer(activation="gelu")
    config = ActivationQuantizer(activation="relu6").get_config()
    assert ActivationQuantizer.from_config(config).activation == "relu6"
    assert "activation" not in ActivationQuantizer().get_config()
