"""PNG plots of what optimization bought: accuracy vs size, sparsity per layer.

matplotlib is optional: it is imported only when a plot is drawn, and always
with the non-interactive Agg canvas (no display, no change to pyplot's global
backend), so these functions work on servers and in CI.

Example:

>>> from tfaccel.plots import plot_accuracy_vs_size  # doctest: +SKIP
>>> plot_accuracy_vs_size(
...     [
...         {"name": "float32", "accuracy": 0.975, "bytes": 41_000, "gzip_bytes": 37_000},
...         {"name": "pruned+int8", "accuracy": 0.972, "bytes": 14_000,
...          "gzip_bytes": 6_000},
...     ],
...     "accuracy_vs_size.png",
... )  # doctest: +SKIP
'accuracy_vs_size.png'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_accuracy_vs_size", "plot_sizes", "plot_sparsity_per_layer"]

_DPI = 120


def _matplotlib():
    """Returns (Figure, FigureCanvasAgg), or raises a clear ImportError."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "tfaccel.plots needs matplotlib, which is not installed: "
            "pip install matplotlib (or pip install 'tfaccel[bench]')"
        ) from e
    return Figure, FigureCanvasAgg


def _field(variant: Any, key: str, index: int) -> Any:
    if isinstance(variant, Mapping):
        if key not in variant:
            raise ValueError(
                f"`variants[{index}]` needs a {key!r} entry. "
                f"Received keys: {sorted(variant)}"
            )
        return variant[key]
    if not hasattr(variant, key):
        raise ValueError(
            f"`variants[{index}]` needs a {key!r} attribute. "
            f"Received: {type(variant).__name__}"
        )
    return getattr(variant, key)


def _optional_field(variant: Any, key: str) -> Any:
    if isinstance(variant, Mapping):
        return variant.get(key)
    return getattr(variant, key, None)


def _save(fig, canvas_cls, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"`path`: directory does not exist. Received: {path}")
    canvas_cls(fig)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def plot_accuracy_vs_size(
    variants: Sequence[Any],
    path: str | os.PathLike,
    *,
    title: str = "Accuracy vs model size",
) -> str:
    """Scatter of accuracy against file size, one point per model variant.

    Each variant is drawn at its gzip size (filled marker, what a download
    costs) and, when known, at its raw file size (hollow marker, what the
    app bundle stores), joined by a line: pruning shows as a long line
    (zeros compress), int8 as a shift left.

    Example:

    >>> plot_accuracy_vs_size(
    ...     [{"name": "float32", "accuracy": 0.97, "bytes": 41e3, "gzip_bytes": 37e3},
    ...      {"name": "int8", "accuracy": 0.97, "bytes": 13e3, "gzip_bytes": 9e3}],
    ...     "sizes.png",
    ... )  # doctest: +SKIP
    'sizes.png'

    Args:
        variants: dicts or objects with `name`, `accuracy` (a fraction in
            [0, 1]) and at least one of `bytes` / `gzip_bytes`, e.g. float32,
            pruned, int8, pruned+int8.
        path: the PNG file to write.
        title: the figure title.

    Returns:
        `path` as a string.

    Raises:
        ValueError: when `variants` is empty, an entry lacks a field, or an
            accuracy is outside [0, 1].
        ImportError: when matplotlib is not installed.
    """
    if not variants:
        raise ValueError("`variants` must contain at least one entry. Received: []")
    points = []
    for i, v in enumerate(variants):
        name = str(_field(v, "name", i))
        accuracy = float(_field(v, "accuracy", i))
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(
                f"`variants[{i}]` accuracy must be a fraction in [0, 1]. "
                f"Received: {accuracy}"
            )
        raw = _optional_field(v, "bytes")
        gz = _optional_field(v, "gzip_bytes")
        if raw is None and gz is None:
            raise ValueError(
                f"`variants[{i}]` ({name!r}) needs 'bytes' or 'gzip_bytes'. "
                "Received neither."
            )
        points.append((name, accuracy, raw, gz))

    Figure, Canvas = _matplotlib()
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(points))]
    for (name, acc, raw, gz), color in zip(points, colors):
        y = 100 * acc
        if raw is not None and gz is not None:
            ax.plot([raw / 1024, gz / 1024], [y, y], color=color, lw=1.5, alpha=0.6)
        if raw is not None:
            ax.scatter([raw / 1024], [y], s=60, facecolors="white", edgecolors=color,
                       linewidths=1.8, zorder=3)
        if gz is not None:
            ax.scatter([gz / 1024], [y], s=60, color=color, zorder=3, label=name)
        else:
            ax.scatter([], [], color=color, label=name)
        x = (gz if gz is not None else raw) / 1024
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6),
                    fontsize=9, color=color)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    kb_format = FuncFormatter(lambda x, _: f"{x:,.3g}")
    ax.xaxis.set_major_formatter(kb_format)
    ax.xaxis.set_minor_formatter(kb_format)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("size (KB, log scale) - filled: gzip, hollow: file")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ys = [100 * p[1] for p in points]
    span = max(ys) - min(ys)
    pad = max(0.5, 0.2 * span)
    ax.set_ylim(min(ys) - pad, min(100.0 + pad / 4, max(ys) + pad))
    fig.tight_layout()
    return _save(fig, Canvas, path)


def plot_sparsity_per_layer(
    sparsity_dict: Mapping[str, float],
    path: str | os.PathLike,
    *,
    target: float | None = None,
    title: str = "Sparsity per layer",
) -> str:
    """Horizontal bars of the fraction of zero weights, one per weight.

    Example:

    >>> from tfaccel.pruning import sparsity  # doctest: +SKIP
    >>> plot_sparsity_per_layer(sparsity(model), "sparsity.png", target=0.8)  # doctest: +SKIP
    'sparsity.png'

    Args:
        sparsity_dict: weight path -> fraction of zeros in [0, 1], as
            returned by `tfaccel.pruning.sparsity(model)`.
        path: the PNG file to write.
        target: optional target sparsity, drawn as a dashed line.
        title: the figure title.

    Returns:
        `path` as a string.

    Raises:
        ValueError: when `sparsity_dict` is empty or a value is outside [0, 1].
        ImportError: when matplotlib is not installed.
    """
    if not sparsity_dict:
        raise ValueError("`sparsity_dict` must contain at least one weight. Received: {}")
    names = [str(k) for k in sparsity_dict]
    values = [float(v) for v in sparsity_dict.values()]
    for name, value in zip(names, values):
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"`sparsity_dict[{name!r}]` must be a fraction in [0, 1]. "
                f"Received: {value}"
            )
    if target is not None and not 0.0 <= target <= 1.0:
        raise ValueError(f"`target` must be a fraction in [0, 1]. Received: {target}")

    Figure, Canvas = _matplotlib()
    height = max(2.5, 0.4 * len(names) + 1.4)
    fig = Figure(figsize=(7.0, height))
    ax = fig.add_subplot()
    positions = list(range(len(names)))[::-1]  # first weight on top
    bars = ax.barh(positions, [100 * v for v in values], color="C0", height=0.6)
    for bar, value in zip(bars, values):
        # Inside a long bar (white) or just after a short one: never on the
        # target line, which usually sits at the end of the bars.
        inside = value >= 0.25
        ax.text(bar.get_width() - 1 if inside else bar.get_width() + 1,
                bar.get_y() + bar.get_height() / 2, f"{100 * value:.1f}%",
                va="center", ha="right" if inside else "left", fontsize=8,
                color="white" if inside else "black")
    ax.set_yticks(positions)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("zero weights (%)")
    ax.set_title(title)
    if target is not None:
        ax.axvline(100 * target, color="C3", ls="--", lw=1.2,
                   label=f"target {100 * target:.0f}%")
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8,
                  frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Canvas, path)


def plot_sizes(
    sizes: Mapping[str, float],
    path: str | os.PathLike,
    *,
    title: str = "Model size",
) -> str:
    """Horizontal bars of sizes in KB (e.g. Keras weights, file, gzip).

    Used by `tfaccel export --plot`.

    Example:

    >>> plot_sizes({"TFLite file": 14_000, "TFLite gzip": 6_000}, "s.png")  # doctest: +SKIP
    's.png'

    Args:
        sizes: label -> size in bytes (non-negative).
        path: the PNG file to write.
        title: the figure title.

    Returns:
        `path` as a string.

    Raises:
        ValueError: when `sizes` is empty or a size is negative.
        ImportError: when matplotlib is not installed.
    """
    if not sizes:
        raise ValueError("`sizes` must contain at least one entry. Received: {}")
    labels = [str(k) for k in sizes]
    values = [float(v) for v in sizes.values()]
    for label, value in zip(labels, values):
        if not value >= 0:
            raise ValueError(f"`sizes[{label!r}]` must be >= 0 bytes. Received: {value}")

    Figure, Canvas = _matplotlib()
    fig = Figure(figsize=(7.0, max(2.5, 0.5 * len(labels) + 1.4)))
    ax = fig.add_subplot()
    positions = list(range(len(labels)))[::-1]
    kb = [v / 1024 for v in values]
    bars = ax.barh(positions, kb, color=[f"C{i % 10}" for i in range(len(kb))],
                   height=0.6)
    top = max(kb) if max(kb) > 0 else 1.0
    for bar, value in zip(bars, kb):
        ax.text(bar.get_width() + 0.01 * top, bar.get_y() + bar.get_height() / 2,
                f"{value:,.1f} KB", va="center", fontsize=9)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("KB")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Canvas, path)
