"""Writes docs/api.md from the docstrings of tfaccel's public names.

Run: `.venv/bin/python docs/gen_api.py` (or `make docs`). The examples in the
docstrings are the ones `make test` runs as doctests.
"""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


MODULES = [
    "tfaccel",
    "tfaccel.schedules",
    "tfaccel.pruning",
    "tfaccel.quantization",
    "tfaccel.clustering",
    "tfaccel.export",
    "tfaccel.distillation",
    "tfaccel.distribute",
    "tfaccel.callbacks",
    "tfaccel.graph",
]


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def render() -> str:
    import importlib

    lines = [
        "# tfaccel API reference",
        "",
        "Generated from the docstrings by `docs/gen_api.py`; do not edit by hand.",
        "",
    ]
    seen = set()
    for name in MODULES:
        module = importlib.import_module(name)
        lines += [f"## `{name}`", "", inspect.getdoc(module) or "", ""]
        for public in sorted(getattr(module, "__all__", [])):
            obj = getattr(module, public)
            if inspect.ismodule(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            kind = "class" if inspect.isclass(obj) else "function"
            lines += [
                f"### `{name}.{public}{_signature(obj)}` ({kind})",
                "",
                inspect.getdoc(obj) or "(no docstring)",
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.md")
    with open(path, "w") as f:
        f.write(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
