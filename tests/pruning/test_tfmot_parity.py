"""Inside `fit`, the k-th training step sees what tfmot's k-th step sees.

The same model shape, data, schedule and batches go through tfmot (tf_keras,
its own process: importing tfmot flips the whole process to Keras 2) and
tfaccel; the fraction of zeros in the mask after every step must match.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tfaccel
from tfaccel.schedules import ConstantSparsity, PolynomialDecay

_TFMOT_FIT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
    s = tfmot.sparsity.keras
    kind, kwargs, steps, x_path = json.loads(sys.argv[1])
    x = np.load(x_path)
    y = np.arange(len(x)) % 10
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    pruned = s.prune_low_magnitude(model, pruning_schedule=getattr(s, kind)(**kwargs))
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapper = pruned.layers[0]
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            mask = wrapper.pruning_vars[0][1].numpy()
            seen.append(float((mask == 0).mean()))

    pruned.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=steps, shuffle=False,
               verbose=0, callbacks=[s.UpdatePruningStep(), Record()])
    print("JSON" + json.dumps(seen))
    """
)


def _tfmot_sparsities(kind, kwargs, steps, x, tmp_path):
    path = os.path.join(tmp_path, "x.npy")
    np.save(path, x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _TFMOT_FIT, json.dumps([kind, kwargs, steps, path])],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("JSON"))
    return json.loads(line[4:])


def _tfaccel_sparsities(schedule, steps, x):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    pruned = tfaccel.prune(model, schedule)
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapper = pruned.layers[0]
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(
            float((wrapper.masks[0].numpy() == 0).mean())
        )
    )
    y = np.arange(len(x)) % 10
    pruned.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=steps, shuffle=False,
               verbose=0, callbacks=[record])
    return seen


CASES = [
    ("PolynomialDecay", dict(initial_sparsity=0.0, final_sparsity=0.6, begin_step=0, end_step=4, frequency=1), 6),
    ("ConstantSparsity", dict(target_sparsity=0.5, begin_step=2, end_step=-1, frequency=1), 5),
    ("PolynomialDecay", dict(initial_sparsity=0.1, final_sparsity=0.8, begin_step=1, end_step=9, frequency=2), 11),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind, kwargs, steps", CASES, ids=["poly", "constant_begin2", "poly_freq2"])
def test_per_step_sparsity_matches_tfmot_inside_fit(kind, kwargs, steps, digits, tmp_path):
    x = digits[0][: 8 * steps].reshape(-1, 64).astype("float32")
    theirs = _tfmot_sparsities(kind, kwargs, steps, x, tmp_path)
    schedule = {"PolynomialDecay": PolynomialDecay, "ConstantSparsity": ConstantSparsity}[kind]
    ours = _tfaccel_sparsities(schedule(**kwargs), steps, x)
    assert len(theirs) == len(ours) == steps
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_one_shot_schedule_prunes_once_at_its_step(digits):
    # begin_step == end_step: tfmot's one-shot pruning.
    x = digits[0][:40].reshape(-1, 64).astype("float32")
    ours = _tfaccel_sparsities(ConstantSparsity(0.5, begin_step=3, end_step=3), 5, x)
    assert ours == [0.0, 0.0, 0.5, 0.5, 0.5]
