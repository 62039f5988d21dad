"""`quantize`: turn a Keras model into its quantization-aware twin."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfaccel import graph
from tfaccel.graph import IDENTITY, OUTPUT, LayerSelector, Replacement, copy_layer
from tfaccel.quantization.affine import QuantizeAffineWrapper
from tfaccel.quantization.calibration import _check_batch_size, calibrate
from tfaccel.quantization.clusters import kernel_clusters
from tfaccel.quantization.layers import (
    ActivationQuantizer,
    QuantizedActivation,
    QuantizeWrapper,
)
from tfaccel.quantization.lowering import LOWERINGS
from tfaccel.quantization.pooling import AVERAGE_POOLS, SameScaleQuantizer
from tfaccel.quantization.pruned_plans import (
    carry_pruning,
    carry_state,
    quantize_wrapper,
)
from tfaccel.quantization.registry import (
    _activation_name,
    activation_operation,
    fusable_activation,
    qat_layer,
    quantize_kind,
)

__all__ = ["calibrate", "is_quantized", "quantize"]

# Keras layers whose TFLite op takes a fused ReLU/ReLU6 (ADD, SUB, MUL), and
# the same `keras.ops` calls between layers (`x + y`), by class name.
_FUSES_RELU = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply)
_FUSES_RELU_OPS = ("Add", "Subtract", "Multiply")
# `keras.ops.relu` / `relu6` between layers, fused like a ReLU layer.
_RELU_OPS = {"Relu": "relu", "Relu6": "relu6"}


def _fuses_relu(op) -> bool:
    if isinstance(op, keras.layers.Layer):
        return isinstance(op, _FUSES_RELU)
    return type(op).__name__ in _FUSES_RELU_OPS


def _fused_relu(node) -> str | None:
    """`"relu"`/`"relu6"` if `node` (a layer or `keras.ops` call) can be fused."""
    if node.is_layer:
        return fusable_activation(node.operation)
    if node.is_model:
        return None
    return _RELU_OPS.get(type(node.operation).__name__)


_KERNEL_KINDS = ("per_channel", "depthwise", "per_tensor", "transpose", *LOWERINGS)
_QAT_LAYERS = (
    ActivationQuantizer,
    QuantizeAffineWrapper,
    QuantizeWrapper,
    QuantizedActivation,
)


_BN_FOLDINGS = ("auto", "moving", "batch")

#: The share of exact zeros from which `quantize` keeps a kernel's zeros
#: (a pruned model's) with a fixed mask. A float initializer leaves an
#: accidental zero about once in 8M values: ResNet50 had three kernels
#: (2.4M and 1M values) with one, and their masks cost 17 MB and a
#: multiply per step.
PRESERVED_SPARSITY = 0.01


def _untrained(bn) -> bool:
    """Whether `bn` still holds its initial moving statistics (mean 0, var 1)."""
    mean, var = (keras.ops.convert_to_numpy(v) for v in (bn.moving_mean, bn.moving_variance))
    return bool(np.all(mean == 0.0) and np.all(var == 1.0))


def _strip_pruning(model):
    from tfaccel.pruning import strip_pruning
    from tfaccel.pruning.base import pruning_wrappers

    return strip_pruning(model) if pruning_wrappers(model) else model


class _Planner:
    """Decides, per operation of the original graph, what it becomes."""

    def __init__(self, skip: graph.Selector):
        self.skip = skip
        self.fused: set[int] = set()  # BN / activation folded into a kernel
        self.followers: dict[int, tuple] = {}  # kernel op -> (bn, act, own act)
        self.kinds: dict[int, str] = {}
        self.output_relu: dict[int, str] = {}  # ADD/SUB/MUL op -> fused activation
        self.errors: list[str] = []

    def plan(self, source: graph.Graph) -> None:
        for node in source.nodes:
            op = node.operation
            if id(op) in self.fused or id(op) in self.kinds:
                continue  # folded, or a shared layer seen at its first call
            if node.is_model and not self.skip(op):
                self.plan(graph.read(op))
                continue
            if self.skip(op):
                # Quantize a float layer's output only where a quantized op
                # reads it: that is where TFLite puts a QUANTIZE op.
                feeds_int8 = any(
                    user is not OUTPUT
                    and not user.is_model
                    and not self.skip(user.operation)
                    for user in source.consumers(node)
                )
                self.kinds[id(op)] = "skip_to_int8" if feeds_int8 else "skip"
                continue
            if not any("float" in str(t.dtype) for t in node.outputs):
                # Integer index arithmetic (position ids, shapes): TFLite
                # runs it in int32, there is nothing to quantize.
                self.kinds[id(op)] = "passthrough"
                continue
            kind = quantize_kind(op)
            if kind is None:
                what = "layer" if node.is_layer else "operation"
                self.errors.append(f"{what} {op.name!r} of class {type(op).__name__}")
                continue
            self.kinds[id(op)] = kind
            if kind in _KERNEL_KINDS or kind == "affine":
                self._plan_fusion(node, source, absorbs_bn=kind != "affine")
            elif kind == "output" and _fuses_relu(op):
                self._plan_output_relu(node, source)

    def _plan_output_relu(self, node, source) -> None:
        """TFLite's ADD/SUB/MUL run a following ReLU/ReLU6 as their own
        fused activation, with one output range: fold the activation layer
        into the op's quantizer (no second rounding, one op fewer)."""
        act, users = self._relu_followers(node, source, _fused_relu)
        if act is not None:
            self._fuse(user.operation for user in users)
            self.output_relu[id(node.operation)] = act

    def _relu_followers(self, node, source, rule=None):
        """`(activation, nodes)`: the ReLU/ReLU6 layers the converter fuses
        into `node`'s op, or `(None, [])`.

        That is its only consumer if that is one, and also several
        consumers that are all the same ReLU/ReLU6 (NASNet's stem feeds
        five): the converter merges identical ops on one tensor and then
        fuses the one ReLU left, so the op's int8 output is the ReLU's and
        the tensor before it is never rounded.
        """
        rule = rule or (lambda user: user.is_layer and fusable_activation(user.operation))
        users = list({id(user): user for user in source.consumers(node)}.values())
        if not users or len(source.calls(node.operation)) != 1:
            return None, []
        acts = set()
        for user in users:
            if (
                user is OUTPUT
                or user.is_model
                or self.skip(user.operation)
                or len(source.calls(user.operation)) != 1
            ):
                return None, []
            acts.add(rule(user) or None)
        if len(acts) != 1 or None in acts:
            return None, []
        return acts.pop(), users

    def _fuse(self, operations) -> None:
        for op in operations:
            self.fused.add(id(op))
            self.kinds.pop(id(op), None)

    def _follower(self, node, source):
        user = source.only_consumer(node)
        if user is None or user.is_model or self.skip(user.operation):
            return None
        return user

    def _plan_fusion(self, node, source, absorbs_bn: bool = True) -> None:
        layer = node.operation
        bn = act = None
        act_users = []
        own = getattr(layer, "activation", None)
        own = "linear" if own is None else _activation_name(own)
        tail = node
        if own == "linear":
            user = self._follower(node, source)
            if (
                absorbs_bn
                and user is not None
                and isinstance(user.operation, keras.layers.BatchNormalization)
                and quantize_kind(user.operation) == "affine"
                and not getattr(user.operation, "renorm", False)
            ):
                bn, tail = user.operation, user
            act, act_users = self._relu_followers(tail, source)
        elif own in ("relu", "relu6"):
            act = own
        self._fuse([bn] if bn is not None else [])
        self._fuse(user.operation for user in act_users)
        self.followers[id(layer)] = (bn, act or "linear", own)


class _Rewrite:
    """The plan over `tfaccel.graph`: what each node of the model becomes."""

    def __init__(
        self, planner: _Planner, ema_decay: float, pruning=None, folding=("moving", None)
    ):
        self.planner = planner
        self.ema_decay = ema_decay
        self.folding = folding  # (bn_folding, bn_freeze_step)
        self.pruning = pruning or {}  # id(layer) -> its PruneLowMagnitude
        self.wrappers: list[tuple[QuantizeWrapper, Any]] = []  # (new, kernel)

    def quantizer(self, name: str, activation: str | None = None) -> ActivationQuantizer:
        return ActivationQuantizer(
            ema_decay=self.ema_decay, activation=activation, name=f"{name}_quant"
        )

    def __call__(self, node, source):
        op = node.operation
        if id(op) in self.planner.fused:
            return IDENTITY
        kind = self.planner.kinds.get(id(op))
        if kind in _KERNEL_KINDS:
            return self.kernel(op, kind)
        if kind == "layer":
            return qat_layer(op, self.ema_decay)
        if kind == "activation" and fusable_activation(op) is None and (
            type(op) is keras.layers.Activation or isinstance(op, keras.layers.Softmax)
        ):
            name = (
                "softmax"
                if isinstance(op, keras.layers.Softmax)
                else _activation_name(op.activation)
            )
            return QuantizedActivation(name, ema_decay=self.ema_decay, name=f"quant_{op.name}")
        if kind == "affine":
            new = copy_layer(op)
            wrapper = QuantizeAffineWrapper(
                new,
                activation=self.planner.followers[id(op)][1],
                ema_decay=self.ema_decay,
                name=f"quant_{op.name}",
            )
            return Replacement(wrapper, weights=[(op, new)])
        if kind == "passthrough" and isinstance(op, AVERAGE_POOLS):
            # int8 AVERAGE_POOL_2D rounds each mean to its input's grid.
            after = SameScaleQuantizer(name=f"{op.name}_requant")
            return Replacement(copy_layer(op), after=[after])
        if kind == "output" and id(op) not in self.planner.output_relu:
            activation = activation_operation(op)  # `keras.ops.sigmoid(x)`, ...
            if activation is not None:
                return QuantizedActivation(
                    activation, ema_decay=self.ema_decay, name=f"quant_{op.name}")
        if kind not in ("output", "skip_to_int8", "activation"):
            return None  # a copy (passthrough, skipped, nested model)
        if node.is_model:
            new = graph.rebuild(op)  # a skipped nested model, kept float
        elif node.is_layer:
            new = copy_layer(op)
            quantizer = self.quantizer(op.name, self.planner.output_relu.get(id(op)))
            return Replacement(new, after=[quantizer], weights=[(op, new)])
        else:
            new = op  # a `keras.ops` call: stateless
        relu = self.planner.output_relu.get(id(op))
        return Replacement(new, after=[self.quantizer(op.name, relu)])

    def kernel(self, layer, kind) -> Replacement:
        bn, act, own = self.planner.followers[id(layer)]
        norm = None if bn is None else copy_layer(bn)
        folding, freeze = self.folding
        if folding == "auto":
            folding = "batch" if bn is not None and _untrained(bn) else "moving"
        folding = {} if norm is None else {
            "bn_folding": folding, "bn_freeze_step": freeze
        }
        pairs = [] if bn is None else [(bn, norm)]
        # A schedule to keep running (`carry_pruning` carries none for a
        # layer that QAT lowers into several ops: it warns and strips it).
        source = self.pruning.get(id(layer))
        if kind in LOWERINGS:
            lowered = LOWERINGS[kind](layer)
            stages = lowered.kernels
            # Built with their share of the weights; the kernel to keep sparse
            # or clustered is each one's own.
            kernels = [np.asarray(inner.get_weights()[0]) for inner, _ in stages]
        else:
            config = layer.get_config()
            config["activation"] = "linear"
            inner = layer.__class__.from_config(config)
            lowered = None
            stages = [(inner, kind)]
            kernels = [np.asarray(layer.get_weights()[0])]
            pairs.insert(0, (layer, inner))
        chain = [] if lowered is None else list(lowered.before)
        for i, ((inner, mode), kernel) in enumerate(zip(stages, kernels)):
            last = i == len(stages) - 1
            # A clustered kernel keeps its clusters (CQAT), except under a
            # per-tensor scheme with a folded BatchNorm (see QuantizeWrapper)
            # and for a transposed kernel (output channels not last).
            no_clusters = mode == "transpose" or (
                last and mode == "per_tensor" and bn is not None
            )
            wrapper = quantize_wrapper(
                source,
                inner,
                batch_norm=norm if last else None,
                activation=act if last else "linear",
                weight_mode=mode,
                preserve_sparsity=bool(np.mean(kernel == 0) >= PRESERVED_SPARSITY),
                ema_decay=self.ema_decay,
                preserve_clusters=0 if no_clusters else kernel_clusters(kernel),
                name=f"quant_{inner.name}",
                **(folding if last else {}),
            )
            # The kernel is kept only where its zeros become the mask: a
            # copy of every kernel would stay resident until `quantize`
            # returns (ResNet50: 94 MB).
            self.wrappers.append((wrapper, kernel if wrapper.preserve_sparsity else None))
            chain.append(wrapper)
        chain += [] if lowered is None else lowered.after
        if own not in ("linear", "relu", "relu6"):
            chain.append(
                QuantizedActivation(own, ema_decay=self.ema_decay, name=f"{wrapper.name}_act")
            )
        return Replacement(chain[0], after=chain[1:], weights=pairs)

    def input_quantizer(self, tensor):
        if "float" not in str(tensor.dtype):
            return None
        return self.quantizer(graph.tensor_name(tensor))


def quantize(
    model: keras.Model,
    calibration_data: Any = None,
    skip: LayerSelector = None,
    *,
    ema_decay: float = 0.99,
    calibration_batch_size: int = 32,
    bn_folding: str = "auto",
    bn_freeze_step: int | None = None,
) -> keras.Model:
    """Return a new quantization-aware (QAT) copy of `model`.

    The copy computes what the int8 TFLite model computes: Conv/Depthwise/
    Dense layers with their BatchNormalization folded in and ReLU/ReLU6
    fused become `QuantizeWrapper`s (int8 weights per channel for
    convolutions, grouped ones included, per tensor for Dense and
    Conv2DTranspose); a SeparableConv2D becomes a depthwise and a pointwise
    wrapper and a Conv1D the Conv2D the converter makes of it (see
    `tfaccel.quantization.lowering`); a BatchNormalization no kernel absorbs,
    a Normalization and a Rescaling become an int8 MUL and ADD
    (`QuantizeAffineWrapper`); the model inputs and every op with its own
    int8 output scale (layers and operators such as `x + y` or `x * 0.5`
    between layers) get an `ActivationQuantizer`; average pooling keeps its
    input's scale, as TFLite's int8 AVERAGE_POOL_2D requires, and rounds
    each mean to that scale's grid as the int8 op does; activations
    TFLite runs as separate ops become `QuantizedActivation`s (a softmax or
    sigmoid output keeps its logits for Keras' cross-entropy losses, so a
    1000-class head trains although int8 rounds most probabilities to 0). Train it with
    `fit` as usual, then convert it with `Optimize.DEFAULT`: the converter
    makes int8 kernels from the fake-quant ops, no representative data set
    needed. A model pruned with `tfaccel.prune` keeps pruning inside QAT
    while its schedule is unfinished (`PrunedQuantizeWrapper`: one `fit`
    for both); a finished one is stripped first, and weights that are zero
    stay exactly zero (a fixed mask per kernel with at least
    `PRESERVED_SPARSITY`, 1%, of its entries zero). A clustered kernel (see
    `tfaccel.cluster`; at most 255 distinct nonzero values, an eighth of
    the entries repeating one, see `kernel_clusters`) keeps its clusters: its centroids train with
    fixed assignments and its int8 kernel stays on as many values
    (cluster-preserving QAT, `QuantizeWrapper(preserve_clusters=...)`);
    not under a per-tensor Dense scheme with a folded BatchNorm.

    Example:

    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> x = keras.layers.ReLU()(x)
    >>> outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    >>> model = keras.Model(inputs, outputs)
    >>> qat = quantize(model, calibration_data=np.random.rand(16, 8, 8, 1))
    >>> is_quantized(qat), is_quantized(model)
    (True, False)

    Args:
        model: a Sequential or functional Keras model (nested models are
            quantized too), possibly pruned with `tfaccel`.
        calibration_data: optional inputs (numpy array, `tf.data.Dataset` or
            iterable of batches; `(x, y)` pairs are fine) run once through the
            new model to set every activation range, so that it is usable
            before training.
        skip: layers to keep float: names, layers (matched by name),
            classes, predicates `fn(layer)`, or a list of them (see
            `tfaccel.graph.selector`); a skipped nested model stays float as
            a whole. Their weights are not fake-quantized; their output gets
            an activation quantizer only where a quantized op reads it. A
            skipped run of layers at the end of the model stays float in the
            TFLite file (DEQUANTIZE before it); a skipped layer between two
            quantized ops has int8 scales on both sides, and the converter
            may still quantize it unless the export denylists it.
        ema_decay: decay of the moving average of activation ranges.
        calibration_batch_size: batch size used to split a numpy
            `calibration_data`.
        bn_folding: how a folded BatchNormalization normalizes in training
            (`QuantizeWrapper(bn_folding=...)`): `"moving"` folds its moving
            statistics, the int8 model's computation (fine-tuning a trained
            model); `"batch"` normalizes with batch statistics like float
            training until `bn_freeze_step`, then freezes to the moving fold
            (QAT from random initialization, Jacob et al. 2018); `"auto"`
            (default) picks `"batch"` for a BatchNormalization whose moving
            statistics are still at their initial values (mean 0, variance
            1: never trained) and `"moving"` otherwise. Inference and the
            exported file use the moving statistics in every mode.
        bn_freeze_step: with batch folding, the number of training steps
            (calls) on batch statistics before freezing; None (default)
            never freezes, as float BatchNorm training. Freezing for the
            last 10-20% of the steps trains on the exact int8 computation.

    Returns:
        A new `keras.Model`; `model` is left unchanged.

    Raises:
        ValueError: if a layer or operation cannot be quantized (its name
            and class are given, with how to skip it), the model is already
            quantized, or the model is subclassed.
    """
    _check_batch_size(calibration_batch_size, "calibration_batch_size")
    if bn_folding not in _BN_FOLDINGS:
        raise ValueError(
            f"`bn_folding` must be one of {_BN_FOLDINGS}. "
            f"Received: bn_folding={bn_folding!r}"
        )
    graph.read(model)  # a clear error for a subclassed model
    already = [layer.name for layer in graph.all_layers(model) if isinstance(layer, _QAT_LAYERS)]
    if already:
        raise ValueError(
            f"Model '{model.name}' is already quantized (quantization-aware "
            f"layers: {already[:5]}{' ...' if len(already) > 5 else ''}). "
            "Train it, calibrate it (`tfaccel.quantization.calibrate`) or "
            "export it; to quantize again, start from the float model."
        )
    skip_fn = graph.selector(skip, "skip")
    model, pruning = carry_pruning(model, skip_fn)  # unfinished: kept running
    source = graph.read(model)
    planner = _Planner(skip_fn)
    planner.plan(source)
    if planner.errors:
        listed = "; ".join(planner.errors)
        raise ValueError(
            f"Cannot quantize {listed}: no int8 TFLite rule is registered for "
            "it (or for this configuration of it). Keep it float with "
            "`quantize(model, skip=[<layer name or class>])`, or register a "
            "rule with `tfaccel.quantization.register_quantizable`."
        )
    rewrite = _Rewrite(planner, ema_decay, pruning, (bn_folding, bn_freeze_step))
    new_model = graph.rebuild(model, rewrite, input_layers=rewrite.input_quantizer)
    for wrapper, kernel in rewrite.wrappers:
        if wrapper.preserve_sparsity:
            wrapper.mask.assign((kernel != 0).astype("float32"))
        if wrapper.preserve_clusters:
            wrapper.set_clusters()  # from the copied kernel
    del rewrite  # its kernel copies, before calibration allocates
    carry_state(new_model)  # masks and steps of the schedules kept running
    if calibration_data is not None:
        calibrate(new_model, calibration_data, batch_size=calibration_batch_size)
    return new_model


def is_quantized(model: keras.Model) -> bool:
    """Whether `model` contains tfaccel quantization-aware layers.

    Example:

    >>> is_quantized(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    False
    """
    return any(isinstance(layer, _QAT_LAYERS) for layer in graph.all_layers(model))
