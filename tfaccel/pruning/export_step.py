"""Export step of pruning: strip the pruning wrappers before conversion.

Registered into `tfaccel.export.prepare`'s chain (order 10, after a
Distiller's student is taken and before the float32 twin is built).
"""

from __future__ import annotations

import keras

from tfaccel import _graph
from tfaccel.export.prepare import register_export_step
from tfaccel.pruning.channels import PruneChannels
from tfaccel.pruning.prune import strip_pruning
from tfaccel.pruning.wrapper import PruneLowMagnitude


def _wrappers(model) -> tuple[list, list]:
    layers = _graph.all_layers(model)
    wrapped = [layer for layer in layers if isinstance(layer, PruneLowMagnitude)]
    channels = [layer for layer in layers if isinstance(layer, PruneChannels)]
    return wrapped, channels


def _is_pruned(model) -> bool:
    return isinstance(model, keras.Model) and any(_wrappers(model))


def _strip(model, notes: list[str]):
    wrapped, channels = _wrappers(model)
    if channels:
        # strip_pruning rebuilds a channel-pruned model smaller (`shrink`).
        notes.append(
            f"Stripped {len(channels)} PruneChannels wrapper(s) before "
            "conversion; masked channels are removed (a smaller model)."
        )
    if wrapped:
        notes.append(
            f"Stripped {len(wrapped)} PruneLowMagnitude wrapper(s) before "
            "conversion; pruned weights are stored dense (zeros compress: see "
            "gzip_bytes)."
        )
    return strip_pruning(model)


register_export_step("strip_pruning", _is_pruned, _strip, order=10)
