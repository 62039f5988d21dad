"""kill -9 mid-schedule and resume: one-fit prune + QAT ends at the same masks.

The worker (this module run as `python -m tests.distribute.test_one_fit_resume
OUT KILL_EPOCH`) trains `quantize(prune(cnn))` for EPOCHS epochs with
`keras.callbacks.BackupAndRestore` (a backup at each epoch end). With
KILL_EPOCH > 0 its first run writes `OUT/marker.json` after that epoch's
backup and sleeps until the test SIGKILLs it; the pruning schedule is then
half way. A rerun restores the backup (`OUT/resumed.json`: the state it
restored) and trains to the end (`OUT/final.json`: masks and steps). An
uninterrupted run (KILL_EPOCH=0) must end at exactly the same masks.
"""

import json
import os
import sys
import time

import pytest

from tests.distribute import _harness

pytestmark = pytest.mark.slow

EPOCHS = 3
KILL_EPOCH = 1
SAMPLES, BATCH = 640, 64  # 10 steps per epoch, 30 in all
END_STEP = 24  # the schedule ends in the last epoch


def _state(model):
    from tfaccel.pruning import pruning_wrappers

    return {
        "iterations": int(model.optimizer.iterations.numpy()),
        "steps": [w.steps_done() for w in pruning_wrappers(model)],
        "masks": {
            w.name: [int(i) for i in (w.masks[0].numpy() == 0).ravel().nonzero()[0]]
            for w in pruning_wrappers(model)
        },
    }


def _write(path, data):
    with open(f"{path}.tmp", "w") as f:
        json.dump(data, f)
    os.replace(f"{path}.tmp", path)


def worker(out, kill_epoch):
    import keras
    import tensorflow as tf

    import tfaccel
    from tests.tiny_models import load_digits_split, make_cnn
    from tfaccel.schedules import PolynomialDecay

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    x, y, _, _ = load_digits_split()
    x, y = x[:SAMPLES], y[:SAMPLES]
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=END_STEP, frequency=3)
    model = tfaccel.quantize(tfaccel.prune(make_cnn(), schedule), calibration_data=x[:64])
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    marker = os.path.join(out, "marker.json")
    first_run = not os.path.exists(marker)

    class Probe(keras.callbacks.Callback):
        """After BackupAndRestore in the list: sees the state it restored."""

        def on_train_batch_begin(self, batch, logs=None):
            if kill_epoch and not first_run and not hasattr(self, "seen"):
                self.seen = True
                _write(os.path.join(out, "resumed.json"), _state(self.model))

        def on_epoch_end(self, epoch, logs=None):
            if kill_epoch and first_run and epoch + 1 == kill_epoch:
                _write(marker, _state(self.model))
                time.sleep(300)  # the test kills us here

    backup = keras.callbacks.BackupAndRestore(os.path.join(out, "backup"))
    model.fit(
        x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=[backup, Probe()],
    )
    _write(os.path.join(out, "final.json"), _state(model))


def _spawn(out, kill_epoch):
    import subprocess

    return subprocess.Popen(
        [_harness.PYTHON, "-m", "tests.distribute.test_one_fit_resume", str(out),
         str(kill_epoch)],
        cwd=_harness.ROOT,
        env=_harness.env(),
        stdout=open(out / "run.log", "a"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )


def _load(path):
    return json.loads(path.read_text())


def test_kill_and_resume_mid_schedule_ends_at_the_same_masks(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir()
    straight.mkdir()
    reference = _spawn(straight, 0)
    _harness.kill_at_marker(_spawn(killed, KILL_EPOCH), killed, "marker.json", 240)
    _harness.finish(_spawn(killed, KILL_EPOCH), killed, 240)
    _harness.finish(reference, straight, 240)

    at_kill = _load(killed / "marker.json")
    assert at_kill["iterations"] == 10
    assert at_kill["steps"] == [10] * 3  # mid-schedule: END_STEP is 24
    resumed = _load(killed / "resumed.json")
    assert resumed == at_kill  # masks and steps restored, not reset
    final, expected = _load(killed / "final.json"), _load(straight / "final.json")
    assert final["steps"] == expected["steps"] == [30] * 3
    assert final["masks"] == expected["masks"]
    assert final["masks"] != at_kill["masks"]  # pruning went on after resume


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
