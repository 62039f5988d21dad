"""Export step of distillation: a Distiller exports its student.

Registered into `tfaccel.export.prepare`'s chain (order 0, before pruning is
stripped: the student may be pruned). Any model with a `teacher` and a
`keras.Model` `student` qualifies: `keras.distillation.Distiller` and
`tfaccel.distillation.Distiller` alike.
"""

from __future__ import annotations

import keras

from tfaccel.export.prepare import register_export_step


def _is_distiller(model) -> bool:
    student = getattr(model, "student", None)
    return isinstance(student, keras.Model) and hasattr(model, "teacher")


def _student(model, notes: list[str]):
    student = model.student
    notes.append(
        f"{type(model).__name__}: exported its student "
        f"'{student.name}' (the teacher is not exported)."
    )
    return student


register_export_step("distiller", _is_distiller, _student, order=0)
