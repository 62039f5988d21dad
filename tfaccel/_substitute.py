"""Run a layer with some of its variables replaced by computed tensors.

Pruning and quantization-aware training both need a layer to compute with a
*transformed* weight (``kernel * mask``, ``fake_quant(fold(kernel))``) while
the variable itself stays untouched, so that gradients reach the variable
through the transformation and no replica ever writes to a mirrored weight
in the forward pass (which would cost a cross-replica merge per step).

Keras 3 ships the mechanism: inside a `keras.StatelessScope`, reading a
variable returns the value mapped to it. Keras scopes do not nest (entering
one hides the outer one), so this helper chains an outer scope's mapping and
forwards to it the updates the wrapped layer makes (for example a dropout
seed advancing), which a bare scope would silently drop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import keras
from keras.src.backend.common import global_state


def _current_scope() -> keras.StatelessScope | None:
    # `keras.src.backend.get_stateless_scope` is not exported; the scope is a
    # plain global attribute, read the same way Keras reads it.
    return global_state.get_global_attribute("stateless_scope")


@contextlib.contextmanager
def substitute(
    mapping: Iterable[tuple[keras.Variable, object]],
    tracked: Iterable[keras.Variable] = (),
    owner: keras.layers.Layer | None = None,
) -> Iterator[None]:
    """Read `mapping`'s values in place of its variables inside the block.

    Args:
        mapping: pairs `(variable, tensor)`; inside the block reading
            `variable` yields `tensor` (gradients flow into `tensor`).
        tracked: other variables the block may assign to (the wrapped layer's
            own state). Their updates are applied when the block exits.
        owner: the layer that keeps the losses added inside the block (an
            activity regularizer's) when there is no outer scope; without
            one they are dropped, since a bare scope does not keep them.
    """
    mapping = list(mapping)
    substituted = {id(v) for v, _ in mapping}
    outer = _current_scope()
    scope = keras.StatelessScope(
        state_mapping=mapping, collect_losses=owner is not None
    )
    if outer is not None:
        # See the outer scope's values too; ours take precedence.
        scope.state_mapping = {**outer.state_mapping, **scope.state_mapping}
        scope.collect_losses = outer.collect_losses
    with scope:
        yield
    if outer is not None:
        for key, value in scope.state_mapping.items():
            if key not in substituted and outer.state_mapping.get(key) is not value:
                outer.state_mapping[key] = value
        for loss in scope.losses:
            outer.add_loss(loss)
        return
    for loss in scope.losses:
        owner.add_loss(loss)
    for variable in tracked:
        if id(variable) in substituted:
            continue
        value = scope.get_current_value(variable)
        if value is not None:
            variable.assign(value)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Read variables in their own dtype inside the block.

    Under a mixed-precision policy Keras casts float variables read inside a
    layer's `call` to the compute dtype (bfloat16/float16). Weight transforms
    (BatchNorm folding, fake-quantization: TF's FakeQuant ops take float32
    only) must see the float32 values the exported model will hold.
    """
    # Keras' own mechanism; not exported under `keras.*`. A scope whose dtype
    # is None casts nothing.
    from keras.src.backend.common.variables import AutocastScope

    with AutocastScope(None):
        yield
