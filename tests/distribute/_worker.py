"""Subprocess entry points for the distribute tests.

Run from the repository root as `python -m tests.distribute._worker MODE ...`.

* `multiworker OUT INDEX WORKAROUNDS`: one worker of a 2-process
  `MultiWorkerMirroredStrategy` (`TF_CONFIG` is set by the test). With
  WORKAROUNDS=`auto` the strategy comes from `tfaccel.distribute.auto_strategy()`
  (which applies the Keras workarounds); with `none` it is built directly and
  Keras is left unpatched; with `build_only` only workaround (1) is applied
  (to reproduce bug (2)). Trains the pruned digits CNN, writes
  `OUT/pruned{INDEX}.npz`, then (if tfaccel.quantization exists) QAT-trains
  its quantized copy and writes `OUT/qat{INDEX}.npz`. On error writes
  `OUT/worker{INDEX}.err` and exits 3.
* `resume OUT KILL_AFTER`: single-process training with
  `keras.callbacks.BackupAndRestore(save_freq=5)` in two phases, "prune"
  (then the pruned model is saved to `OUT/pruned.keras`) and "qat". In the
  first run of a phase, after KILL_AFTER batches (right after a backup) it
  writes `OUT/{phase}_marker.json` with the training state and sleeps so
  that the test can SIGKILL it. A rerun restores the backup and writes the
  restored state to `OUT/{phase}_resumed.json` before its first batch. At
  the end: `OUT/{phase}_final.json`, and `OUT/export.json` (the int8
  export's report) when tfaccel.export exists.
"""

import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tests.distribute import _helpers  # noqa: E402

EPOCHS = 2


def _write_json(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def multiworker(out, index, workarounds):
    import keras
    import tensorflow as tf

    # Full tracebacks: the test checks in which Keras function a bug fires.
    keras.config.disable_traceback_filtering()
    try:
        if workarounds == "auto":
            import tfaccel.distribute

            strategy = tfaccel.distribute.auto_strategy()
            assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        else:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            if workarounds == "build_only":
                from tfaccel.distribute import multi_worker

                multi_worker.apply_keras_workarounds()
                owner, name, original = multi_worker._originals.pop(
                    "reduce_per_replica"
                )
                setattr(owner, name, original)
        keras.utils.set_random_seed(0)
        x, y, _, _ = _helpers.digits()
        total = _helpers.steps(len(x), _helpers.BATCH, EPOCHS)
        with strategy.scope():
            model = _helpers.pruned_cnn(total)
            _helpers.compile_model(model)
        fit = dict(batch_size=_helpers.BATCH, shuffle=False, verbose=0)
        model.fit(x, y, epochs=EPOCHS, **fit)
        np.savez(os.path.join(out, f"pruned{index}.npz"), **_helpers.variable_arrays(model))
        if workarounds == "auto" and _helpers.can_quantize():
            with strategy.scope():
                qat = _helpers.quantized(model, x)
                _helpers.compile_model(qat)
            qat.fit(x, y, epochs=1, **fit)
            np.savez(os.path.join(out, f"qat{index}.npz"), **_helpers.variable_arrays(qat))
    except Exception:  # reported to the test through a file
        with open(os.path.join(out, f"worker{index}.err"), "w") as f:
            f.write(traceback.format_exc())
        sys.exit(3)


def _train_phase(model, phase, out, kill_after, x, y):
    import keras

    marker = os.path.join(out, f"{phase}_marker.json")
    first_run = not os.path.exists(marker)

    class Probe(keras.callbacks.Callback):
        """Reports state; after BackupAndRestore in the list, so it sees its work."""

        batches = 0
        recorded = False

        def on_train_batch_begin(self, batch, logs=None):
            if not first_run and not self.recorded:
                self.recorded = True  # BackupAndRestore.on_train_begin ran
                _write_json(
                    os.path.join(out, f"{phase}_resumed.json"),
                    _helpers.summary(self.model),
                )

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if first_run and self.batches == kill_after:
                _write_json(marker, _helpers.summary(self.model))
                time.sleep(300)  # the test kills us here

    backup = os.path.join(out, f"backup_{phase}")
    model.fit(
        x,
        y,
        batch_size=_helpers.BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=5), Probe()],
    )
    _write_json(os.path.join(out, f"{phase}_final.json"), _helpers.summary(model))


def resume(out, kill_after):
    import keras

    keras.utils.set_random_seed(0)
    x, y, x_test, _ = _helpers.digits()
    saved = os.path.join(out, "pruned.keras")
    if os.path.exists(saved):
        # A fresh process: the tfaccel classes register on import.
        import tfaccel.pruning  # noqa: F401

        model = keras.models.load_model(saved)
    else:
        model = _helpers.pruned_cnn(_helpers.steps(len(x), _helpers.BATCH, EPOCHS))
        _helpers.compile_model(model)
        model(x[:2])  # BackupAndRestore needs a built model
        _train_phase(model, "prune", out, kill_after, x, y)
        model.save(saved)
    if _helpers.can_quantize():
        model = _helpers.quantized(model, x)
        _helpers.compile_model(model)
        _train_phase(model, "qat", out, kill_after, x, y)
    if _helpers.can_export():
        report = _helpers.export_int8(model, os.path.join(out, "model.tflite"), x_test)
        _write_json(os.path.join(out, "export.json"), report)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "multiworker":
        multiworker(args[0], int(args[1]), args[2])
    elif mode == "resume":
        resume(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
