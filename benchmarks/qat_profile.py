"""Where a QAT train step spends its time: TF profiler, op types, per step.

Builds `keras.applications.ResNet50(weights=None)` at 64x64 (batch 16,
1000 classes; `--model` picks another: `resnet50_128`, `mobilenetv2_0.35`
or `mobilenetv2_1.0` at 96x96) and its QAT copies (`--foldings`, default
`bn_folding="moving"` and `"batch"`),
times one compiled train step of each (interleaved rounds, median per-step
wall time), then records a few steps of each under
`tf.profiler.experimental.start/stop` and reads the trace with TF's own
converter (`framework_op_stats`, no TensorBoard plugin needed): self time
per op type per step, plain vs QAT. Shares survive machine load better
than absolute times; the load average is recorded.

Usage:

    .venv/bin/python benchmarks/qat_profile.py --out benchmarks/results/qat_profile.json

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BATCH = 16
MODELS = ("resnet50_64", "resnet50_128", "mobilenetv2_0.35", "mobilenetv2_1.0")


def build_model(name: str):
    """`resnet50_<side>` or `mobilenetv2_<alpha>` (96x96), weights=None, seed 0."""
    import keras

    keras.utils.set_random_seed(0)
    family, size = name.split("_")
    if family == "resnet50":
        side = int(size)
        return keras.applications.ResNet50(weights=None, input_shape=(side, side, 3))
    return keras.applications.MobileNetV2(
        weights=None, alpha=float(size), input_shape=(96, 96, 3))


def _models(name: str, foldings):
    import keras

    import tfaccel

    plain = build_model(name)
    models = {"plain": plain}
    for folding in foldings:
        models[f"qat_{folding}"] = tfaccel.quantize(plain, bn_folding=folding)
    for model in models.values():
        model.compile(optimizer=keras.optimizers.SGD(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy())
    return models


def _step_times(models, x, y, rounds: int, steps: int) -> dict:
    """Interleaved rounds of `train_on_batch` steps (`common.interleaved_step_times`:
    the median of per-round ratios to the plain model)."""

    def runner(model):
        def run():
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                model.train_on_batch(x, y)
                times.append(time.perf_counter() - t0)
            return times

        return run

    return common.interleaved_step_times(
        [(name, runner(model)) for name, model in models.items()],
        repeats=rounds, warmup=1)


def _op_stats(model, x, y, steps: int, logdir: str) -> dict[str, float]:
    """Self time (ms per step) by op type, host ops of the train function."""
    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        model.train_on_batch(x, y)
    tf.profiler.experimental.stop()
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    data, ok = plugin.xspace_to_tools_data(paths[-1:], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(data.decode()[:200])
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    kind, self_us = cols.index("type"), cols.index("total_self_time")
    out: dict[str, float] = {}
    for row in table["rows"]:
        values = [c["v"] for c in row["c"]]
        if values[kind] == "IDLE":
            continue
        out[values[kind]] = out.get(values[kind], 0.0) + values[self_us] / 1e3 / steps
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="profiled steps per model; 0 times only")
    parser.add_argument("--model", choices=MODELS, default="resnet50_64")
    parser.add_argument("--foldings", default="moving,batch")
    args = parser.parse_args(argv)
    log = common.Clock("qat_profile")
    result: dict = {"benchmark": "qat_profile", "command": common.command_line(),
                    "env": common.env_info(),
                    "recipe": {"model": f"{args.model} weights=None, 1000 classes",
                               "batch": BATCH, "step": "train_on_batch, SGD 1e-3"}}
    models = _models(args.model, args.foldings.split(","))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (BATCH, *models["plain"].input_shape[1:])).astype("float32")
    y = rng.integers(0, 1000, BATCH).astype("int32")
    log("models built")
    timing = _step_times(models, x, y, args.rounds, args.steps)
    result["median_step_s"] = {k: round(v, 4) for k, v in timing["median_step_s"].items()}
    result["ratio_vs_plain"] = timing["ratio"]
    result["ratio_iqr"] = timing["ratio_iqr"]
    result["load_average_after_timing"] = [round(v, 2) for v in os.getloadavg()]
    log(f"step ratios {result['ratio_vs_plain']} (load {os.getloadavg()[0]:.1f})")
    if args.profile_steps < 1:
        result["elapsed_s"] = log.elapsed()
        common.emit(result, args.out)
        return result
    stats = {}
    with tempfile.TemporaryDirectory() as logdir:
        for name, model in models.items():
            stats[name] = _op_stats(model, x, y, args.profile_steps,
                                    os.path.join(logdir, name))
            log(f"profiled {name}")
    kinds = sorted(set().union(*stats.values()),
                   key=lambda k: -max(s.get(k, 0.0) for s in stats.values()))
    result["self_ms_per_step"] = {
        k: {name: round(s.get(k, 0.0), 2) for name, s in stats.items()} for k in kinds}
    result["total_self_ms_per_step"] = {
        name: round(sum(s.values()), 1) for name, s in stats.items()}
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
