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
