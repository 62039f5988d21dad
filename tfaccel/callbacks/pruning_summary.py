"""`PruningSummary`: report per-weight sparsity during training."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from tfaccel._warnings import TfaccelWarning
from tfaccel.pruning.base import pruning_wrappers

__all__ = ["PruningSummary"]


class PruningSummary(keras.callbacks.Callback):
    """Log the sparsity of every pruned weight; warn about too-long schedules.

    Works for every `tfaccel.pruning.base.PruningWrapper` (unstructured,
    N:M and channel pruning alike) through their shared interface: `step`,
    `schedule` and `sparsity()`. Reporting only: pruning is exact without
    this callback. At the end of each epoch it adds
    `sparsity/<layer>/<weight>` entries to `logs` (so they appear in
    `History`) and, with `log_dir`, writes them as TensorBoard scalars.
    Prunable weights the pruned model left dense (a layer `structure="2:4"`
    cannot tile, a layer not selected) are logged too, at their own
    sparsity, and listed with the reason in `left_dense` (weight key -> why,
    see `tfaccel.pruning.sparsity`). At the first epoch `fit` runs it warns (`TfaccelWarning`) when a
    schedule's `end_step` lies beyond the last step this `fit` will run
    (counting from `initial_epoch`), since the final sparsity would then
    never be reached.

    Example:

    >>> mlp = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(10)])
    >>> import tfaccel.pruning as tp
    >>> model = tp.prune(mlp)
    >>> model.compile("adam", "mse")
    >>> callbacks = [PruningSummary()]  # model.fit(..., callbacks=callbacks)

    Args:
        log_dir: optional directory for TensorBoard summaries.
    """

    def __init__(self, log_dir: str | None = None):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None
        self._checked = True
        self.left_dense: dict[str, str] = {}

    def on_train_begin(self, logs=None):
        self._checked = False

    def on_epoch_begin(self, epoch, logs=None):
        # Checked at the first epoch `fit` runs, not at train begin: `epoch`
        # is then known (`initial_epoch`, or the one `BackupAndRestore`
        # resumes at, after it restored the step counters).
        if self._checked:
            return
        self._checked = True
        wrappers = pruning_wrappers(self.model)
        total = self.params.get("epochs") if self.params else None
        steps = self.params.get("steps") if self.params else None
        if not wrappers or not total or not steps:
            return
        epochs = total - epoch
        for wrapper in wrappers:
            schedule = wrapper.schedule
            start = int(keras.ops.convert_to_numpy(wrapper.step))
            # Training calls see steps start .. start + epochs * steps - 1.
            last = start + epochs * steps - 1
            if schedule.end_step >= 0 and schedule.end_step > last:
                warnings.warn(
                    f"The pruning schedule of layer '{wrapper.name}' ends at "
                    f"step {schedule.end_step} but training stops at step "
                    f"{last} (starting at step {start}, {epochs} epochs x "
                    f"{steps} steps): target sparsity "
                    f"{schedule.final_sparsity:g} will not be reached. Use "
                    f"end_step <= {last} or train longer.",
                    TfaccelWarning,
                    stacklevel=2,
                )

    def on_epoch_end(self, epoch, logs=None):
        from tfaccel.pruning.prune import sparsity

        view = sparsity(self.model) if pruning_wrappers(self.model) else {}
        self.left_dense = dict(getattr(view, "dense", {}))
        values = {f"sparsity/{key}": value for key, value in view.items()}
        if logs is not None:
            logs.update(values)
        if self.log_dir and values:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            # `tf.summary.write` with the scalars plugin's metadata is what
            # `tf.summary.scalar` writes, without requiring TensorBoard.
            metadata = tf.compat.v1.SummaryMetadata(
                plugin_data=tf.compat.v1.SummaryMetadata.PluginData(
                    plugin_name="scalars"
                )
            )
            with self._writer.as_default():
                for key, value in values.items():
                    tf.summary.write(
                        key,
                        tf.constant(value, tf.float32),
                        step=epoch,
                        metadata=metadata,
                    )
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
