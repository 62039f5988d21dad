"""Isolated workarounds for Keras 3 `fit` under `MultiWorkerMirroredStrategy`.

Keras 3.15.1 (TensorFlow backend) cannot run `model.fit` under a
`tf.distribute.MultiWorkerMirroredStrategy` with two or more workers; two
spots in `keras/src/backend/tensorflow/trainer.py` fail before or at the
first step:

1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the first
   batch and, to turn the distributed batch into plain tensors, *reduces* the
   whole `(x, y)` `PerReplica` tuple across workers with a MEAN
   (keras-team/keras#20585). A collective over the input data, run eagerly
   while building, fails across processes. Only the shapes matter for the
   build, so the workaround reads the first local replica's batch instead.
2. `reduce_per_replica` reduces every step output with
   `strategy.reduce("MEAN", v, axis=0)` when multi-worker, and the loss is a
   scalar: "Invalid reduction dimension 0". The workaround reduces rank-0
   values with `axis=None` (the cross-replica mean, which is what `axis=0`
   means for a batch of one scalar per replica) and leaves all other values
   to Keras.

Why explicit and not at import: patching another library is a global side
effect. Importing `tfaccel` must not change how Keras trains models of users
who never use multi-worker training, so the patch is applied only by
`apply_keras_workarounds()`, which `tfaccel.distribute.auto_strategy()` calls
when (and only when) it builds a multi-worker strategy. The patch is applied
only to Keras versions known to be broken (`KNOWN_BROKEN_KERAS`); the test
suite runs the unpatched reproduction so that it fails the day the upstream
fix lands, which is the signal to delete this module.
"""

from __future__ import annotations

import functools
import logging
import re

import keras
import tensorflow as tf

__all__ = [
    "KNOWN_BROKEN_KERAS",
    "apply_keras_workarounds",
    "keras_workarounds_applied",
    "remove_keras_workarounds",
]

_log = logging.getLogger("tfaccel.distribute")

# Inclusive range of Keras versions in which both bugs were reproduced with a
# two-process run on 127.0.0.1 (tests/distribute/test_multi_worker.py).
KNOWN_BROKEN_KERAS: tuple[tuple[int, int, int], tuple[int, int, int]] = (
    (3, 0, 0),
    (3, 15, 1),
)

# name -> (owner object, attribute, original value); filled while applied.
_originals: dict[str, tuple[object, str, object]] = {}


def _keras_version() -> tuple[int, int, int]:
    parts = []
    for piece in keras.version().split(".")[:3]:
        # Leading digits only: "1rc0" is 1 (a pre-release of x.y.1), not 10.
        digits = re.match(r"\d*", piece).group()
        parts.append(int(digits or 0))
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)  # type: ignore[return-value]


def _is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.extended._in_multi_worker_mode()


def _trainer_module():
    # The two functions live in this private module; it is imported lazily so
    # that `import tfaccel` never touches Keras internals.
    from keras.src.backend.tensorflow import trainer

    return trainer


def _patched_maybe_symbolic_build(original):
    @functools.wraps(original)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not _is_multi_worker(strategy):
            return original(self, iterator=iterator, data_batch=data_batch)
        # Same batch the original takes, but the first local replica's
        # values instead of a cross-worker MEAN (only shapes are needed).
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0], batch
            )
            break
        return original(self, iterator=None, data_batch=data_batch)

    return _maybe_symbolic_build


def _patched_reduce_per_replica(original):
    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        if not _is_multi_worker(strategy) or reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)

        def _reduce(v):
            first = (
                v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
            )
            if getattr(first, "shape", None) is not None and first.shape.rank == 0:
                return strategy.reduce("MEAN", v, axis=None)
            return original(v, strategy, reduction)

        return tf.nest.map_structure(_reduce, values)

    return reduce_per_replica


def keras_workarounds_applied() -> bool:
    """Whether `apply_keras_workarounds()` patched Keras in this process."""
    return bool(_originals)


def apply_keras_workarounds(force: bool = False) -> list[str]:
    """Patch the two Keras spots that break multi-worker `fit`.

    Idempotent. Applied only when the installed Keras is in
    `KNOWN_BROKEN_KERAS` (or `force=True`); on other versions it does nothing
    and logs why. Both patches are no-ops unless the trainer's strategy is a
    `MultiWorkerMirroredStrategy` in multi-worker mode, so single-process,
    `MirroredStrategy` and TPU training keep Keras' own code paths.

    `tfaccel.distribute.auto_strategy()` calls this when it builds a
    multi-worker strategy; call it yourself if you build
    `tf.distribute.MultiWorkerMirroredStrategy` directly.

    Example:

    >>> from tfaccel.distribute import multi_worker
    >>> applied = multi_worker.apply_keras_workarounds()
    >>> sorted(applied) == (
    ...     ["maybe_symbolic_build", "reduce_per_replica"]
    ...     if multi_worker.keras_workarounds_applied() else [])
    True
    >>> multi_worker.remove_keras_workarounds()

    Args:
        force: apply even if the Keras version is not known to be broken.

    Returns:
        The names of the patched spots (empty when nothing was patched).
    """
    low, high = KNOWN_BROKEN_KERAS
    version = _keras_version()
    if not force and not (low <= version <= high):
        _log.info(
            "Keras %s is outside the known-broken range %s..%s: multi-worker "
            "workarounds not applied.",
            keras.version(),
            low,
            high,
        )
        return []
    if _originals:
        return sorted(_originals)
    trainer = _trainer_module()
    cls = trainer.TensorFlowTrainer
    _originals["maybe_symbolic_build"] = (
        cls,
        "_maybe_symbolic_build",
        cls.__dict__["_maybe_symbolic_build"],
    )
    _originals["reduce_per_replica"] = (
        trainer,
        "reduce_per_replica",
        trainer.reduce_per_replica,
    )
    cls._maybe_symbolic_build = _patched_maybe_symbolic_build(
        cls.__dict__["_maybe_symbolic_build"]
    )
    trainer.reduce_per_replica = _patched_reduce_per_replica(
        trainer.reduce_per_replica
    )
    _log.info("Applied Keras %s multi-worker workarounds.", keras.version())
    return sorted(_originals)


def remove_keras_workarounds() -> None:
    """Undo `apply_keras_workarounds()` (restores Keras' own functions)."""
    for owner, name, original in _originals.values():
        setattr(owner, name, original)
    _originals.clear()
