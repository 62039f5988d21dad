"""Subprocess for the kill -9 test: the digits CNN pruned by the callback.

`python -m tests.callbacks._resume_worker OUT KILL` trains 3 epochs with
`[Pruning(...), BackupAndRestore(OUT/backup), Probe]`. With KILL=1 and no
`OUT/marker.npz` yet, after the first epoch's backup it writes the pruned
weights' zeros to `OUT/marker.npz` and sleeps until the test SIGKILLs it.
A rerun resumes from the backup. At the end: `OUT/final.npz` (the zeros of
every pruned weight) and `OUT/weights.npz` (every weight).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

EPOCHS = 3
BATCH = 64  # 22 steps per epoch; the schedule prunes until step 50


def main(out, kill):
    import keras
    import tensorflow as tf

    from tests.tiny_models import load_digits_split, make_cnn
    from tfaccel.callbacks import Pruning
    from tfaccel.schedules import PolynomialDecay

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    x, y, _, _ = load_digits_split()
    model = make_cnn()
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pruning = Pruning(PolynomialDecay(0.0, 0.8, begin_step=0, end_step=50, frequency=4))
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
    np.savez(
        os.path.join(out, "weights.npz"),
        **{f"{i:02d}": v.numpy() for i, v in enumerate(model.weights)},
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
