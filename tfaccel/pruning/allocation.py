"""Sparsity allocation: how a model-wide target is shared among layers.

`prune(model, schedule, allocation=...)` reads the schedule's sparsity as a
target for all pruned weights together and gives each layer its share:

- `"uniform"`: every layer gets the target (tfmot's behaviour).
- `"erk"`: Erdős–Rényi-Kernel (Evci et al., "Rigging the Lottery", 2020).
  A layer keeps a fraction of its weights proportional to
  `sum(shape) / prod(shape)` of its prunable weights, so large layers are
  pruned harder than small ones. Layers that this would make denser than
  dense are left dense and the rest share the remainder. The allocation
  depends on shapes only, not on the values of the weights.

The shares always add up to the target: `sum(n_l * s_l) == s * sum(n_l)`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

__all__ = ["ALLOCATIONS", "allocate"]

ALLOCATIONS = ("uniform", "erk")

Shapes = Sequence[Sequence[int]]


def check_allocation(allocation) -> str:
    """`allocation` if it is one of `ALLOCATIONS`, else a ValueError."""
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"`allocation` must be one of {ALLOCATIONS}. Received: "
            f"allocation={allocation!r}"
        )
    return allocation


def allocate(
    shapes: Mapping[Hashable, Shapes], sparsity: float, allocation: str = "erk"
) -> dict[Hashable, float]:
    """Per-layer sparsities whose size-weighted mean is `sparsity`.

    Example:

    >>> shares = allocate({"small": [(3, 3, 3, 8)], "big": [(512, 1000)]}, 0.8)
    >>> {k: round(v, 4) for k, v in shares.items()}
    {'small': 0.0, 'big': 0.8003}

    Args:
        shapes: layer key -> the shapes of that layer's prunable weights.
        sparsity: the target over all of them, in [0, 1).
        allocation: `"uniform"` or `"erk"`.

    Returns:
        layer key -> sparsity in [0, 1); 0.0 for a layer left dense.

    Raises:
        ValueError: for an unknown `allocation`, `sparsity` outside [0, 1)
            or a layer without weights.
    """
    check_allocation(allocation)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1). Received: sparsity={sparsity!r}")
    sizes, raw = {}, {}
    for key, layer_shapes in shapes.items():
        size = sum(math.prod(shape) for shape in layer_shapes)
        if not size:
            raise ValueError(
                f"Layer {key!r} has no prunable weight elements. Received: "
                f"shapes={list(layer_shapes)!r}"
            )
        sizes[key] = size
        # Size-weighted mean of sum(shape)/prod(shape) over the layer's weights.
        raw[key] = sum(sum(shape) for shape in layer_shapes) / size
    if allocation == "uniform" or sparsity == 0.0:
        return {key: float(sparsity) for key in shapes}
    kept = (1.0 - sparsity) * sum(sizes.values())
    dense: set = set()
    while True:
        rest = [key for key in shapes if key not in dense]
        budget = kept - sum(sizes[key] for key in dense)
        scale = budget / sum(raw[key] * sizes[key] for key in rest)
        full = [key for key in rest if scale * raw[key] >= 1.0]
        if not full:
            break
        dense.update(full)
    return {
        key: 0.0 if key in dense else 1.0 - scale * raw[key] for key in shapes
    }
