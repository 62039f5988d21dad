"""Top-1 agreement as verification counts it: reference ties are excused."""

import numpy as np

from tfaccel.export.verify import top1_agreement


def test_a_tie_in_the_keras_output_is_not_a_disagreement():
    # QAT logits are int8: two classes can hold exactly the same value.
    keras_out = np.array([[0.48046875, 0.48046875, 0.0390625],
                          [0.1, 0.7, 0.2]], np.float32)
    file_out = np.array([[0.44, 0.51, 0.05], [0.1, 0.7, 0.2]], np.float32)
    assert top1_agreement(keras_out, file_out) == 1.0
    # argmax equality would call the first sample a disagreement.
    assert np.mean(keras_out.argmax(-1) == file_out.argmax(-1)) == 0.5


def test_a_tie_in_the_file_is_not_excused():
    keras_out = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], np.float32)
    constant_file = np.full_like(keras_out, 1 / 3)  # argmax 0 everywhere
    assert top1_agreement(keras_out, constant_file) == 0.5


def test_wrong_classes_disagree_and_extra_axes_are_flattened():
    keras_out = np.eye(4, dtype=np.float32).reshape(2, 2, 4)
    file_out = np.roll(keras_out, 1, axis=-1)
    assert top1_agreement(keras_out, file_out) == 0.0
    assert top1_agreement(keras_out, keras_out) == 1.0
