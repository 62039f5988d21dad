"""Export step of pruning: strip the pruning wrappers before conversion.

Registered into `tfaccel.export.prepare`'s chain (order 10, after a
Distiller's student is taken and before the float32 twin is built). It uses
only the `PruningWrapper` interface: any pruning technique is stripped.
"""

from __future__ import annotations

import collections

import keras

from tfaccel.export.prepare import register_export_step
from tfaccel.pruning.base import pruning_wrappers
from tfaccel.pruning.prune import strip_pruning


def _is_pruned(model) -> bool:
    return isinstance(model, keras.Model) and bool(pruning_wrappers(model))


def _strip(model, notes: list[str]):
    counts = collections.Counter(
        (type(w).__name__, w.structure) for w in pruning_wrappers(model)
    )
    for (name, structure), count in counts.items():
        effect = (
            f"masked {structure} are removed (a smaller model)"
            if structure in ("channels", "heads")
            else "pruned weights are stored as zeros (they compress: see gzip_bytes)"
        )
        notes.append(
            f"Stripped {count} {name} wrapper(s) (structure={structure!r}) before "
            f"conversion; {effect}."
        )
    return strip_pruning(model)


register_export_step("strip_pruning", _is_pruned, _strip, order=10)
