"""Knowledge distillation inside `model.fit`.

`distill(student, teacher, ...)` returns a `Distiller` (a `keras.Model`
built from `keras.distillation` losses) with the classic soft-target loss,
hint losses through learned projections, `tf.distribute`-correct loss scaling
and opt-in teacher-output caching. `distiller.student` is the trained model.
"""

from tfaccel.distillation import export_step  # noqa: F401  (registers the export step)
from tfaccel.distillation.distill import Distiller, distill
from tfaccel.distillation.losses import SoftTargetDistillation

__all__ = ["Distiller", "SoftTargetDistillation", "distill"]
