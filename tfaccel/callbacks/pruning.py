"""`Pruning`: magnitude pruning of any model from one `fit` callback."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from tfaccel import graph
from tfaccel._warnings import TfaccelWarning
from tfaccel.graph import LayerSelector
from tfaccel.pruning.base import PruningWrapper
from tfaccel.pruning.masks import nm_mask, parse_structure, unstructured_mask
from tfaccel.pruning.prune import _fit_pattern
from tfaccel.pruning.registry import is_prunable, prunable_weights
from tfaccel.schedules import (
    PruningSchedule,
    check_schedule,
    default_schedule,
)

__all__ = ["Pruning", "last_pruning_step"]


def last_pruning_step(schedule: PruningSchedule, step: int) -> int | None:
    """The last step `<= step` at which `schedule` recomputes masks, or None.

    The rule of `PruningSchedule.should_prune` (`begin_step`, every
    `frequency` steps after it, and `end_step`) run backwards in plain
    Python: the callback pays no TensorFlow op to learn that nothing is due,
    and with `steps_per_execution > 1` it still finds the pruning steps an
    execution skipped over.

    Example:

    >>> from tfaccel.schedules import ConstantSparsity
    >>> schedule = ConstantSparsity(0.8, begin_step=10, end_step=95, frequency=20)
    >>> [last_pruning_step(schedule, s) for s in (5, 10, 49, 50, 94, 200)]
    [None, 10, 30, 50, 90, 95]

    Args:
        schedule: a `tfaccel.schedules.PruningSchedule`.
        step: a training step (python int).

    Returns:
        A python int, or None before `begin_step`.
    """
    begin, end = schedule.begin_step, schedule.end_step
    if step < begin:
        return None
    if 0 <= end <= step:
        return end
    return begin + (step - begin) // schedule.frequency * schedule.frequency


class Pruning(keras.callbacks.Callback):
    """Prune any model in its existing `fit`: one callback, nothing rebuilt.

    Add it to `model.fit(..., callbacks=[...])` of a Sequential, functional
    or subclassed model, compiled as usual. The prunable weights of the
    selected layers (the registry and selector of `tfaccel.prune`) follow
    `schedule`: at each step the schedule prunes, the masks are recomputed
    from the weights' magnitudes (weights pruned before stay pruned) and
    applied; after every optimizer step the pruned weights are set back to
    exactly zero, inside the train step (the mask is installed as the
    variable's `constraint`, which Keras optimizers apply after each update,
    on every replica). The model stays a plain Keras model with zeros in
    place: no `strip_pruning`, and `tfaccel.sparsity(model)` reads the
    result. The constraints are removed when `fit` returns.

    The step is `model.optimizer.iterations`; masks live in the callback and
    are derived again from the zeros of the weights when training starts,
    so a `.keras` file, a second `fit`, or a run resumed by
    `keras.callbacks.BackupAndRestore` continue where training stopped
    with no extra state.

    Compared with `tfaccel.prune` (a graph rewrite that masks inside the
    forward pass): both give the same masks at the same steps and the same
    final sparsity per layer (the same weights, on one device); `prune` is
    needed for QAT on a pruned model during training, channel pruning,
    `allocation="erk"`, and for mask updates inside a multi-step execution.

    With `steps_per_execution=k > 1` Keras calls callbacks once per
    execution: pruned weights still return to zero after every step, but
    masks are recomputed only before an execution (every k steps): a
    pruning step inside an execution takes effect before the next one, at
    the sparsity of the last pruning step reached.

    Each `fit` with this callback traces its train step again (the
    constraints are part of it), and once more after the first step when
    `fit` itself builds the model (a subclassed model not called before
    `fit`, outside a strategy scope): that model gets its first masks after
    its first step, from the weights after that step.

    Under `tf.distribute` strategies (Mirrored, MultiWorkerMirrored) the
    callback runs in cross-replica context: every worker computes the same
    masks from the same synchronized weights, and the assignments write all
    its replicas.

    Example:

    >>> import numpy as np
    >>> from tfaccel.schedules import PolynomialDecay
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a"),
    ...                           keras.layers.Dense(2, name="b")])
    >>> model.compile("adam", "mse")
    >>> pruning = Pruning(PolynomialDecay(0.0, 0.75, 0, 8, frequency=2))
    >>> x, y = np.ones((32, 8), "float32"), np.zeros((32, 2), "float32")
    >>> _ = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[pruning])
    >>> import tfaccel
    >>> tfaccel.sparsity(model)
    {'a/kernel': 0.75, 'b/kernel': 0.75}

    Args:
        schedule: a `tfaccel.schedules.PruningSchedule`; defaults to
            `ConstantSparsity(0.5, begin_step=1)`. The k-th training step
            (counting from 1) sees step k, as in tfmot and `tfaccel.prune`.
        structure: `"unstructured"` or an `"N:M"` string such as `"2:4"`
            (N of every M consecutive input-channel weights are kept; the
            schedule then only says when masks are recomputed).
        layers: which layers to prune, in the forms `tfaccel.prune` takes:
            None (every prunable layer), a layer name, layer or class, a
            predicate `layer -> bool`, or a list of these. A prunable layer
            is pruned as a whole (a `MultiHeadAttention`'s projections with
            it); layers inside an unselected layer are still candidates.
            With N:M, a layer whose input channels M does not divide is left
            dense with a warning unless `layers` selects it.

    Raises:
        TypeError: for a `schedule` or `layers` of the wrong type.
        ValueError: for an unknown `structure`. When training starts: for
            `layers` naming no layer, no prunable layer selected, a layer
            already wrapped by `tfaccel.prune`, N:M that does not divide a
            selected layer, or a selected layer still unbuilt after the
            first training step.
    """

    def __init__(
        self,
        schedule: PruningSchedule | None = None,
        structure: str = "unstructured",
        layers: LayerSelector = None,
    ):
        super().__init__()
        self.schedule = check_schedule(
            default_schedule() if schedule is None else schedule
        )
        self.structure = structure
        self._nm = parse_structure(structure)
        self.layers = layers
        self._selector = graph.selector(layers, "layers")
        self._weights: list[tuple[keras.Variable, int]] = []
        self._masks: list[tf.Variable] = []
        self._ready = False
        self._mask_step: int | None = None
        self._epoch_start: int | None = None

    def get_config(self) -> dict:
        """The arguments, serializable when `layers` is given by name."""
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "structure": self.structure,
            "layers": _layer_names(self.layers),
        }

    @classmethod
    def from_config(cls, config: dict) -> Pruning:
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)

    @property
    def pruned_weights(self) -> list[keras.Variable]:
        """The variables pruned in the current or last `fit`."""
        return [variable for variable, _ in self._weights]

    def on_train_begin(self, logs=None):
        self._release()  # after an interrupted `fit`
        self._weights, self._masks = [], []
        self._mask_step = None
        self._epoch_start = None
        # A model `fit` builds itself (a subclassed model not called yet,
        # outside a strategy scope) is set up after its first step.
        self._setup(after_a_step=False)

    def on_epoch_begin(self, epoch, logs=None):
        # Not at train begin: BackupAndRestore restores the weights and
        # `optimizer.iterations` in its own on_train_begin, which may come
        # after this callback's. Every on_train_begin runs before this.
        self._epoch_start = self._iterations()
        if self._ready and self._mask_step is None:
            self._update(self._epoch_start)

    def on_train_batch_begin(self, batch, logs=None):
        # Before the step, as `prune`'s wrappers do: the k-th step (k = 1,
        # 2, ...; `batch` counts from 0) computes with the masks of step k,
        # as in tfmot. Not at batch end: a batch-end callback makes Keras
        # wait for every step's logs. `batch` is the epoch's index of the
        # step about to run, so the step count needs no read from the
        # device, and a batch without a pruning step runs no TensorFlow op.
        if not self._ready:
            self._setup(after_a_step=batch > 0 or self._epoch_start > 0)
        if self._ready:
            self._update(self._epoch_start + batch + 1)

    def on_train_end(self, logs=None):
        if self._ready:
            # A pruning step at the very last step count (end_step equal
            # to the number of steps trained) still takes effect.
            self._update(self._iterations())
        self._release()

    def _iterations(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _setup(self, after_a_step: bool):
        weights = self._select(self.model, after_a_step)
        if weights is None:
            return
        self._weights = weights
        # Plain variables, outside any strategy: computed identically on
        # every worker from the synchronized weights, never saved.
        self._masks = [
            tf.Variable(tf.ones(v.shape, v.dtype), trainable=False)
            for v, _ in weights
        ]
        for (variable, _), mask in zip(weights, self._masks):
            variable.constraint = _MaskConstraint(mask, variable.constraint)
        # The train step reads constraints when it is traced: trace it again.
        self.model.make_train_function(force=True)
        self._apply = tf.function(self._apply_masks).get_concrete_function()
        self._recompute = tf.function(self._recompute_masks).get_concrete_function(
            tf.TensorSpec([], tf.float32)
        )
        self._ready = True

    def _release(self):
        """Give the variables their own constraints back; retrace next `fit`."""
        for variable, _ in self._weights:
            if isinstance(variable.constraint, _MaskConstraint):
                variable.constraint = variable.constraint.original
        if self._ready and self.model is not None:
            self.model.train_function = None
        self._ready = False

    def _update(self, step: int):
        due = last_pruning_step(self.schedule, step)
        if due is None or (self._mask_step is not None and due <= self._mask_step):
            return  # nothing pruned yet, or the masks are current
        # The first update of a `fit` (masks all ones) derives the masks from
        # the zeros of the weights: a restored, loaded or re-fit model
        # continues its masks.
        self._recompute(tf.cast(self.schedule.sparsity_at(due), tf.float32))
        self._mask_step = due
        self._apply()  # now, not after the next step: its forward pass too

    def _apply_masks(self):
        for (variable, _), mask in zip(self._weights, self._masks):
            variable.assign(tf.convert_to_tensor(variable.value) * mask)

    def _recompute_masks(self, sparsity):
        for (variable, axis), mask in zip(self._weights, self._masks):
            weight = tf.convert_to_tensor(variable.value)
            if self._nm is None:
                # Weights the previous mask zeroed rank below all others:
                # the optimizer moved them off zero, they stay pruned.
                new = unstructured_mask(weight, sparsity, keep=mask)
            else:
                new = nm_mask(weight, *self._nm, axis=axis)
            mask.assign(tf.cast(new, mask.dtype))

    def _select(self, model, after_a_step: bool):
        """The `(variable, nm_axis)` pairs to prune, or None if not built yet."""
        every = graph.all_layers(model)
        self._selector.check_names(every, model.name)
        chosen, inside, matched = [], set(), []
        for layer in every:
            if isinstance(layer, PruningWrapper):
                raise ValueError(
                    f"Layer '{layer.name}' is already pruned by "
                    "`tfaccel.prune`: train it without the `Pruning` callback, "
                    "or `strip_pruning` it first."
                )
            if id(layer) in inside:
                continue
            if self._selector.empty or self._selector(layer):
                matched.append(layer.name)
                if is_prunable(layer):
                    chosen.append(layer)
                    # Its sublayers (MultiHeadAttention's projections) are
                    # pruned as part of it, not a second time.
                    inside.update(id(sub) for sub in graph.all_layers(layer))
        unbuilt = [layer for layer in chosen if not layer.built]
        if unbuilt and not after_a_step:
            return None
        named = [layer.name for layer in unbuilt if self._selector(layer)]
        if named:
            raise ValueError(
                f"The `Pruning` callback selected layers {named} of model "
                f"'{model.name}', which are still not built after a training "
                "step: training does not call them. Build the model before "
                "`fit` (call it on a batch) or leave them out of `layers`."
            )
        if unbuilt:
            warnings.warn(
                "The `Pruning` callback leaves dense the layers that training "
                f"does not call (still unbuilt): {[x.name for x in unbuilt]}",
                TfaccelWarning,
                stacklevel=2,
            )
            chosen = [layer for layer in chosen if layer.built]
        if self._nm is not None:
            chosen = _fit_pattern(chosen, self._nm, self.structure, self._selector)
        weights, seen = [], set()
        for layer in chosen:
            for variable, axis in prunable_weights(layer):
                if id(variable) not in seen:
                    seen.add(id(variable))
                    weights.append((variable, axis))
        if not weights:
            raise ValueError(
                f"No prunable layer selected in model '{model.name}' "
                f"(selected: {matched}). Prunable layers are Dense, Conv*, "
                "EinsumDense, Embedding, MultiHeadAttention, LSTM, GRU, "
                "SimpleRNN, Bidirectional, ... and layers "
                "registered with `register_prunable` or defining "
                f"`get_prunable_weights()`. Received: layers={self.layers!r}"
            )
        return weights


class _MaskConstraint:
    """`original(w) * mask`: what the optimizer assigns after each update."""

    def __init__(self, mask: tf.Variable, original=None):
        if isinstance(original, _MaskConstraint):  # left by an interrupted fit
            original = original.original
        self.mask = mask
        self.original = original

    def __call__(self, weight):
        if self.original is not None:
            weight = self.original(weight)
        return weight * keras.ops.cast(self.mask, weight.dtype)


def _layer_names(layers: LayerSelector):
    """`layers` as JSON-able names; classes and predicates do not serialize."""
    if layers is None:
        return None
    items = [layers] if isinstance(layers, (str, keras.layers.Layer)) else layers
    if callable(items):
        items = [items]
    names = []
    for item in items:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, keras.layers.Layer):
            names.append(item.name)
        else:
            raise ValueError(
                "`Pruning.get_config` can only serialize `layers` given as "
                "layer names or layers, not classes or predicates. Received: "
                f"layers={layers!r}"
            )
    return names
