"""Train-step overhead against model size: plain, prune, QAT, prune+QAT.

For each model (digits CNN, MobileNetV2 a0.35 and a1.0 at 96x96, ResNet50
at 64x64 and 128x128; batch 16, 1000 classes for the applications) and each
library (tfaccel, and tfmot in a `tf_keras` process of its own with
`TF_USE_LEGACY_KERAS=1`), two kinds of fresh processes:

- **time**: one process builds the four variants and times `fit` steps
  interleaved (`common.interleaved_step_times`: rounds alternate, the
  median of per-round ratios to the plain model is reported), so every
  ratio compares steps of one process under the same load;
- **memory**: one process per variant runs a few `fit` steps and reports
  its peak resident memory (`ru_maxrss`) or, on a GPU, the device's peak
  allocation (`tf.config.experimental.get_memory_info`).

Variants: `plain`; `prune` (50% constant sparsity from step 0: tfaccel
`prune` with `ConstantSparsity`, tfmot `prune_low_magnitude` with its
`UpdatePruningStep` callback); `qat` (tfaccel `quantize`, batch-statistics
folding via `bn_folding="auto"`; tfmot `quantize_model`); `prune_qat`
(tfaccel `quantize(prune(model))`, pruning inside QAT; tfmot's
prune-preserving QAT of its stripped pruned model, masks fixed).

With a GPU the model trains under the `mixed_float16` policy (recorded);
the script runs unchanged on any CUDA machine. Timing data are random
inputs and labels: this measures speed, never accuracy.

Usage:

    .venv/bin/python benchmarks/qat_sweep.py --out benchmarks/results/qat_sweep.json
    .venv/bin/python benchmarks/qat_sweep.py --quick   # digits + MobileNetV2 a0.35

Prints one JSON object to stdout (progress goes to stderr) and writes a plot
next to `--out` (`qat_sweep.png`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

MODELS = ("digits_cnn", "mobilenetv2_0.35", "mobilenetv2_1.0", "resnet50_64",
          "resnet50_128")
QUICK_MODELS = ("digits_cnn", "mobilenetv2_0.35")
VARIANTS = ("plain", "prune", "qat", "prune_qat")
LIBS = ("tfaccel", "tfmot")
BATCH = 16
SPARSITY = 0.5


def _keras(lib: str):
    if lib == "tfmot":
        import tf_keras

        return tf_keras
    import keras

    return keras


def _gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _build(keras_module, name: str):
    """The model and random data of one batch size (timing only)."""
    keras_module.utils.set_random_seed(0)
    if name == "digits_cnn":
        model, shape, classes = common.make_cnn(keras_module), (8, 8, 1), 10
    elif name.startswith("resnet50"):
        side = int(name.split("_")[1])
        shape, classes = (side, side, 3), 1000
        model = keras_module.applications.ResNet50(weights=None, input_shape=shape)
    else:
        shape, classes = (96, 96, 3), 1000
        model = keras_module.applications.MobileNetV2(
            weights=None, alpha=float(name.split("_")[1]), input_shape=shape)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (BATCH * 64, *shape)).astype("float32")
    y = rng.integers(0, classes, len(x)).astype("int32")
    return model, x, y


def _variant_tfaccel(keras, model, variant: str, x):
    import tfaccel
    from tfaccel.schedules import ConstantSparsity

    if variant in ("prune", "prune_qat"):
        model = tfaccel.prune(model, ConstantSparsity(SPARSITY, begin_step=0))
    if variant in ("qat", "prune_qat"):
        model = tfaccel.quantize(model, calibration_data=x[:BATCH])
    return model, []


def _variant_tfmot(tf_keras, model, variant: str, x):
    import tensorflow_model_optimization as tfmot

    sparsity = tfmot.sparsity.keras
    quant = tfmot.quantization.keras
    if variant == "plain":
        return model, []
    if variant == "qat":
        return quant.quantize_model(model), []
    schedule = sparsity.ConstantSparsity(SPARSITY, begin_step=0)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    if variant == "prune":
        return pruned, [sparsity.UpdatePruningStep()]
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts\
        .prune_preserve import default_8bit_prune_preserve_quantize_scheme as pqat

    pruned.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    # One step sets the masks (sparsity from step 0).
    pruned.fit(x[:BATCH], np.zeros(BATCH, "int32"), verbose=0,
               callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(pruned)
    return quant.quantize_apply(quant.quantize_annotate_model(stripped),
                                pqat.Default8BitPrunePreserveQuantizeScheme()), []


def _model(lib: str, name: str, variant: str):
    keras_module = _keras(lib)
    if _gpu():
        keras_module.mixed_precision.set_global_policy("mixed_float16")
    model, x, y = _build(keras_module, name)
    make = _variant_tfaccel if lib == "tfaccel" else _variant_tfmot
    model, callbacks = make(keras_module, model, variant, x)
    # The plain model a variant was made from has no reference left, but
    # Keras 3 models hold reference cycles: without a collection its weights
    # (ResNet50: 100 MB) stayed resident through the memory worker's `fit`
    # (tf_keras's were freed at once). Both libraries' processes collect.
    gc.collect()
    model.compile(optimizer=keras_module.optimizers.SGD(1e-3),
                  loss=keras_module.losses.SparseCategoricalCrossentropy())
    return keras_module, model, x, y, callbacks


def worker_time(lib: str, name: str, variants, repeats: int, steps: int) -> dict:
    runners = []
    for variant in variants:
        keras_module, model, x, y, callbacks = _model(lib, name, variant)
        runners.append((variant, common.fit_round(
            model, x, y, keras_module.callbacks.Callback, steps, BATCH, callbacks)))
    res = common.interleaved_step_times(runners, repeats=repeats, warmup=1)
    res["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return res


def worker_memory(lib: str, name: str, variant: str, steps: int) -> dict:
    import resource

    import tensorflow as tf

    keras_module, model, x, y, callbacks = _model(lib, name, variant)
    model.fit(x[: steps * BATCH], y[: steps * BATCH], batch_size=BATCH, epochs=1,
              verbose=0, callbacks=callbacks)
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if _gpu():
        out["gpu_peak_mb"] = round(
            tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    return out


def _run_worker(args: list[str], lib: str, timeout: int) -> dict:
    env = dict(os.environ)
    if lib == "tfmot":
        env["TF_USE_LEGACY_KERAS"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def plot(result: dict, path: str) -> str | None:
    """Ratio to plain (time and peak memory) per model, one line per setup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "time_ratio", "train-step time / plain"),
                           (axes[1], "memory_ratio", "peak memory / plain")):
        for lib, style in zip(LIBS, ("-o", "--s")):
            for variant in VARIANTS[1:]:
                ys = [result["models"][m].get(lib, {}).get(key, {}).get(variant)
                      for m in models]
                ys = [np.nan if v is None else v for v in ys]
                if not np.all(np.isnan(ys)):
                    ax.plot(models, ys, style, label=f"{lib} {variant}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_qat_sweep(d: dict) -> list[str]:
    """Markdown lines of the BENCHMARKS.md section (used by run_all.py)."""
    out = ["## QAT and pruning overhead against model size", ""]
    cmd = ("`.venv/bin/python benchmarks/qat_sweep.py "
           "--out benchmarks/results/qat_sweep.json`")
    models = (d or {}).get("models") or {}
    if not models:
        return out + [f"n/a (not run): {cmd}", ""]
    if d.get("commands") or d.get("command"):
        cmd = "; ".join(f"`{c}`" for c in (d.get("commands") or [d["command"]]) if c)
    rec = d.get("recipe", {})
    if d.get("note"):
        out += [f"**{d['note']}**", ""]
    device = "GPU, mixed_float16" if d.get("gpu_mixed_float16") else "CPU, float32"
    out += [f"Batch {rec.get('batch')}, {device}; time: {rec.get('time')} "
            f"({rec.get('repeats')} rounds x {rec.get('steps')} steps); memory: peak "
            f"of {rec.get('memory_steps')} steps, a fresh process per variant "
            f"(ratio of peak resident memory to the plain model's). Time cells: "
            f"ratio (interquartile range of the per-round ratios). "
            f"Command: {cmd}" + (f"; plot: `{d['plot']}`" if d.get("plot") else ""),
            "", "| model | library | " + " | ".join(
                f"{v} time" for v in VARIANTS[1:]) + " | " + " | ".join(
                f"{v} memory" for v in VARIANTS[1:]) + " | load (or error) |",
            "|---|---|" + "---|" * (2 * len(VARIANTS) - 1)]
    for name, libs in models.items():
        for lib, r in libs.items():
            t, m = r.get("time_ratio") or {}, r.get("memory_ratio") or {}
            iqr = (r.get("time") or {}).get("ratio_iqr") or {}
            cells = [f"{t[v]:.3f}x" + (f" ({iqr[v][0]:.2f}-{iqr[v][1]:.2f})" if v in iqr
                                       else "") if v in t else "n/a"
                     for v in VARIANTS[1:]]
            cells += [f"{m[v]:.3f}x" if v in m else "n/a" for v in VARIANTS[1:]]
            load = (r.get("time") or {}).get("load_average")
            err = (r.get("time") or {}).get("error")
            last = f"error: {err[:60]}" if err else (load[0] if load else "n/a")
            out.append(f"| {name} | {lib} | " + " | ".join(cells) + f" | {last} |")
    return out + ["", _verdicts(models), ""]


def _overhead_mb(lib_result: dict, variant: str) -> float | None:
    """Peak memory of `variant` minus the plain model's, in MB."""
    memory = lib_result.get("memory") or {}
    for key in ("gpu_peak_mb", "peak_rss_mb"):
        base, value = (memory.get(v, {}).get(key) for v in ("plain", variant))
        if base is not None and value is not None:
            return value - base
    return None


def _verdicts(models: dict) -> str:
    """Issue 17's goals, row by row, for tfaccel against tfmot."""
    lines = []
    for name, libs in models.items():
        ours = (libs.get("tfaccel") or {})
        peer = (libs.get("tfmot") or {})
        t, pt = ours.get("time_ratio") or {}, peer.get("time_ratio") or {}
        parts = []
        for variant, goal in (("qat", 1.25), ("prune", 1.03)):
            if variant not in t:
                continue
            ok = t[variant] <= goal and (variant not in pt or t[variant] <= pt[variant])
            parts.append(f"{variant} time {'met' if ok else 'not met'}")
        extra, peer_extra = _overhead_mb(ours, "qat"), _overhead_mb(peer, "qat")
        if extra is not None and peer_extra is not None:
            ok = extra <= peer_extra
            parts.append(f"qat memory {'met' if ok else 'not met'} "
                         f"(+{extra:.0f} MB over plain; tfmot +{peer_extra:.0f} MB)")
        lines.append(f"{name}: " + ", ".join(parts))
    return ("Goals (issue 17: QAT ≤ 1.25x, pruning ≤ 1.03x, each at or below "
            "tfmot's; QAT peak-memory overhead over plain, in MB, at or below "
            "tfmot's; the two libraries' plain models differ, tf_keras against "
            "Keras 3): " + "; ".join(lines) + ".")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too (and the plot next to it)")
    parser.add_argument("--quick", action="store_true",
                        help="digits CNN and MobileNetV2 a0.35, few rounds")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--libs", default=",".join(LIBS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=12)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--merge", action="store_true",
                        help="keep the models of --out that this run does not measure")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, lib, name, *rest = args.worker
        if kind == "time":
            out = worker_time(lib, name, rest, args.repeats, args.steps)
        else:
            out = worker_memory(lib, name, rest[0], args.memory_steps)
        print(json.dumps(out, default=common._jsonable))
        return out
    models = QUICK_MODELS if args.quick else tuple(args.models.split(","))
    if args.quick:
        args.repeats, args.steps, args.memory_steps = 3, 5, 4
    variants = args.variants.split(",")
    log = common.Clock("qat_sweep")
    result: dict = {"benchmark": "qat_sweep", "command": common.command_line(),
                    "env": common.env_info(), "gpu_mixed_float16": _gpu(),
                    "recipe": {"batch": BATCH, "prune": f"{SPARSITY:.0%} constant",
                               "time": common.OVERHEAD_HOW,
                               "repeats": args.repeats, "steps": args.steps,
                               "memory_steps": args.memory_steps},
                    "models": {}}
    result["commands"] = [result["command"]]
    if args.merge and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            previous = json.load(f)
        kept = {m: r for m, r in previous.get("models", {}).items() if m not in models}
        result["models"].update(kept)
        result["merged_models"] = sorted(kept)
        result["commands"] = [*previous.get("commands", [previous.get("command")]),
                              result["command"]]
        if previous.get("note"):  # the record of which row was measured when
            result["note"] = previous["note"]
    for name in models:
        per_lib = result["models"].setdefault(name, {})
        for lib in args.libs.split(","):
            common_args = ["--repeats", str(args.repeats), "--steps", str(args.steps),
                           "--memory-steps", str(args.memory_steps)]
            timing = _run_worker(["time", lib, name, *variants, *common_args], lib,
                                 args.timeout)
            memory = {v: _run_worker(["memory", lib, name, v, *common_args], lib,
                                     args.timeout) for v in variants}
            key = "gpu_peak_mb" if result["gpu_mixed_float16"] else "peak_rss_mb"
            base = memory.get("plain", {}).get(key)
            per_lib[lib] = {
                "time": timing, "time_ratio": timing.get("ratio", {}),
                "memory": memory,
                "memory_ratio": {v: round(m[key] / base, 3) for v, m in memory.items()
                                 if base and key in m},
            }
            log(f"{name} {lib}: time {per_lib[lib]['time_ratio'] or timing} "
                f"memory {per_lib[lib]['memory_ratio']}")
            if args.out:  # what is measured so far survives an interrupted run
                common.emit({**result, "partial": True}, args.out, quiet=True)
    result["elapsed_s"] = log.elapsed()
    if args.out:
        result["plot"] = os.path.relpath(
            plot(result, os.path.splitext(args.out)[0] + ".png"), common.ROOT)
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
