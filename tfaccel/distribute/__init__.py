"""Distribution helpers: strategy selection and multi-worker support.

`auto_strategy()` picks TPU, multi-worker, multi-GPU, one GPU or CPU.
`apply_keras_workarounds()` patches the two Keras 3 spots that break
`fit` under `MultiWorkerMirroredStrategy` (applied explicitly, never at
import; `auto_strategy()` applies it when it builds a multi-worker strategy).
"""

from tfaccel.distribute.multi_worker import (
    apply_keras_workarounds,
    keras_workarounds_applied,
    remove_keras_workarounds,
)
from tfaccel.distribute.strategy import auto_strategy

__all__ = [
    "apply_keras_workarounds",
    "auto_strategy",
    "keras_workarounds_applied",
    "remove_keras_workarounds",
]
