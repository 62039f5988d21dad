"""One way to say "which layers": names, layers, classes or predicates.

`prune(layers=...)`, `prune(structure="channels", layers=...)` and
`quantize(skip=...)` all take the same forms and give the same errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras

__all__ = ["LayerSelector", "SelectionError", "Selector", "selector"]

LayerSelector = (
    str | type | keras.layers.Layer | Callable[[Any], bool] | Iterable[Any] | None
)


class SelectionError(TypeError, ValueError):
    """A layer selection of the wrong form (both a TypeError and a ValueError)."""


class Selector:
    """A predicate over layers built from names, layers, classes and predicates.

    Attributes:
        names: layer names asked for by name (or by layer object).
        empty: True when nothing was asked for (`None`).
    """

    def __init__(self, spec: LayerSelector, argname: str):
        self.spec = spec
        self.argname = argname
        self.empty = spec is None
        self.names: set[str] = set()
        self.classes: tuple[type, ...] = ()
        self.predicates: list[Callable[[Any], bool]] = []
        if spec is None:
            return
        if isinstance(spec, (str, type, keras.layers.Layer)) or callable(spec):
            items = [spec]
        elif isinstance(spec, Iterable):
            items = list(spec)
        else:
            raise SelectionError(
                f"`{argname}` must be None, a list of layer names, layers and/or "
                "layer classes, or a predicate `fn(layer) -> bool`. Received: "
                f"{argname}={spec!r}"
            )
        classes = []
        for item in items:
            if isinstance(item, keras.layers.Layer):
                # A layer is callable too: match it by name, not as a
                # predicate (the model may be copied before selection).
                self.names.add(item.name)
            elif isinstance(item, str):
                self.names.add(item)
            elif isinstance(item, type) and issubclass(item, keras.layers.Layer):
                classes.append(item)
            elif callable(item) and not isinstance(item, type):
                self.predicates.append(item)
            else:
                raise SelectionError(
                    f"`{argname}` entries must be layer names (str), layers, "
                    "keras.layers.Layer subclasses or predicates "
                    f"`fn(layer) -> bool`. Received entry: {item!r}"
                )
        self.classes = tuple(classes)

    def __call__(self, layer) -> bool:
        if self.empty:
            return False
        return (
            getattr(layer, "name", None) in self.names
            or (bool(self.classes) and isinstance(layer, self.classes))
            or any(bool(predicate(layer)) for predicate in self.predicates)
        )

    def check_names(self, layers: Iterable[Any], model_name: str) -> None:
        """Raise if a name asked for matches none of `layers`."""
        known = [getattr(layer, "name", None) for layer in layers]
        missing = sorted(self.names - set(known))
        if missing:
            raise ValueError(
                f"`{self.argname}` matched no layer of model '{model_name}' for "
                f"the names {missing}. Received: {self.argname}={self.spec!r}; "
                f"layer names: {known}"
            )


def selector(spec: LayerSelector, argname: str = "layers") -> Selector:
    """Parse a layer selection; `selector(None)` selects nothing.

    Example:

    >>> pick = selector(["dense", keras.layers.Conv2D])
    >>> pick(keras.layers.Dense(2, name="dense")), pick(keras.layers.Conv2D(2, 3))
    (True, True)
    >>> pick(keras.layers.Dense(2, name="other"))
    False

    Args:
        spec: None, a layer name, a layer, a `keras.layers.Layer` subclass,
            a predicate `fn(layer) -> bool`, or a list of these.
        argname: the user's argument name, for error messages.

    Raises:
        SelectionError: `spec` or one of its entries has the wrong form.
    """
    return Selector(spec, argname)
