"""Shared pieces of the benchmarks: data, the digits CNN, timing, TFLite, env.

This module must work in two kinds of processes: the tfaccel benchmarks
(Keras 3) and the tfmot peer (`TF_USE_LEGACY_KERAS=1`, `tf_keras`). So it
imports no Keras at module level; the model builders take the Keras module
to build with (`keras` or `tf_keras`), and the step timer takes the
callback base class of that Keras.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")

# The recipe every digits figure uses, on both sides (tfaccel and tfmot).
BATCH = 32
DENSE_EPOCHS = 10
PRUNE_EPOCHS = 10
# The sparsity ramp ends after 8 of the 10 fine-tune epochs (2 to recover),
# with a mask update twice per epoch: with 44 steps per epoch tfmot's default
# frequency=100 would update the masks only 3 times (its issues #973/#975).
PRUNE_RAMP_EPOCHS = 8
QAT_EPOCHS = 3
QAT_LR = 1e-4
LR = 1e-3
TARGET_SPARSITY = 0.8
SEEDS = (0, 1, 2)
# MobileNetV2 at 96x96 (alpha 1.0, 1000 classes, weights=None): the full
# topology and parameter count (3.5M) while each conversion stays < 1 min on
# 2 cores. Latency is measured on this size too.
MOBILENET_INPUT = (96, 96, 3)
# Timed float32 / QAT conversions of MobileNetV2 (after one untimed float32
# warm-up conversion); each costs ~15-60 s here, the minimum is reported.
CONVERT_REPEATS = 1


OVERHEAD_HOW = (
    "model.fit, 1 epoch of `steps_per_round` batches per round, per-step wall time "
    "from on_train_batch_begin to on_train_batch_end (first step of each fit "
    "dropped); rounds alternate between the models with rotating order; ratio = "
    "median over rounds of (median step / float median step in the same round)")


def recipe() -> dict[str, str]:
    """The digits recipe, recorded in every result."""
    return {
        "data": "sklearn load_digits /16, permutation seed 0, 1400 train / 397 test",
        "model": "Conv2D(8,3,same,no bias)-BN-ReLU, Conv2D(16)-BN-ReLU, Flatten, Dense(10)",
        "dense": f"Adam {LR}, batch {BATCH}, {DENSE_EPOCHS} epochs",
        "pruning": (f"PolynomialDecay {prune_schedule_args(1400)}, "
                    f"{PRUNE_EPOCHS}-epoch fine-tune, Adam {LR}"),
        "qat": f"from the dense model, Adam {QAT_LR}, {QAT_EPOCHS} epochs",
        "ptq": "converter full int8 (TFLITE_BUILTINS_INT8, int8 I/O), 256 "
               "representative training samples",
        "mobilenet": (f"MobileNetV2 alpha 1.0, input {MOBILENET_INPUT}, weights=None, "
                      "1000 classes; 16 uniform[-1,1] images as representative "
                      "data (sizes, conversion time and latency only)"),
    }


def load_digits_split(split: int = 1400, seed: int = 0):
    """scikit-learn's real 8x8 digits as NHWC float32 in [0, 1].

    The same permutation as `tests/tiny_models.load_digits_split`.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:split], y[:split], x[split:], y[split:]


def steps_per_epoch(n: int, batch: int = BATCH) -> int:
    return int(np.ceil(n / batch))


def prune_schedule_args(n_train: int) -> dict[str, int | float]:
    """PolynomialDecay arguments shared by tfaccel and tfmot runs."""
    spe = steps_per_epoch(n_train)
    return {
        "initial_sparsity": 0.0,
        "final_sparsity": TARGET_SPARSITY,
        "begin_step": 0,
        "end_step": spe * PRUNE_RAMP_EPOCHS,
        "frequency": max(1, spe // 2),
    }


def make_cnn(keras_module: Any = None, filters: Sequence[int] = (8, 16),
             units: int = 10, name: str = "digits_cnn"):
    """The digits CNN: Conv(8)-BN-ReLU, Conv(16)-BN-ReLU, Flatten, Dense logits.

    Args:
        keras_module: `keras` (Keras 3, default) or `tf_keras`.
    """
    if keras_module is None:
        import keras as keras_module
    k = keras_module
    inputs = k.Input((8, 8, 1))
    x = inputs
    for f in filters:
        x = k.layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = k.layers.BatchNormalization()(x)
        x = k.layers.ReLU()(x)
    x = k.layers.Flatten()(x)
    outputs = k.layers.Dense(units)(x)
    return k.Model(inputs, outputs, name=name)


def compile_classifier(model, keras_module: Any = None, lr: float = LR):
    if keras_module is None:
        import keras as keras_module
    model.compile(
        optimizer=keras_module.optimizers.Adam(lr),
        loss=keras_module.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x, y) -> float:
    logits = model.predict(x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(logits, -1) == y))


# --------------------------------------------------------------------------
# Interleaved timing.


def interleaved_step_times(
    runners: Sequence[tuple[str, Callable[[], Sequence[float]]]],
    repeats: int = 15,
    warmup: int = 1,
) -> dict[str, Any]:
    """Times two or more training setups side by side, alternating.

    Each runner is a `(name, run_round)` pair; `run_round()` runs a batch of
    training steps and returns the seconds each step took. Rounds alternate
    between runners (the order rotates every round so no runner always goes
    first), so slow drifts of a shared, busy machine hit every runner alike.
    The first runner is the baseline: for each round the ratio of every
    runner's median step time to the baseline's median in that same round is
    taken, and the median of those per-round ratios is reported.

    Example:

    >>> import time
    >>> fast = ("fast", lambda: [time.sleep(0.001) or 0.001] * 3)
    >>> slow = ("slow", lambda: [time.sleep(0.001) or 0.002] * 3)
    >>> r = interleaved_step_times([fast, slow], repeats=3, warmup=0)
    >>> r["ratio"]["slow"]
    2.0

    Args:
        runners: `(name, run_round)` pairs; the first is the baseline.
        repeats: timed rounds per runner.
        warmup: untimed rounds per runner first (tracing, caches).

    Returns:
        A dict with `median_step_s` (name -> median of all its step times),
        `ratio` (name -> median of per-round ratios to the baseline),
        `ratio_iqr` (name -> [25th, 75th] percentile of those ratios),
        `repeats` and `steps` (name -> number of timed steps).
    """
    if len(runners) < 2:
        raise ValueError(
            f"interleaved_step_times needs at least 2 runners. Received: {len(runners)}"
        )
    names = [n for n, _ in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"Runner names must be unique. Received: {names}")
    for _ in range(warmup):
        for _, run in runners:
            run()
    times: dict[str, list[float]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(runners)
        for name, run in list(runners[k:]) + list(runners[:k]):
            step_times = [float(t) for t in run()]
            if not step_times:
                raise ValueError(f"Runner {name!r} returned no step times.")
            times[name].extend(step_times)
            round_medians[name].append(statistics.median(step_times))
    base = names[0]
    ratios = {
        n: [m / b for m, b in zip(round_medians[n], round_medians[base])]
        for n in names
    }
    return {
        "baseline": base,
        "median_step_s": {n: statistics.median(times[n]) for n in names},
        "ratio": {n: round(statistics.median(ratios[n]), 4) for n in names},
        "ratio_iqr": {
            n: [round(float(q), 4) for q in np.percentile(ratios[n], [25, 75])]
            for n in names
        },
        "repeats": repeats,
        "steps": {n: len(times[n]) for n in names},
    }


def make_step_timer(callback_base: type) -> Any:
    """A callback recording wall time from batch begin to batch end.

    `callback_base` is `keras.callbacks.Callback` or
    `tf_keras.callbacks.Callback`. Put it FIRST in the callbacks list, so the
    time includes what the other callbacks do per batch (tfmot's
    `UpdatePruningStep` for instance).
    """

    class StepTimer(callback_base):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []
            self._t0 = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._t0)

    return StepTimer()


def fit_round(model, x, y, callback_base: type, steps: int = 20,
              batch: int = BATCH, callbacks: Sequence[Any] = ()):
    """A `run_round` for `interleaved_step_times` that times `model.fit` steps.

    Each call runs one epoch of `steps` batches with `fit` (callbacks and
    all) and returns the per-step times.
    """
    x = x[: steps * batch]
    y = y[: steps * batch]

    def run() -> list[float]:
        timer = make_step_timer(callback_base)
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False,
                  callbacks=[timer, *callbacks])
        # The first step of a fit call pays the data-iterator start-up.
        return timer.times[1:] or timer.times

    return run


# --------------------------------------------------------------------------
# TFLite files.


def convert_keras(model, mode: str = "float32", representative=None,
                  int8_io: bool = True) -> bytes:
    """TFLite bytes of a Keras (3 or tf_keras) model with the TF converter.

    Args:
        mode: `"float32"` (no optimization), `"qat"` (`Optimize.DEFAULT` on a
            model carrying FakeQuant ops, no representative data) or `"ptq"`
            (the converter's post-training full int8 from `representative`).
        int8_io: int8 input/output tensors for `"qat"`/`"ptq"`.
    """
    import tensorflow as tf

    if mode not in ("float32", "qat", "ptq"):
        raise ValueError(f"mode must be float32, qat or ptq. Received: mode={mode!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode in ("qat", "ptq"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    if mode == "ptq":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        samples = np.asarray(representative, dtype="float32")

        def gen():
            for sample in samples:
                yield [sample[None]]

        converter.representative_dataset = gen
    return converter.convert()


def gzip_size(path_or_bytes: str | bytes) -> int:
    """Size in bytes after gzip -9 (how a sparse file compresses)."""
    if isinstance(path_or_bytes, str):
        with open(path_or_bytes, "rb") as f:
            path_or_bytes = f.read()
    return len(gzip.compress(path_or_bytes, compresslevel=9, mtime=0))


def write_bytes(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def file_sizes(path: str) -> dict[str, int]:
    return {"bytes": os.path.getsize(path), "gzip_bytes": gzip_size(path)}


def run_tflite(path: str, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Runs a TFLite file on `x` one sample at a time; float outputs.

    Quantized inputs/outputs are (de)quantized with the file's own scales.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    shape = list(inp["shape"])
    shape[0] = 1
    interp.resize_tensor_input(inp["index"], shape)
    interp.allocate_tensors()
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    results = []
    for sample in x:
        s = sample[None].astype("float32")
        if np.issubdtype(inp["dtype"], np.integer) and in_scale:
            info = np.iinfo(inp["dtype"])
            s = np.clip(np.round(s / in_scale + in_zero), info.min, info.max)
        interp.set_tensor(inp["index"], s.astype(inp["dtype"]))
        interp.invoke()
        o = interp.get_tensor(out["index"])
        if np.issubdtype(out["dtype"], np.integer) and out_scale:
            o = (o.astype("float32") - out_zero) * out_scale
        results.append(o[0].astype("float32"))
    return np.stack(results)


def tflite_accuracy(path: str, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(run_tflite(path, x), -1) == y))


def tflite_io_types(path: str) -> dict[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    return {
        "input": np.dtype(interp.get_input_details()[0]["dtype"]).name,
        "output": np.dtype(interp.get_output_details()[0]["dtype"]).name,
    }


def tflite_latency(path: str, threads: int, runs: int = 30,
                   warmup: int = 5) -> dict[str, float]:
    """Median single-image latency (ms) with ai_edge_litert (XNNPACK on)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    if np.issubdtype(inp["dtype"], np.integer):
        info = np.iinfo(inp["dtype"])
        data = rng.integers(info.min, info.max, size=inp["shape"]).astype(inp["dtype"])
    else:
        data = rng.random(inp["shape"], dtype=np.float32)
    interp.set_tensor(inp["index"], data)
    for _ in range(warmup):
        interp.invoke()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(statistics.median(samples), 3),
            "min_ms": round(min(samples), 3), "threads": threads, "runs": runs}


def tflite_op_summary(path: str) -> dict[str, int]:
    """Counts of the builtin ops in a TFLite file, keyed like 'CONV_2D/int8'."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    counts: dict[str, int] = {}
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    for op in interp._get_ops_details():  # noqa: SLF001 - only public way to list ops
        dtype = "?"
        if len(op["inputs"]):
            first = tensors.get(int(op["inputs"][0]))
            if first is not None:
                dtype = np.dtype(first["dtype"]).name
        key = f"{op['op_name']}/{dtype}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def weight_sparsity(weights: Sequence[np.ndarray]) -> float:
    """Fraction of exact zeros over a list of kernels."""
    total = sum(w.size for w in weights)
    zeros = sum(int(np.sum(w == 0)) for w in weights)
    return zeros / total if total else 0.0


# --------------------------------------------------------------------------
# Environment and output.


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info() -> dict[str, Any]:
    """The machine and the versions a figure was measured with."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
            text=True, timeout=10, check=False,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in ("tensorflow", "keras", "tf_keras",
                      "tensorflow-model-optimization", "ai-edge-litert", "numpy",
                      "scikit-learn", "tfaccel")
        },
        "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
        # 1/5/15-minute load: timings on a shared machine need this context.
        "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "git_commit": commit,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def command_line() -> str:
    """The command that produced this run, relative to the repo root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join([".venv/bin/python", script, *sys.argv[1:]])


def emit(result: dict[str, Any], out: str | None, quiet: bool = False) -> None:
    """Prints `result` as one JSON object (unless `quiet`) and writes it to
    `out` if given (a temporary file renamed over it: never half-written)."""
    if hasattr(os, "getloadavg"):
        result.setdefault("loadavg_end", [round(v, 2) for v in os.getloadavg()])
    text = json.dumps(result, indent=2, sort_keys=False, default=_jsonable)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = f"{out}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, out)
    if not quiet:
        print(text, flush=True)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON serializable: {type(value).__name__}")


class Clock:
    """Prints progress to stderr (stdout is kept for the JSON)."""

    def __init__(self, name: str):
        self.name = name
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{self.name} {time.perf_counter() - self.t0:7.1f}s] {msg}",
              file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.t0, 1)


def error_record(e: BaseException) -> dict[str, str]:
    """The JSON record of a failure being handled: its first 500 characters
    and the end of the current traceback."""
    return {"error": f"{type(e).__name__}: {str(e)[:500]}",
            "traceback": traceback.format_exc()[-2000:]}


def mean_sd(mean: dict, std: dict, key: str, kind: str = "pct") -> str:
    """`mean[key] (± std[key])` as a percentage, or as points (`kind="pts"`,
    already in points); "n/a" when `key` was not measured."""
    v, s_ = mean.get(key), std.get(key)
    if v is None:
        return "n/a"
    if kind == "pts":
        return f"{v:+.2f} pts (± {s_:.2f})"
    return f"{100 * v:.2f}% (± {100 * s_:.2f})"


def guard_section(name: str, fn, result: dict, log) -> None:
    """`result[name] = fn()`; a failure is recorded there instead of raised,
    so one failed section does not hide the others."""
    try:
        result[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failed section must not hide the rest
        log(f"section {name} failed: {type(e).__name__}: {e}")
        result[name] = error_record(e)


def merge_sections(path: str, fresh: dict, sections: list[str]) -> dict:
    """`fresh`'s sections written over the JSON at `path`, the rest kept.

    Each merged section records the command, machine state and time of the
    run that produced it (`section_runs`), so figures measured at different
    times stay attributable.
    """
    try:
        with open(path) as f:
            merged = json.load(f)
    except (OSError, ValueError):
        return fresh
    runs = dict(merged.get("section_runs") or {})
    env = dict(fresh["env"])
    if hasattr(os, "getloadavg"):
        env["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    for name in sections:
        if name in fresh:
            merged[name] = fresh[name]
            runs[name] = {"command": fresh["command"], "env": env,
                          "elapsed_s": fresh["elapsed_s"]}
    merged["section_runs"] = runs
    return merged


SECTIONS = ("digits", "overhead", "mobilenet")


def run_sections(name: str, doc: str, argv, *, digits_seed: Callable,
                 overhead: Callable, mobilenet: Callable,
                 mean_keys: Sequence[str]) -> dict:
    """The command line of a Keras 3 benchmark with `SECTIONS` (pruning, qat).

    `digits_seed(data, seed, workdir, log) -> (row, dense model)` runs per
    seed (one seed when only the overhead section needs a dense model);
    `overhead(data, dense, repeats, steps, log)` and `mobilenet(log)` return
    their sections. Each section is guarded, `--merge` keeps the sections not
    run, and the JSON goes to stdout (and `--out`).
    """
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--repeats", type=int, default=121,
                        help="interleaved timing rounds (overhead section)")
    parser.add_argument("--steps", type=int, default=40,
                        help="timed train steps per round (overhead section)")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the sections run in the existing --out "
                             "JSON, keeping the others (re-measure one section)")
    args = parser.parse_args(argv)
    if args.merge and not args.out:
        parser.error("--merge needs --out (the JSON to merge into).")
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections must be among {SECTIONS}. Received: {sorted(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    log = Clock(name)
    result: dict = {"benchmark": name, "command": command_line(),
                    "env": env_info(), "recipe": recipe()}
    data = load_digits_split()
    dense_holder: list = []

    def digits():
        rows = []
        with tempfile.TemporaryDirectory() as workdir:
            for seed in (seeds if "digits" in sections else seeds[:1]):
                row, dense = digits_seed(data, seed, workdir, log)
                rows.append(row)
                dense_holder.append(dense)
        return {"seeds": rows, "mean": {k: round(statistics.mean(r[k] for r in rows), 5)
                                        for k in mean_keys}}

    if "digits" in sections or "overhead" in sections:
        guard_section("digits", digits, result, log)
        if "digits" not in sections:
            result.pop("digits", None)
    if "overhead" in sections:
        if dense_holder:
            guard_section("overhead", lambda: overhead(data, dense_holder[0], args.repeats,
                                                       args.steps, log), result, log)
        else:
            result["overhead"] = {"error": "no trained dense model (digits failed)"}
    if "mobilenet" in sections:
        guard_section("mobilenet", lambda: mobilenet(log), result, log)
    result["elapsed_s"] = log.elapsed()
    if args.merge:
        result = merge_sections(args.out, result, sections)
    emit(result, args.out)
    return result


def mobilenet_model(keras_module: Any = None):
    """The benchmarks' MobileNetV2: `(result dict, model, representative batch)`.

    alpha 1.0 at `MOBILENET_INPUT`, 1000 classes, `weights=None` (seed 0), and
    16 uniform [-1, 1) inputs, passed once with `training=True` so the BN
    statistics are not degenerate. `keras_module`: `keras` (default) or
    `tf_keras`.
    """
    if keras_module is None:
        import keras as keras_module
    shape = MOBILENET_INPUT
    res: dict = {"input_shape": list(shape), "alpha": 1.0, "classes": 1000,
                 "weights": None}
    rng = np.random.default_rng(0)
    representative = rng.uniform(-1, 1, size=(16, *shape)).astype("float32")
    keras_module.utils.set_random_seed(0)
    model = keras_module.applications.MobileNetV2(input_shape=shape, weights=None)
    res["params"] = int(model.count_params())
    model(representative, training=True)
    return res, model, representative
