"""Pick the best `tf.distribute.Strategy` for the machine the code runs on."""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from tfaccel.distribute.multi_worker import apply_keras_workarounds

__all__ = ["auto_strategy"]

_log = logging.getLogger("tfaccel.distribute")


def _multi_worker_cluster() -> bool:
    """True when `TF_CONFIG` describes a cluster with more than one task."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return False
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError):
        return False
    tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    return tasks > 1


def _connect_tpu(tpu: str | None, try_local: bool) -> tf.distribute.Strategy | None:
    # `tpu=None` resolves a TPU named in the environment (`TPU_NAME`, a TPU
    # node); a TPU VM (Colab's current TPU runtime, Cloud TPU VMs) names none
    # and needs `tpu="local"`. Off-TPU the "local" attempt fails fast (no
    # kernel to configure a TPU) but initializes the eager context, after
    # which a `MultiWorkerMirroredStrategy` can no longer be created: hence
    # `try_local=False` when `TF_CONFIG` describes a cluster.
    if tpu is not None:
        candidates = [tpu]
    else:
        candidates = [None, "local"] if try_local else [None]
    for candidate in candidates:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu=candidate
            )
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            # No TPU found (the resolver raises ValueError) or it is unreachable.
            if tpu is not None:
                raise
            _log.debug("No TPU (tpu=%r): %s", candidate, error)
            continue
        return tf.distribute.TPUStrategy(resolver)
    return None


def auto_strategy(tpu: str | None = None) -> tf.distribute.Strategy:
    """Return the widest strategy the current machine supports.

    Tried in order, the first that applies wins, and the choice is logged on
    the `tfaccel.distribute` logger:

    1. a TPU (`TPUClusterResolver`, connect, initialize): `TPUStrategy`
       (a TPU named in the environment, else a TPU VM's own, `tpu="local"`);
    2. a multi-worker cluster in `TF_CONFIG` (more than one chief/worker):
       `MultiWorkerMirroredStrategy`, after
       `tfaccel.distribute.apply_keras_workarounds()` (Keras 3 cannot run
       multi-worker `fit` without them, see that function);
    3. more than one GPU: `MirroredStrategy` over all of them;
    4. one GPU: `OneDeviceStrategy("/gpu:0")`;
    5. otherwise the default strategy (CPU).

    Build the model, `prune`/`quantize` it and `compile` it inside
    `strategy.scope()`.

    Example:

    >>> import tfaccel.distribute
    >>> strategy = tfaccel.distribute.auto_strategy()
    >>> strategy.num_replicas_in_sync >= 1
    True

    Args:
        tpu: TPU name or address for `TPUClusterResolver`, or `"local"` for
            a TPU VM. `None` detects a TPU named in the environment, then
            (unless `TF_CONFIG` describes a multi-worker cluster) the TPU of
            this VM (Colab, Cloud TPU VM). When given, failing to reach it
            raises instead of falling back.

    Returns:
        A `tf.distribute.Strategy`.
    """
    multi_worker = _multi_worker_cluster()
    strategy = _connect_tpu(tpu, try_local=not multi_worker)
    if strategy is not None:
        _log.info(
            "auto_strategy: TPUStrategy with %d cores.",
            strategy.num_replicas_in_sync,
        )
        return strategy
    if multi_worker:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        applied = apply_keras_workarounds()
        _log.info(
            "auto_strategy: MultiWorkerMirroredStrategy with %d replicas "
            "(Keras workarounds applied: %s).",
            strategy.num_replicas_in_sync,
            ", ".join(applied) or "none",
        )
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy([g.name for g in gpus])
        _log.info("auto_strategy: MirroredStrategy over %d GPUs.", len(gpus))
        return strategy
    if len(gpus) == 1:
        _log.info("auto_strategy: OneDeviceStrategy on %s.", gpus[0].name)
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    _log.info("auto_strategy: default strategy (CPU).")
    return tf.distribute.get_strategy()
