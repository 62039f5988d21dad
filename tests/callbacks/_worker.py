"""Subprocesses of the callback tests: the digits CNN pruned by `Pruning`.

`python -m tests.callbacks._worker resume OUT KILL` trains 3 epochs with
`[Pruning(...), BackupAndRestore(OUT/backup), Probe]`. With KILL=1 and no
`OUT/marker.npz` yet, after the first epoch's backup it writes the pruned
weights' zeros to `OUT/marker.npz` and sleeps until the test SIGKILLs it.
A rerun resumes from the backup. At the end: `OUT/final.npz` (the zeros of
every pruned weight) and `OUT/weights.npz` (every weight).

`python -m tests.callbacks._worker multiworker OUT INDEX` (with TF_CONFIG)
trains 3 epochs under `MultiWorkerMirroredStrategy` (from
`tfaccel.distribute.auto_strategy`) and writes `OUT/weights{INDEX}.npz`.
"""

import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

EPOCHS = 3
BATCH = 64  # 22 steps per epoch; the schedule prunes until step 50


def _setup(strategy=None):
    import keras

    from tests.tiny_models import load_digits_split, make_cnn
    from tfaccel.callbacks import Pruning
    from tfaccel.schedules import PolynomialDecay

    keras.utils.set_random_seed(0)
    x, y, _, _ = load_digits_split()
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = make_cnn()
        model.compile(
            keras.optimizers.Adam(1e-2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    pruning = Pruning(PolynomialDecay(0.0, 0.8, begin_step=0, end_step=50, frequency=4))
    return x, y, model, pruning


def _save_weights(path, model):
    np.savez(path, **{v.path.replace("/", "."): v.numpy() for v in model.weights})


def multiworker(out, index):
    import tfaccel.distribute

    x, y, model, pruning = _setup(tfaccel.distribute.auto_strategy())
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[pruning])
    _save_weights(os.path.join(out, f"weights{index}.npz"), model)


def resume(out, kill):
    import keras
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    x, y, model, pruning = _setup()
    marker = os.path.join(out, "marker.npz")

    def zeros():
        return {v.path: v.numpy() == 0 for v in pruning.pruned_weights}

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if kill and epoch == 0 and not os.path.exists(marker):
                np.savez(marker + ".tmp.npz", **zeros())
                os.replace(marker + ".tmp.npz", marker)
                time.sleep(300)  # the test kills us here

    backup = keras.callbacks.BackupAndRestore(os.path.join(out, "backup"))
    model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=[pruning, backup, Probe()],
    )
    np.savez(os.path.join(out, "final.npz"), **zeros())
    _save_weights(os.path.join(out, "weights.npz"), model)


if __name__ == "__main__":
    mode, out, number = sys.argv[1:]
    {"resume": resume, "multiworker": multiworker}[mode](out, int(number))
