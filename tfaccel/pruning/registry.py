"""Which weights of a layer are prunable, and along which axis N:M groups run.

A small registry maps layer classes to a function `layer -> list of
(variable, nm_axis)`. Custom layers opt in either with
`register_prunable(MyLayer, fn)` or by defining a method
`get_prunable_weights()` returning their prunable variables (or
`(variable, nm_axis)` pairs). Biases and normalization weights are never
prunable.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

__all__ = [
    "register_prunable",
    "prunable_weights",
    "is_prunable",
    "unregistered_weights",
    "weight_key",
]

PrunableFn = Callable[[keras.layers.Layer], list]

_REGISTRY: dict[type, PrunableFn] = {}


def register_prunable(layer_cls: type, fn: PrunableFn) -> None:
    """Declare the prunable weights of a layer class.

    Example:

    >>> class Scale(keras.layers.Layer):
    ...     def build(self, input_shape):
    ...         self.w = self.add_weight(shape=(input_shape[-1], 4))
    ...     def call(self, x):
    ...         return x @ self.w
    >>> register_prunable(Scale, lambda layer: [(layer.w, 0)])

    Args:
        layer_cls: a `keras.layers.Layer` subclass. Subclasses of it are
            covered too unless they are registered themselves.
        fn: `layer -> list` of variables or `(variable, nm_axis)` pairs;
            `nm_axis` is the input-channel axis along which N:M groups run.
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, keras.layers.Layer)):
        raise TypeError(
            "`layer_cls` must be a keras.layers.Layer subclass. "
            f"Received: layer_cls={layer_cls!r}"
        )
    if not callable(fn):
        raise TypeError(f"`fn` must be callable. Received: fn={fn!r}")
    _REGISTRY[layer_cls] = fn


def _var(layer, *names):
    # Keras 3 keeps the variable under a private name and exposes a property
    # that may add a LoRA delta; pruning needs the variable itself.
    for name in names:
        value = getattr(layer, name, None)
        if isinstance(value, keras.Variable):
            return value
    raise AttributeError(f"{layer.__class__.__name__} has none of {names}")


def _normalize(layer, entries) -> list[tuple[keras.Variable, int]]:
    result = []
    for entry in entries:
        if isinstance(entry, (tuple, list)):
            variable, axis = entry
        else:
            variable = entry
            axis = -2 if len(variable.shape) >= 2 else 0
        if not isinstance(variable, keras.Variable):
            raise TypeError(
                f"Prunable weights of layer '{layer.name}' must be "
                f"keras.Variable objects. Received: {variable!r}"
            )
        result.append((variable, int(axis)))
    return result


def einsum_nm_axis(equation: str) -> int:
    """First kernel axis whose letter an EinsumDense equation contracts."""
    inputs, output = equation.replace(" ", "").split("->")
    lhs, kernel = inputs.split(",")
    for i, letter in enumerate(kernel):
        if letter in lhs and letter not in output:
            return i
    return 0


def _kernel_fn(axis):
    return lambda layer: [(_var(layer, "_kernel", "kernel"), axis)]


def _einsum(layer):
    return [(_var(layer, "_kernel", "kernel"), einsum_nm_axis(layer.equation))]


def _separable(layer):
    return [
        (_var(layer, "depthwise_kernel"), -2),
        (_var(layer, "pointwise_kernel"), -2),
    ]


def _attention(layer):
    result = []
    for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
        result += _einsum(getattr(layer, name))
    return result


def _cell(cell):
    # LSTMCell, GRUCell, SimpleRNNCell: (input, gates * units) and
    # (units, gates * units); N:M groups run along the input axis of each.
    return [(_var(cell, "kernel"), -2), (_var(cell, "recurrent_kernel"), -2)]


def _inner(*names):
    """The prunable weights of sub-layers: an RNN's cell, both directions."""

    def fn(layer):
        result = []
        for name in names:
            for inner in _as_list(getattr(layer, name, None)):
                result += prunable_weights(inner)
        return result

    return fn


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


L = keras.layers
for _cls in (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D):
    # Dense kernel (in, out): inputs on axis 0 == -2. Conv kernel
    # (..., in, out): -2. Depthwise kernel (..., in, multiplier): -2.
    register_prunable(_cls, _kernel_fn(-2))
for _cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
    # Transposed conv kernels are (..., out, in): inputs on the last axis.
    register_prunable(_cls, _kernel_fn(-1))
register_prunable(L.SeparableConv1D, _separable)
register_prunable(L.SeparableConv2D, _separable)
register_prunable(L.EinsumDense, _einsum)
register_prunable(L.Embedding, lambda layer: [(_var(layer, "_embeddings", "embeddings"), -1)])
register_prunable(L.MultiHeadAttention, _attention)
for _cls in (L.LSTMCell, L.GRUCell, L.SimpleRNNCell):
    register_prunable(_cls, _cell)
# LSTM, GRU, SimpleRNN and any `keras.layers.RNN` whose cell (or stacked
# cells) are prunable; `Bidirectional` through both directions.
register_prunable(L.RNN, _inner("cell"))
register_prunable(L.StackedRNNCells, _inner("cells"))
register_prunable(L.Bidirectional, _inner("forward_layer", "backward_layer"))
register_prunable(L.TimeDistributed, _inner("layer"))
del L, _cls


def weight_key(layer, variable) -> str:
    """`variable`'s path from `layer`'s name on, e.g. `"dense/kernel"`.

    Variable paths depend on where a layer was built (inside a wrapper, a
    nested model, or after loading); this key does not, so a wrapped and a
    stripped model report the same keys.
    """
    path = "/" + variable.path
    marker = f"/{layer.name}/"
    index = path.rfind(marker)
    if index < 0:
        # Built outside its own name scope (a copied `Bidirectional` builds
        # its directions as `forward_lstm/lstm_cell/kernel`): keep the path,
        # or the two directions' kernels would share one key.
        return f"{layer.name}/{variable.path}"
    return path[index + 1 :]


def _lookup(layer) -> PrunableFn | None:
    if callable(getattr(layer, "get_prunable_weights", None)):
        return lambda lyr: lyr.get_prunable_weights()
    for cls in type(layer).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def is_prunable(layer) -> bool:
    """Whether `layer` has a registered or declared set of prunable weights.

    A container layer (an RNN, `Bidirectional`, `TimeDistributed`) is
    prunable when what it holds is.
    """
    fn = _lookup(layer)
    if fn is None:
        return False
    if any(fn is _REGISTRY.get(cls) for cls in _CONTAINERS):
        return all(is_prunable(inner) for inner in _contained(layer))
    return True


def _contained(layer) -> list:
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    if isinstance(layer, keras.layers.StackedRNNCells):
        return list(layer.cells)
    if isinstance(layer, keras.layers.RNN):
        return [layer.cell]
    return [layer.layer]


_CONTAINERS = (
    keras.layers.RNN,
    keras.layers.StackedRNNCells,
    keras.layers.Bidirectional,
    keras.layers.TimeDistributed,
)


def unregistered_weights(layer) -> list[str]:
    """Paths of `layer`'s matrix-like trainable weights no rule covers.

    A built layer with a trainable weight of rank 2 or more (a kernel) and
    no prunable-weights rule would silently stay dense under `prune`; its
    weights are listed here so that `prune` can say so.
    """
    if not layer.built or is_prunable(layer) or isinstance(layer, _NOT_KERNELS):
        return []
    return [v.path for v in layer.trainable_weights if len(v.shape) >= 2]


# Layers whose matrix-shaped weights are not kernels (PReLU's slopes).
_NOT_KERNELS = (keras.layers.PReLU,)


def prunable_weights(layer) -> list[tuple[keras.Variable, int]]:
    """The `(variable, nm_axis)` pairs of a built layer (empty if none)."""
    fn = _lookup(layer)
    if fn is None:
        return []
    return _normalize(layer, fn(layer))
