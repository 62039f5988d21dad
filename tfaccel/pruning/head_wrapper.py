"""Attention-head pruning inside `fit`: `PruneHeads` masks whole heads.

`tfaccel.prune(model, schedule, structure="heads")` wraps every selected
`MultiHeadAttention` in a `PruneHeads` holding one mask entry per head. The
schedule's sparsity is the fraction of heads masked (`round(fraction *
heads)`, at least one head kept), ranked by `head_importance` of the masked
weights, recomputed inside `call` at the schedule's steps: the k-th training
call sees step k, as with `PruneLowMagnitude` and `PruneChannels`.
`strip_pruning` then slices the kept heads out (`heads.sliced_attention`):
a smaller `MultiHeadAttention` computing the same outputs.

Exactness contract: a masked head's query, key, value and output
projections (kernels and biases; the output bias is shared, not masked)
are read as zeros, so its value is zero and it adds exactly nothing to the
output projection, the same function as the sliced layer.

State: `head_mask` (float32, `aggregation="none"`: each replica recomputes
the same mask from the already synchronized weights) and `step` (int64,
`"only_first_replica"`), created in that order in `build`. Masks are
updated with `where(should_prune, new, old)` (no `tf.cond`) and an
argsort-based rank, as in `PruneChannels`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfaccel import graph
from tfaccel._substitute import full_precision, substitute
from tfaccel.graph import LayerSelector, Replacement, copy_layer
from tfaccel.pruning.base import PruningWrapper, pruning_wrappers
from tfaccel.pruning.channel_budget import channel_schedule
from tfaccel.pruning.heads import check_attention, head_scores, sliced_attention
from tfaccel.pruning.registry import weight_key
from tfaccel.schedules import PruningSchedule

__all__ = ["PruneHeads", "wrap_heads"]

_QKV = ("_query_dense", "_key_dense", "_value_dense")


@keras.saving.register_keras_serializable(package="tfaccel")
class PruneHeads(PruningWrapper):
    """Masks whole attention heads of a `MultiHeadAttention` during training.

    Each training call evaluates `schedule(step)` for `(should_prune,
    fraction)`, increments `step` and, when due, masks the `round(fraction *
    num_heads)` heads with the lowest `head_importance` (heads masked before
    score zero and stay masked). A masked head adds exactly nothing to the
    output, so `strip()` can slice it away without changing outputs.

    Example:

    >>> mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=2)
    >>> x = np.ones((1, 3, 8), "float32")
    >>> _ = mha(x, x)
    >>> wrapper = PruneHeads(mha, schedule=0.5)
    >>> _ = wrapper(x, x, training=True)
    >>> int(ops.sum(wrapper.head_mask)), wrapper.strip()[0].num_heads
    (2, 2)

    Args:
        layer: a built `MultiHeadAttention` (one attention axis, no gate).
        schedule: a `tfaccel.schedules.PruningSchedule` whose sparsity is
            the fraction of heads to mask, or a float fraction
            (`ConstantSparsity(fraction, begin_step=0, frequency=1)`).
        **kwargs: base layer arguments.

    Call arguments:
        query, value, key, **kwargs: forwarded to the wrapped layer.
        training: masks are updated and the step advances only when true.

    Raises:
        ValueError: `layer` is not a built, ungated MultiHeadAttention over
            one sequence axis, or a fraction outside [0, 1).
        TypeError: `schedule` is neither a float nor a `PruningSchedule`.
    """

    structure = "heads"

    def __init__(
        self,
        layer: keras.layers.MultiHeadAttention,
        schedule: PruningSchedule | float = 0.5,
        **kwargs,
    ):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, keras.layers.MultiHeadAttention) or getattr(
            layer, "_use_gate", False
        ):
            check_attention(layer, "PruneHeads")  # raises, naming the layer
        self.schedule = channel_schedule(schedule)

    # -- building -------------------------------------------------------
    def build(self, query_shape=None, value_shape=None, key_shape=None):
        if not self.layer.built:
            self.layer.build(query_shape, value_shape, key_shape)
        check_attention(self.layer, "PruneHeads")
        # Creation order (mask, then step) is the checkpoint layout.
        self.head_mask = self.add_weight(
            name="head_mask",
            shape=(self.layer.num_heads,),
            initializer="ones",
            trainable=False,
            dtype="float32",
            aggregation="none",
        )
        self._step = self.add_weight(
            name="step",
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="int64",
            aggregation="only_first_replica",
        )
        self.built = True

    def get_build_config(self):
        # The inner layer's own: MultiHeadAttention has several input shapes.
        return {"layer": self.layer.get_build_config()} if self.built else None

    def build_from_config(self, config):
        inner = (config or {}).get("layer")
        if inner and not self.layer.built:
            self.layer.build_from_config(inner)
        if self.layer.built and not self.built:
            self.build()

    @property
    def step(self) -> keras.Variable:
        """The int64 count of training calls so far (variable `step`)."""
        return self._step

    # -- masks ------------------------------------------------------------
    def compute_mask_from(self, fraction):
        """Mask holding zeros for the `round(fraction * heads)` lowest scores."""
        heads = self.layer.num_heads
        count = ops.round(ops.cast(fraction, "float32") * heads)
        count = ops.clip(count, 0.0, float(heads - 1))
        scores = head_scores(self.layer, self.head_mask)
        # The argsort of a permutation is its inverse: the rank of each score.
        ranks = ops.argsort(ops.argsort(scores))
        return ops.cast(ops.cast(ranks, "float32") >= count, "float32")

    def _masked(self, mask):
        """(variable, mask broadcast to it) for every weight a head owns."""
        pairs = []
        for attr in _QKV:
            dense = getattr(self.layer, attr)
            pairs.append((dense.kernel, ops.reshape(mask, (1, -1, 1))))
            if dense.bias is not None:
                pairs.append((dense.bias, ops.reshape(mask, (-1, 1))))
        pairs.append((self.layer._output_dense.kernel, ops.reshape(mask, (-1, 1, 1))))
        return pairs

    def call(self, query, value, key=None, training=None, **kwargs):
        if training:
            step = ops.convert_to_tensor(self._step) + 1
            should_prune, fraction = self.schedule(step)
            with full_precision():  # rank float32 weights, not their autocast
                new_mask = self.compute_mask_from(fraction)
            mask = ops.where(should_prune, new_mask, self.head_mask)
            self.head_mask.assign(mask)
            self._step.assign(step)
        else:
            mask = ops.convert_to_tensor(self.head_mask)
        mapping = [
            (v, v * ops.cast(m, v.dtype)) for v, m in self._masked(mask)
        ]
        with substitute(mapping, tracked=self.layer.variables, owner=self.layer):
            return self.layer(query, value, key=key, training=training, **kwargs)

    # -- the PruningWrapper interface --------------------------------------
    def kept_heads(self) -> np.ndarray:
        """Indices of the heads the mask keeps, in order."""
        return np.flatnonzero(ops.convert_to_numpy(self.head_mask) != 0)

    def sparsity(self) -> dict[str, float]:
        """Zero fraction of each projection kernel the layer computes with."""
        mask = ops.convert_to_numpy(self.head_mask)
        result = {}
        for variable, shaped in self._masked(mask):
            if len(variable.shape) == 3:
                value = ops.convert_to_numpy(variable) * ops.convert_to_numpy(shaped)
                result[weight_key(self.layer, variable)] = float(np.mean(value == 0))
        return result

    def strip(self) -> list[keras.layers.Layer]:
        """A smaller `MultiHeadAttention` holding only the kept heads.

        Its output has the same shape and values at inference (attention
        scores, when returned, have one row per kept head).
        """
        return [sliced_attention(self.layer, self.kept_heads())]

    # -- serialization ---------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config["schedule"] = keras.saving.serialize_keras_object(self.schedule)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def wrap_heads(
    model: keras.Model,
    schedule: PruningSchedule | float,
    layers: LayerSelector = None,
) -> keras.Model:
    """A copy of `model` with each selected `MultiHeadAttention` in `PruneHeads`.

    `tfaccel.prune(model, schedule, structure="heads")` calls it.

    Example:

    >>> inputs = keras.Input((6, 8))
    >>> outputs = keras.layers.MultiHeadAttention(4, 2, name="mha")(inputs, inputs)
    >>> pruned = wrap_heads(keras.Model(inputs, outputs), 0.5)
    >>> type(pruned.get_layer("mha")).__name__
    'PruneHeads'

    Raises:
        ValueError: the model is already pruned, has no selected
            `MultiHeadAttention`, or one that cannot lose heads (unbuilt,
            gated, several attention axes, or called more than once).
    """
    already = [w.name for w in pruning_wrappers(model)]
    if already:
        raise ValueError(
            f"Layers {already} are already pruned. Call `strip_pruning(model)` "
            "first to prune them again."
        )
    schedule = channel_schedule(schedule)
    selected = graph.selector(layers, "layers")
    source = graph.read(model)
    candidates = [
        node.operation for _, node in source.walk()
        if node.is_layer and not node.is_model
    ]
    selected.check_names(candidates, model.name)
    found = {
        id(layer): layer
        for layer in candidates
        if isinstance(layer, keras.layers.MultiHeadAttention)
        and (selected.empty or selected(layer))
    }
    if not found:
        raise ValueError(
            f"structure='heads' prunes MultiHeadAttention layers; model "
            f"{model.name!r} has none selected. Received: layers={layers!r}"
        )
    for layer in found.values():
        check_attention(layer, "prune(structure='heads')")

    def plan(node, graph_):
        layer = node.operation
        if id(layer) not in found:
            return None
        if len(graph_.calls(layer)) > 1:
            raise ValueError(
                "structure='heads' needs each MultiHeadAttention called once "
                f"(a shared layer would advance its schedule once per call). "
                f"Received: layer={layer.name!r}, called "
                f"{len(graph_.calls(layer))} times"
            )
        inner = copy_layer(layer)
        wrapper = PruneHeads(inner, schedule=schedule, name=layer.name)
        return Replacement(wrapper, weights=[(layer, inner)])

    return graph.rebuild(model, plan)
