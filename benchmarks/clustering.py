"""Weight clustering benchmark: tfaccel vs tfmot clustering, CQAT and PCQAT.

Both sides run the same recipe from the SAME starting weights: this process
(Keras 3) trains the dense digits CNN and prunes it to 80% with
`tfaccel.prune` for every seed, and builds a magnitude-pruned (80%)
untrained MobileNetV2; the weights go to a `.npz` file that the tfmot side,
run as a subprocess of this script (`--side tfmot`, `TF_USE_LEGACY_KERAS=1`
before TensorFlow is imported; tfmot never enters this process), loads
into the same `tf_keras` models. Each side then:

- clusters the dense CNN (16 clusters, k-means++), fine-tunes 3 epochs,
  strips it: accuracy change vs dense (Keras);
- quantizes the pruned CNN (QAT keeping zeros, 3 epochs): the "pruned + QAT"
  int8 file;
- clusters the pruned CNN keeping its zeros (16 clusters), fine-tunes 3
  epochs, strips, quantizes keeping zeros and clusters (QAT, 3 epochs): the
  PCQAT int8 file; accuracy of the file, kernel sparsity and distinct values
  per kernel read from the file, gzip vs the pruned + QAT file;
- MobileNetV2 (alpha 0.35, 96x96, untrained, sizes only): pruned + clustered
  + QAT int8 gzip / dense float32 gzip;
- train-step time clustered / plain on the digits CNN (interleaved rounds).

Every file is written by the same TF converter call (`Optimize.DEFAULT`,
int8 input/output). Usage:

    .venv/bin/python benchmarks/clustering.py --out benchmarks/results/clustering.json

Prints the JSON, then a Markdown table (progress goes to stderr).
"""

from __future__ import annotations

import os
import sys

if "--side" in sys.argv and "tfmot" in sys.argv:
    # Before TensorFlow is imported: tfmot would flip it anyway.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CLUSTERS = 16
CLUSTER_EPOCHS = 3
CLUSTER_LR = 1e-4
MOBILENET_ALPHA = 0.35
MOBILENET_SHAPE = (96, 96, 3)
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


# --------------------------------------------------------------------------
# The two sides: the same verbs, each with its own library.


class TfaccelSide:
    name = "tfaccel"

    def __init__(self):
        import keras

        import tfaccel.clustering as tc
        import tfaccel.quantization as tq

        self.k, self.tc, self.tq = keras, tc, tq

    def cluster(self, model, preserve_sparsity):
        return self.tc.cluster(model, CLUSTERS, centroid_init="kmeans++",
                               preserve_sparsity=preserve_sparsity)

    def strip(self, model):
        return self.tc.strip_clustering(model)

    def qat(self, model, calibration, clusters):
        # Zeros (mask) and clusters (CQAT) are kept automatically.
        return self.tq.quantize(model, calibration_data=calibration)


class TfmotSide:
    name = "tfmot"

    def __init__(self):
        import tensorflow_model_optimization as tfmot
        import tf_keras

        self.k, self.tfmot = tf_keras, tfmot
        self.left_unclustered: set[str] = set()

    def cluster(self, model, preserve_sparsity):
        c = self.tfmot.clustering.keras
        params = {"number_of_clusters": CLUSTERS, "preserve_sparsity": preserve_sparsity,
                  "cluster_centroids_init": c.CentroidInitialization.KMEANS_PLUS_PLUS}
        if not preserve_sparsity:
            return c.cluster_weights(model, **params)

        def one(layer):
            # tfmot's k-means++ fails ("Expected num_to_sample <= points.rows()")
            # on a kernel with fewer nonzeros than clusters (the 72-weight
            # stem conv pruned to 80%): leave such layers unclustered there.
            kernels = [w for w in layer.weights if "kernel" in w.name]
            if not kernels:
                return layer
            if np.count_nonzero(kernels[0].numpy()) < 2 * CLUSTERS:
                self.left_unclustered.add(layer.name)
                return layer
            return c.cluster_weights(layer, **params)

        return self.k.models.clone_model(model, clone_function=one)

    def strip(self, model):
        return self.tfmot.clustering.keras.strip_clustering(model)

    def qat(self, model, calibration, clusters):
        combine = self.tfmot.experimental.combine
        q = self.tfmot.quantization.keras
        scheme = (combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
                  if clusters else combine.Default8BitPrunePreserveQuantizeScheme())
        qat = q.quantize_apply(q.quantize_annotate_model(model), scheme)
        qat(calibration, training=True)  # activation ranges off their initial values
        return qat


def _copy(side, model):
    copy = side.k.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


# --------------------------------------------------------------------------
# Reading files.


def file_kernels(path: str) -> list[np.ndarray]:
    """The weight tensors of the conv / fully-connected ops of a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without delegates: XNNPACK would take the constant weights away.
    interp = Interpreter(
        model_path=path,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return [interp.get_tensor(int(op["inputs"][1]))
            for op in interp._get_ops_details()  # noqa: SLF001 - listing ops
            if op["op_name"] in _WEIGHT_OPS]


def entropy_bytes(kernel: np.ndarray) -> float:
    """Zeroth-order entropy of a kernel's values, in bytes: what an ideal
    coder of independent values needs (gzip, at least a bit a byte, needs more)."""
    _, counts = np.unique(kernel, return_counts=True)
    p = counts / kernel.size
    return float(-(counts * np.log2(p)).sum() / 8)


def file_facts(path: str) -> dict:
    kernels = file_kernels(path)
    distinct = [int(np.unique(k).size) for k in kernels]
    zeros = sum(int(np.sum(k == 0)) for k in kernels)
    total = sum(k.size for k in kernels)
    kernel_bytes = b"".join(np.ascontiguousarray(k).tobytes() for k in kernels)
    return {**common.file_sizes(path), "kernel_sparsity": round(zeros / total, 4),
            "max_distinct_per_kernel": max(distinct),
            "kernels_over_16_values": sum(d > CLUSTERS for d in distinct),
            "kernel_dtypes": sorted({k.dtype.name for k in kernels}),
            # Where the file's gzip bytes can shrink: the kernels alone.
            "kernel_gzip_bytes": len(gzip.compress(kernel_bytes, 9)),
            "kernel_entropy_bytes": round(sum(entropy_bytes(k) for k in kernels), 1)}


def _keras_kernels(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.weights
            if w.name.endswith("kernel") or w.name.endswith("kernel:0")]


# --------------------------------------------------------------------------
# Starting weights (this process, Keras 3 + tfaccel).


def _magnitude_prune(model, fraction: float) -> None:
    """Zero the smallest `fraction` of every conv / dense kernel, in place."""
    for w in model.weights:
        if "kernel" in w.name:
            value = w.numpy()
            threshold = np.quantile(np.abs(value), fraction)
            w.assign(np.where(np.abs(value) <= threshold, 0.0, value))


def _mobilenet(k):
    k.utils.set_random_seed(0)
    return k.applications.MobileNetV2(input_shape=MOBILENET_SHAPE, alpha=MOBILENET_ALPHA,
                                      weights=None)


def starting_weights(data, seeds, path: str, log) -> dict:
    import keras

    import tfaccel
    from tfaccel.schedules import PolynomialDecay

    x_train, y_train, x_test, y_test = data
    arrays, info = {}, {"seeds": []}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        dense = common.compile_classifier(common.make_cnn(keras))
        dense.fit(x_train, y_train, epochs=common.DENSE_EPOCHS, batch_size=common.BATCH,
                  verbose=0)
        pruned = tfaccel.prune(dense, PolynomialDecay(
            **common.prune_schedule_args(len(x_train))))
        common.compile_classifier(pruned)
        pruned.fit(x_train, y_train, epochs=common.PRUNE_EPOCHS,
                   batch_size=common.BATCH, verbose=0)
        pruned = tfaccel.strip_pruning(pruned)
        row = {"seed": seed, "dense_acc": common.accuracy(dense, x_test, y_test),
               "pruned_acc": common.accuracy(pruned, x_test, y_test),
               "pruned_sparsity": common.weight_sparsity(_keras_kernels(pruned))}
        info["seeds"].append(row)
        log(f"seed {seed}: {row}")
        for name, model in (("dense", dense), ("pruned", pruned)):
            for i, w in enumerate(model.get_weights()):
                arrays[f"{name}_{seed}_{i:03d}"] = w
        keras.backend.clear_session()
    mobilenet = _mobilenet(keras)
    rng = np.random.default_rng(0)
    representative = rng.uniform(-1, 1, (16, *MOBILENET_SHAPE)).astype("float32")
    mobilenet(representative, training=True)  # non-degenerate BN statistics
    with tempfile.TemporaryDirectory() as d:
        float_path = common.write_bytes(os.path.join(d, "float.tflite"),
                                        common.convert_keras(mobilenet, "float32"))
        info["mobilenet_float32"] = common.file_sizes(float_path)
    _magnitude_prune(mobilenet, common.TARGET_SPARSITY)
    for i, w in enumerate(mobilenet.get_weights()):
        arrays[f"mobilenet_{i:04d}"] = w
    arrays["mobilenet_representative"] = representative
    np.savez(path, **arrays)
    return info


def _weights(arrays, prefix: str) -> list[np.ndarray]:
    keys = sorted(k for k in arrays.files if k.startswith(prefix))
    return [arrays[k] for k in keys]


# --------------------------------------------------------------------------
# One side's measurements.


def digits_seed(side, data, arrays, seed: int, workdir: str, log) -> dict:
    k = side.k
    x_train, y_train, x_test, y_test = data
    k.utils.set_random_seed(seed)
    fit = {"epochs": CLUSTER_EPOCHS, "batch_size": common.BATCH, "verbose": 0}

    def load(name):
        model = common.make_cnn(k)
        model.set_weights(_weights(arrays, f"{name}_{seed}_"))
        return model

    dense, pruned = load("dense"), load("pruned")
    res = {"seed": seed, "dense_acc": common.accuracy(dense, x_test, y_test)}

    clustered = side.cluster(_copy(side, dense), preserve_sparsity=False)
    common.compile_classifier(clustered, k, lr=CLUSTER_LR).fit(x_train, y_train, **fit)
    stripped = side.strip(clustered)
    res["clustered_acc"] = common.accuracy(stripped, x_test, y_test)
    res["clustered_minus_dense_points"] = round(
        100 * (res["clustered_acc"] - res["dense_acc"]), 3)
    res["clustered_max_distinct"] = max(
        int(np.unique(w).size) for w in _keras_kernels(stripped))
    log(f"{side.name} seed {seed}: clustered {res['clustered_acc']:.4f} "
        f"(dense {res['dense_acc']:.4f})")

    def qat_file(model, name, clusters):
        qat = side.qat(model, x_train[:256], clusters)
        common.compile_classifier(qat, k, lr=common.QAT_LR).fit(x_train, y_train, **fit)
        path = common.write_bytes(os.path.join(workdir, f"{side.name}_{name}_{seed}.tflite"),
                                  common.convert_keras(qat, "qat", int8_io=True))
        facts = file_facts(path)
        facts["tflite_acc"] = common.tflite_accuracy(path, x_test, y_test)
        return facts

    res["pruned_qat"] = qat_file(_copy(side, pruned), "pqat", clusters=False)
    sparse_clustered = side.cluster(_copy(side, pruned), preserve_sparsity=True)
    common.compile_classifier(sparse_clustered, k, lr=CLUSTER_LR).fit(
        x_train, y_train, **fit)
    res["pcqat"] = qat_file(side.strip(sparse_clustered), "pcqat", clusters=True)
    res["pcqat_minus_dense_points"] = round(
        100 * (res["pcqat"]["tflite_acc"] - res["dense_acc"]), 3)
    for key in ("gzip_bytes", "kernel_gzip_bytes", "kernel_entropy_bytes"):
        res[f"pcqat_{key}_ratio"] = round(
            res["pcqat"][key] / res["pruned_qat"][key], 4)
    res["pcqat_gzip_vs_pruned_qat_gzip"] = res["pcqat_gzip_bytes_ratio"]
    log(f"{side.name} seed {seed}: PCQAT {res['pcqat']} vs PQAT {res['pruned_qat']}")
    k.backend.clear_session()
    return res


def overhead(side, data, arrays, repeats: int, steps: int, log) -> dict:
    x_train, y_train, _, _ = data
    dense = common.make_cnn(side.k)
    dense.set_weights(_weights(arrays, f"dense_{common.SEEDS[0]}_"))
    base = common.compile_classifier(_copy(side, dense), side.k)
    clustered = common.compile_classifier(
        side.cluster(_copy(side, dense), preserve_sparsity=False), side.k)
    cb = side.k.callbacks.Callback
    log(f"{side.name}: interleaved step timing, {repeats} rounds x {steps} steps")
    res = common.interleaved_step_times(
        [("float", common.fit_round(base, x_train, y_train, cb, steps)),
         ("clustered", common.fit_round(clustered, x_train, y_train, cb, steps))],
        repeats=repeats, warmup=1)
    res["how"] = common.OVERHEAD_HOW
    return res


def mobilenet(side, arrays, log) -> dict:
    model = _mobilenet(side.k)
    model.set_weights(_weights(arrays, "mobilenet_0"))
    representative = arrays["mobilenet_representative"]
    clustered = side.strip(side.cluster(model, preserve_sparsity=True))
    qat = side.qat(clustered, representative, clusters=True)
    with tempfile.TemporaryDirectory() as d:
        path = common.write_bytes(os.path.join(d, "pcqat.tflite"),
                                  common.convert_keras(qat, "qat", int8_io=True))
        res = file_facts(path)
    log(f"{side.name}: MobileNetV2 PCQAT {res}")
    return res


def _left_unclustered(side, section: str, result: dict) -> None:
    """Record (and reset) the layers tfmot could not cluster in `section`."""
    names = getattr(side, "left_unclustered", None)
    if names:
        result[f"{section}_left_unclustered"] = sorted(names)
        names.clear()


def run_side(side_name: str, arrays_path: str, seeds, repeats, steps) -> dict:
    log = common.Clock(f"clustering/{side_name}")
    side = TfaccelSide() if side_name == "tfaccel" else TfmotSide()
    data = common.load_digits_split()
    arrays = np.load(arrays_path)
    result: dict = {"side": side_name}
    with tempfile.TemporaryDirectory() as workdir:
        common.guard_section("digits", lambda: [
            digits_seed(side, data, arrays, s, workdir, log) for s in seeds], result, log)
    _left_unclustered(side, "digits", result)
    common.guard_section("overhead", lambda: overhead(side, data, arrays, repeats, steps,
                                                      log), result, log)
    common.guard_section("mobilenet", lambda: mobilenet(side, arrays, log), result, log)
    _left_unclustered(side, "mobilenet", result)
    result["elapsed_s"] = log.elapsed()
    return result


# --------------------------------------------------------------------------
# Summary.


def _mean(rows, fn):
    return round(statistics.mean(fn(r) for r in rows), 4)


def summary(result: dict) -> dict:
    out = {}
    float_gzip = result["start"]["mobilenet_float32"]["gzip_bytes"]
    for name in ("tfaccel", "tfmot"):
        side = result.get(name, {})
        rows = side.get("digits")
        s = {}
        if isinstance(rows, list) and rows:
            s.update({
                "clustered_minus_dense_points": _mean(
                    rows, lambda r: r["clustered_minus_dense_points"]),
                "clustered_minus_dense_points_min": min(
                    r["clustered_minus_dense_points"] for r in rows),
                "pcqat_minus_dense_points": _mean(rows, lambda r: r["pcqat_minus_dense_points"]),
                "pcqat_kernel_sparsity": _mean(rows, lambda r: r["pcqat"]["kernel_sparsity"]),
                "pcqat_max_distinct_per_kernel": max(
                    r["pcqat"]["max_distinct_per_kernel"] for r in rows),
                "pcqat_gzip_vs_pruned_qat_gzip": _mean(
                    rows, lambda r: r["pcqat_gzip_vs_pruned_qat_gzip"]),
                "pcqat_kernel_gzip_ratio": _mean(
                    rows, lambda r: r["pcqat_kernel_gzip_bytes_ratio"]),
                "pcqat_kernel_entropy_ratio": _mean(
                    rows, lambda r: r["pcqat_kernel_entropy_bytes_ratio"]),
            })
        mob = side.get("mobilenet", {})
        if "gzip_bytes" in mob:
            s["mobilenet_pcqat_gzip_vs_float32_gzip"] = round(
                mob["gzip_bytes"] / float_gzip, 4)
            s["mobilenet_pcqat_max_distinct_per_kernel"] = mob["max_distinct_per_kernel"]
        ovh = side.get("overhead", {})
        if "ratio" in ovh:
            s["cluster_step_ratio"] = ovh["ratio"]["clustered"]
            s["cluster_step_ratio_iqr"] = ovh["ratio_iqr"]["clustered"]
        out[name] = s
    return out


_ROWS = (
    ("Digits CNN, 16 clusters: accuracy change vs dense (points, mean of seeds)",
     "clustered_minus_dense_points"),
    ("... worst seed", "clustered_minus_dense_points_min"),
    ("Pruned 80% + 16 clusters + QAT int8 file: accuracy vs dense (points)",
     "pcqat_minus_dense_points"),
    ("... kernel sparsity read from the file", "pcqat_kernel_sparsity"),
    ("... max distinct values per kernel in the file", "pcqat_max_distinct_per_kernel"),
    ("... gzip / pruned + QAT int8 gzip", "pcqat_gzip_vs_pruned_qat_gzip"),
    ("... the same for the kernel bytes alone (gzip -9)", "pcqat_kernel_gzip_ratio"),
    ("... the same for an ideal coder of the kernel values (entropy)",
     "pcqat_kernel_entropy_ratio"),
    ("MobileNetV2 0.35 96px: pruned + clustered + QAT int8 gzip / float32 gzip",
     "mobilenet_pcqat_gzip_vs_float32_gzip"),
    ("... max distinct values per kernel", "mobilenet_pcqat_max_distinct_per_kernel"),
    ("Clustering train step / plain step (digits CNN)", "cluster_step_ratio"),
)


def markdown(summary_: dict) -> str:
    lines = ["| measure | tfaccel | tfmot |", "|---|---|---|"]
    for label, key in _ROWS:
        cells = [summary_.get(n, {}).get(key, "n/a") for n in ("tfaccel", "tfmot")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--seeds", default=",".join(map(str, common.SEEDS)))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--side", choices=("tfaccel", "tfmot"),
                        help="internal: run one side on --weights, print its JSON")
    parser.add_argument("--weights", help="internal: the starting weights (.npz)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.side:
        print(json.dumps(run_side(args.side, args.weights, seeds, args.repeats,
                                  args.steps), default=common._jsonable))
        return {}
    log = common.Clock("clustering")
    result: dict = {"benchmark": "clustering", "command": common.command_line(),
                    "env": common.env_info(), "recipe": {
                        **common.recipe(),
                        "clustering": (f"{CLUSTERS} clusters, k-means++ init, "
                                       f"{CLUSTER_EPOCHS}-epoch fine-tune, Adam "
                                       f"{CLUSTER_LR}; then QAT {CLUSTER_EPOCHS} epochs "
                                       f"Adam {common.QAT_LR}; same starting weights "
                                       "(dense and tfaccel-pruned) on both sides"),
                        "mobilenet": (f"MobileNetV2 alpha {MOBILENET_ALPHA}, input "
                                      f"{MOBILENET_SHAPE}, weights=None, kernels "
                                      "magnitude-pruned to 80% per tensor, clustered "
                                      "(no training), QAT (one calibration pass)")}}
    data = common.load_digits_split()
    with tempfile.TemporaryDirectory() as d:
        arrays_path = os.path.join(d, "start.npz")
        result["start"] = starting_weights(data, seeds, arrays_path, log)
        for side in ("tfaccel", "tfmot"):
            # Each side in a fresh process: tfmot flips TF_USE_LEGACY_KERAS.
            cmd = [sys.executable, os.path.abspath(__file__), "--side", side,
                   "--weights", arrays_path, "--seeds", args.seeds,
                   "--repeats", str(args.repeats), "--steps", str(args.steps)]
            log(f"running the {side} side")
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            sys.stderr.write(done.stderr[-4000:])
            try:
                result[side] = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                result[side] = {"error": f"exit {done.returncode}",
                                "stderr": done.stderr[-2000:]}
    result["summary"] = summary(result)
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    print("\n" + markdown(result["summary"]))
    return result


if __name__ == "__main__":
    main()
