"""tfaccel tf.distribute benchmark: throughput and per-step synchronization.

On the digits CNN (plain, pruned, pruned + QAT), with MirroredStrategy over
two *logical* CPUs of one 2-core machine and on one device:

- **throughput**: training samples/s, one epoch per model per round, rounds
  interleaved between all six setups (order rotating), median over rounds,
  at a global batch of 32 and of 256;
- **synchronization**: the cross-device reductions one training step adds,
  counted by hooking `tf.distribute.ReductionToOneDevice` (passed as
  `cross_device_ops=`, the default for CPU devices anyway; see
  `CountingReduction` for why the class is hooked, not subclassed). It
  records every reduce / batch_reduce / broadcast that reaches the
  cross-device layer while Keras traces the train function, with the number
  of values and of floats moved, divided by the number of traced steps. For comparison, tfmot's
  approach adds one all-reduce of every prunable weight per step: its
  element count is computed from the model (not measured: tfmot runs only on
  tf_keras).

Two logical CPUs share the same two cores and memory: the samples/s here
measure tfaccel's overhead under a real MirroredStrategy code path, and say
nothing about scaling on GPUs or TPUs.

Usage:

    .venv/bin/python benchmarks/distribute.py --out benchmarks/results/distribute.json

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPUs before TensorFlow runs any op (see tests/conftest.py).
_CPUS = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTIONS = ("sync", "throughput")
VARIANTS = ("plain", "pruned", "pruned_qat")
DEVICES = ("/cpu:0", "/cpu:1")
BATCHES = (32, 256)
CAVEAT = ("2 logical CPUs of one 2-core machine share cores, caches and memory: "
          "these figures measure tfaccel's MirroredStrategy code path and its "
          "synchronization cost, not multi-device scaling; they say nothing about GPUs "
          "or TPUs.")


class CountingReduction:
    """Counts the cross-device reductions and broadcasts of MirroredStrategy.

    Used as a context manager, it hooks `tf.distribute.ReductionToOneDevice`
    (the cross-device ops MirroredStrategy picks for CPU devices, passed here
    explicitly as `cross_device_ops=`). Hooking the class rather than
    passing a subclass is needed: for destinations on a CPU (the writes of
    `aggregation="mean"` variables) `MirroredStrategy._reduce_to` builds its
    own `ReductionToOneDevice()` and never calls the strategy's
    `cross_device_ops`. Only the outermost calls are counted:
    `ReductionToOneDevice` implements a batch_reduce as one reduce per value
    and a reduce as a reduction then a broadcast. TF skips this layer for
    single-replica values. In a `tf.function` these methods run while
    tracing, so one traced train step yields the per-step counts.
    """

    _METHODS = ("reduce_implementation", "batch_reduce_implementation",
                "broadcast_implementation")

    def __init__(self):
        self.reset()
        self._saved: dict = {}

    def reset(self) -> None:
        self.events: list[dict] = []
        self._depth = 0
        # Set by the caller: "build" before the first train_step, then "step";
        # `in_train_step` > 0 while a replica runs train_step.
        self.phase = "build"
        self.in_train_step = 0

    @staticmethod
    def _size(value) -> int:
        component = getattr(value, "values", (value,))[0]
        n = component.shape.num_elements()
        return int(n) if n is not None else 0

    def _call(self, kind: str, values, targets, fn):
        if self._depth == 0:
            self.events.append({
                "kind": kind, "values": len(values),
                "floats": sum(self._size(v) for v in values),
                "targets": [_describe(t) for t in targets],
                "phase": self.phase, "in_train_step": self.in_train_step > 0})
        self._depth += 1
        try:
            return fn()
        finally:
            self._depth -= 1

    def __enter__(self):
        cls = tf.distribute.ReductionToOneDevice
        self._saved = {m: cls.__dict__.get(m) for m in self._METHODS}
        reduce_impl, batch_impl, broadcast_impl = (getattr(cls, m) for m in self._METHODS)
        counter = self

        def reduce_implementation(ops, reduce_op, per_replica_value, destinations,
                                  options):
            return counter._call(
                "reduce", [per_replica_value], [destinations],
                lambda: reduce_impl(ops, reduce_op, per_replica_value, destinations,
                                    options))

        def batch_reduce_implementation(ops, reduce_op, value_destination_pairs, options):
            pairs = list(value_destination_pairs)
            return counter._call(
                "batch_reduce", [v for v, _ in pairs], [d for _, d in pairs],
                lambda: batch_impl(ops, reduce_op, pairs, options))

        def broadcast_implementation(ops, tensor, destinations):
            return counter._call(
                "broadcast", [tensor], [destinations],
                lambda: broadcast_impl(ops, tensor, destinations))

        cls.reduce_implementation = reduce_implementation
        cls.batch_reduce_implementation = batch_reduce_implementation
        cls.broadcast_implementation = broadcast_implementation
        return self

    def __exit__(self, *exc):
        cls = tf.distribute.ReductionToOneDevice
        for name, method in self._saved.items():
            if method is None:
                delattr(cls, name)
            else:
                setattr(cls, name, method)
        return False


def _describe(destinations) -> str:
    name = getattr(destinations, "path", None) or getattr(destinations, "name", None)
    return str(name) if name else type(destinations).__name__


def _pruned_source(data):
    """A digits CNN pruned to 80% (ConstantSparsity), trained one epoch on one device."""
    import keras

    import tfaccel
    from tfaccel.schedules import ConstantSparsity

    x_train, y_train, _, _ = data
    keras.utils.set_random_seed(0)
    spe = common.steps_per_epoch(len(x_train))
    pruned = tfaccel.prune(common.make_cnn(keras),
                           ConstantSparsity(common.TARGET_SPARSITY, 0, frequency=spe // 2))
    common.compile_classifier(pruned, keras)
    pruned.fit(x_train, y_train, batch_size=common.BATCH, epochs=1, verbose=0)
    return tfaccel.strip_pruning(pruned)


def build(variant: str, data, sparse_source):
    """A compiled model of `variant`, in the current strategy scope."""
    import keras

    import tfaccel
    from tfaccel.schedules import PolynomialDecay

    x_train = data[0]
    keras.utils.set_random_seed(0)
    if variant == "plain":
        model = common.make_cnn(keras)
    elif variant == "pruned":
        model = tfaccel.prune(common.make_cnn(keras),
                              PolynomialDecay(**common.prune_schedule_args(len(x_train))))
    elif variant == "pruned_qat":
        # quantize() keeps the zeros of the pruned kernels with a fixed mask.
        model = tfaccel.quantize(sparse_source, calibration_data=x_train[:256])
    else:
        raise ValueError(f"variant must be one of {VARIANTS}. Received: {variant!r}")
    return common.compile_classifier(model, keras)


def prunable_weight_sizes(model) -> list[int]:
    """Element counts of the weights `tfaccel.prune` masks (tfmot would all-reduce)."""
    from tfaccel.pruning import PruneLowMagnitude

    sizes = []
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001
        if isinstance(layer, PruneLowMagnitude):
            sizes += [int(np.prod(m.shape)) for m in layer.masks]
    return sizes


def sync_counts(data, sparse_source, log) -> dict:
    import keras

    x_train, y_train, _, _ = data
    out: dict = {"how": (
        "MirroredStrategy(['/cpu:0','/cpu:1'], cross_device_ops=ReductionToOneDevice()), "
        "whose reduce/batch_reduce/broadcast implementations are hooked by "
        "CountingReduction (outermost calls only; also catches the ReductionToOneDevice "
        "TF builds itself for variable writes on CPU); counts taken while `fit` traces the "
        "train function over 2 equal batches of 32 (global), divided by the traced "
        "train steps (train_step calls / replicas). Calls made before the first "
        "train_step (Keras' symbolic build of fit) are listed apart; calls after it "
        "include the reduction of the step's logs (loss, metrics) by the train "
        "function; `in_train_step` marks those made inside train_step (gradients, "
        "layer state)"), "variants": {}}
    for variant in VARIANTS:
        ops = CountingReduction()
        strategy = tf.distribute.MirroredStrategy(
            list(DEVICES), cross_device_ops=tf.distribute.ReductionToOneDevice())
        with strategy.scope():
            model = build(variant, data, sparse_source)
        traced = {"n": 0}
        original = model.train_step

        def counting_step(batch, _original=original, _traced=traced, _ops=ops):
            _traced["n"] += 1
            _ops.phase = "step"
            _ops.in_train_step += 1
            try:
                return _original(batch)
            finally:
                _ops.in_train_step -= 1

        model.train_step = counting_step
        with ops:
            model.fit(x_train[:64], y_train[:64], batch_size=32, epochs=1, verbose=0,
                      shuffle=False)
        steps = traced["n"] / strategy.num_replicas_in_sync
        events = [e for e in ops.events if e["phase"] == "step"]
        once = [e for e in ops.events if e["phase"] == "build"]

        def total(field, kinds, _events=events, _steps=steps):
            return sum(e[field] if field != "calls" else 1
                       for e in _events if e["kind"] in kinds) / _steps

        reductions = ("reduce", "batch_reduce")
        per_step = {
            "cross_device_calls": total("calls", reductions + ("broadcast",)),
            "reduce_calls": total("calls", ("reduce",)),
            "batch_reduce_calls": total("calls", ("batch_reduce",)),
            "broadcast_calls": total("calls", ("broadcast",)),
            "values_reduced": total("values", reductions),
            "floats_reduced": total("floats", reductions),
            "values_broadcast": total("values", ("broadcast",)),
            "floats_broadcast": total("floats", ("broadcast",)),
        }
        row = {"traced_steps": steps, "per_step": per_step,
               "trainable_floats": int(sum(np.prod(w.shape)
                                           for w in model.trainable_weights)),
               "in_train_step_calls": sum(e["in_train_step"] for e in events) / steps,
               "calls": [{**e, "targets": e["targets"][:12]} for e in events],
               "once_per_fit_before_first_step": [
                   {k: e[k] for k in ("kind", "values", "floats")} for e in once]}
        if variant == "pruned":
            sizes = prunable_weight_sizes(model)
            row["tfmot_style_extra_per_step"] = {
                "all_reduces": len(sizes), "floats": int(sum(sizes)),
                "how": "one all-reduce of every prunable weight per step "
                       "(computed from the model, not measured)"}
        out["variants"][variant] = row
        log(f"sync {variant}: {per_step}")
        keras.backend.clear_session()
    plain = out["variants"]["plain"]["per_step"]
    for variant in ("pruned", "pruned_qat"):
        mine = out["variants"][variant]["per_step"]
        out["variants"][variant]["added_vs_plain"] = {
            k: mine[k] - plain[k] for k in plain}
    return out


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.t0

    return EpochTimer()


def throughput(data, sparse_source, batch: int, repeats: int, tile: int, mirrored,
               log) -> dict:
    # The training set tiled so that an epoch lasts long enough to time.
    x_train, y_train = np.tile(data[0], (tile, 1, 1, 1)), np.tile(data[1], tile)
    n = len(x_train)
    setups = []
    for variant in VARIANTS:
        with tf.device("/cpu:0"):
            setups.append((f"{variant}@1device", build(variant, data, sparse_source)))
        with mirrored.scope():
            setups.append((f"{variant}@mirrored2", build(variant, data, sparse_source)))

    def epoch(model) -> float:
        timer = _epoch_timer()
        model.fit(x_train, y_train, batch_size=batch, epochs=1, verbose=0,
                  callbacks=[timer])
        return timer.seconds

    for _, model in setups:  # warm-up: tracing, data adapters
        epoch(model)
    samples: dict[str, list[float]] = {name: [] for name, _ in setups}
    for r in range(repeats):
        k = r % len(setups)
        for name, model in setups[k:] + setups[:k]:
            samples[name].append(n / epoch(model))
    median = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    ratios = {}
    for variant in VARIANTS:
        ratios[f"{variant}_mirrored_over_1device"] = round(
            median[f"{variant}@mirrored2"] / median[f"{variant}@1device"], 3)
    for where in ("1device", "mirrored2"):
        for variant in ("pruned", "pruned_qat"):
            ratios[f"{variant}_over_plain@{where}"] = round(
                median[f"{variant}@{where}"] / median[f"plain@{where}"], 3)
    log(f"throughput batch {batch}: {median}")
    return {"global_batch": batch, "samples_per_epoch": n, "tile": tile,
            "repeats": repeats,
            "median_samples_per_s": median, "ratios": ratios,
            "iqr_samples_per_s": {
                name: [round(float(q), 1) for q in np.percentile(v, [25, 75])]
                for name, v in samples.items()}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed epochs per setup and batch size")
    parser.add_argument("--tile", type=int, default=4,
                        help="copies of the 1400 training samples per timed epoch")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)),
                        help="global batch sizes for the throughput section")
    # Accepted for run_all.py's --quick; this benchmark has no seeds.
    parser.add_argument("--seeds", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections must be among {SECTIONS}. Received: {sorted(unknown)}")
    log = common.Clock("distribute")
    result: dict = {"benchmark": "distribute", "command": common.command_line(),
                    "env": common.env_info(), "caveat": CAVEAT,
                    "logical_devices": [d.name for d in tf.config.list_logical_devices("CPU")],
                    "variants": {
                        "plain": "digits CNN (Conv8-BN-ReLU, Conv16-BN-ReLU, Dense10)",
                        "pruned": "tfaccel.prune, PolynomialDecay 0 -> 0.8 "
                                  f"{common.prune_schedule_args(1400)}",
                        "pruned_qat": "tfaccel.quantize of an 80%-pruned, stripped CNN "
                                      "(fixed sparsity masks, EMA activation ranges)"}}
    data = common.load_digits_split()
    holder: list = []
    common.guard_section("source", lambda: holder.append(_pruned_source(data)) or {"ok": True},
           result, log)
    source = holder[0] if holder else None
    if "sync" in sections:
        common.guard_section("sync", lambda: sync_counts(data, source, log), result, log)
    if "throughput" in sections:
        batches = [int(b) for b in args.batches.split(",") if b]
        # One strategy for all batch sizes: a second MirroredStrategy (default
        # cross-device ops) in the same process once failed here with a
        # collective "Shape mismatch" between the QAT BN-moment and gradient
        # all-reduces (see the report).
        mirrored = tf.distribute.MirroredStrategy(list(DEVICES))
        common.guard_section("throughput", lambda: {
            "how": f"samples/s = {args.tile} x 1400 (training set tiled) / epoch wall "
                   "time (on_epoch_begin to on_epoch_end), one epoch per setup per round, 6 setups interleaved with rotating "
                   "order after one warm-up epoch each; median over rounds",
            "batches": [throughput(data, source, b, args.repeats, args.tile, mirrored,
                                   log) for b in batches]},
            result, log)
    if result.get("source") == {"ok": True}:
        del result["source"]
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
