"""tfaccel one-fit benchmark: prune 80% + QAT (+ distillation) in one `fit`.

For each seed, on scikit-learn's real digits, from the same dense digits CNN
(trained 10 epochs):

1. **three-phase**: `prune` (PolynomialDecay 0 -> 0.8, ramp over 8 epochs)
   and fit 10 epochs at Adam 1e-3; `strip_pruning`; `quantize` (256
   calibration samples) and fit 3 epochs at Adam 1e-4 (13 epochs in all);
2. **one fit**: `quantize(prune(dense, same schedule))` and one fit of the
   same 13 epochs, Adam 1e-3 then 1e-4 after epoch 10 (the same learning
   rates at the same steps);
3. **one fit + distillation**: the same with `tfaccel.distill(student,
   teacher=the dense model, temperature=2, alpha=0.5, cache_teacher=True)`.

Each is exported with `tfaccel.export_tflite(..., quantization="int8")`
(int8 input/output) and scored with `tfaccel.export.run_tflite`: int8 file
accuracy, the file's kernel sparsity (zero int8 weights of CONV_2D /
FULLY_CONNECTED kernels) and its int8 share of compute ops. Means and
sample standard deviations over seeds; the one-fit minus three-phase
difference is paired by seed.

Usage:

    .venv/bin/python benchmarks/one_fit.py --out benchmarks/results/one_fit.json

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SEEDS = (0, 1, 2, 3, 4)
TEMPERATURE = 2.0
ALPHA = 0.5
VARIANTS = ("three_phase", "one_fit", "one_fit_distilled")
_INT8_IO = {"input_type": "int8", "output_type": "int8"}


def recipe() -> dict[str, str]:
    total = common.PRUNE_EPOCHS + common.QAT_EPOCHS
    return {
        "data": common.recipe()["data"],
        "dense": common.recipe()["dense"],
        "schedule": f"PolynomialDecay {common.prune_schedule_args(1400)}",
        "three_phase": f"prune + fit {common.PRUNE_EPOCHS} epochs (Adam {common.LR}), "
                       f"strip_pruning, quantize + fit {common.QAT_EPOCHS} epochs "
                       f"(Adam {common.QAT_LR}): {total} epochs",
        "one_fit": f"quantize(prune(dense)) + one fit of {total} epochs, Adam "
                   f"{common.LR} then {common.QAT_LR} after epoch {common.PRUNE_EPOCHS}",
        "one_fit_distilled": f"the same inside tfaccel.distill(teacher=the dense model, "
                             f"temperature={TEMPERATURE}, alpha={ALPHA}, cache_teacher=True)",
        "int8": "export_tflite int8 with int8 I/O; accuracy of the file on the 397 test "
                "digits (run_tflite)",
    }


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _one_fit_optimizer(n_train: int):
    import keras

    boundary = common.steps_per_epoch(n_train) * common.PRUNE_EPOCHS
    lr = keras.optimizers.schedules.PiecewiseConstantDecay(
        [boundary], [common.LR, common.QAT_LR])
    return keras.optimizers.Adam(lr)


def _int8(model, path: str, x_test, y_test) -> dict:
    import tfaccel
    from tfaccel.export import run_tflite

    report = tfaccel.export_tflite(model, path, quantization="int8",
                                   verification_data=x_test, **_INT8_IO)
    logits = run_tflite(path, x_test)
    kernels = {k: v for k, v in report.tensor_sparsity.items()
               if "convolution" in k or "MatMul" in k}
    return {
        **common.file_sizes(path),
        "acc": float(np.mean(np.argmax(logits, -1) == y_test)),
        "agreement_vs_keras": report.agreement,
        "int8_share": report.int8_coverage,
        "kernel_sparsity": {k: round(v, 5) for k, v in kernels.items()},
        "kernel_sparsity_min": round(min(kernels.values()), 5) if kernels else None,
        "ops": report.ops,
    }


def digits_seed(data, seed: int, workdir: str, log) -> dict:
    import keras

    import tfaccel
    from tfaccel.schedules import PolynomialDecay

    x_train, y_train, x_test, y_test = data
    calibration = x_train[:256]
    res: dict = {"seed": seed}

    keras.utils.set_random_seed(seed)
    dense = common.compile_classifier(common.make_cnn(keras), keras)
    dense.fit(x_train, y_train, epochs=common.DENSE_EPOCHS, batch_size=common.BATCH,
              verbose=0)
    res["dense_acc"] = common.accuracy(dense, x_test, y_test)
    dense_weights = dense.get_weights()

    def fresh_dense():
        model = common.make_cnn(keras)
        model.set_weights(dense_weights)
        return model

    def schedule():
        return PolynomialDecay(**common.prune_schedule_args(len(x_train)))

    fit = {"batch_size": common.BATCH, "verbose": 0}
    total = common.PRUNE_EPOCHS + common.QAT_EPOCHS
    models = {}

    # 1. three phases: prune + fit, strip, quantize + fit.
    keras.utils.set_random_seed(100 + seed)
    pruned = common.compile_classifier(tfaccel.prune(fresh_dense(), schedule()), keras)
    pruned.fit(x_train, y_train, epochs=common.PRUNE_EPOCHS, **fit)
    qat = tfaccel.quantize(tfaccel.strip_pruning(pruned), calibration_data=calibration)
    common.compile_classifier(qat, keras, lr=common.QAT_LR)
    qat.fit(x_train, y_train, epochs=common.QAT_EPOCHS, **fit)
    models["three_phase"] = qat

    # 2. one fit: the schedule runs inside QAT.
    keras.utils.set_random_seed(100 + seed)
    one = tfaccel.quantize(tfaccel.prune(fresh_dense(), schedule()),
                           calibration_data=calibration)
    one.compile(optimizer=_one_fit_optimizer(len(x_train)), loss=_loss(),
                metrics=["accuracy"])
    one.fit(x_train, y_train, epochs=total, **fit)
    models["one_fit"] = one

    # 3. one fit inside a distiller, the dense model as teacher.
    keras.utils.set_random_seed(100 + seed)
    teacher = fresh_dense()
    teacher.trainable = False
    student = tfaccel.quantize(tfaccel.prune(fresh_dense(), schedule()),
                               calibration_data=calibration)
    distiller = tfaccel.distill(student, teacher, temperature=TEMPERATURE, alpha=ALPHA,
                                cache_teacher=True)
    distiller.compile(optimizer=_one_fit_optimizer(len(x_train)), loss=_loss())
    distiller.fit(x_train, y_train, epochs=total, **fit)
    models["one_fit_distilled"] = distiller.student

    for name, model in models.items():
        res[f"{name}_qat_keras_acc"] = common.accuracy(model, x_test, y_test)
        exported = _int8(model, os.path.join(workdir, f"{name}_{seed}.tflite"),
                         x_test, y_test)
        res[name] = exported
        res[f"{name}_int8_acc"] = exported["acc"]
        res[f"{name}_kernel_sparsity_min"] = exported["kernel_sparsity_min"]
        res[f"{name}_int8_share"] = exported["int8_share"]
    for name in ("one_fit", "one_fit_distilled"):
        res[f"{name}_minus_three_phase_points"] = round(
            100 * (res[f"{name}_int8_acc"] - res["three_phase_int8_acc"]), 3)
    log(f"seed {seed}: dense {res['dense_acc']:.4f} | int8 three-phase "
        f"{res['three_phase_int8_acc']:.4f} one-fit {res['one_fit_int8_acc']:.4f} "
        f"one-fit+distill {res['one_fit_distilled_int8_acc']:.4f} | sparsity "
        + ", ".join(f"{n} {res[f'{n}_kernel_sparsity_min']}" for n in VARIANTS))
    keras.backend.clear_session()
    return res


MEAN_KEYS = (
    "dense_acc",
    *(f"{n}_{k}" for n in VARIANTS
      for k in ("int8_acc", "qat_keras_acc", "kernel_sparsity_min", "int8_share")),
    "one_fit_minus_three_phase_points", "one_fit_distilled_minus_three_phase_points",
)


def summarize(rows: list[dict]) -> dict:
    mean = {k: round(statistics.mean(r[k] for r in rows), 5) for k in MEAN_KEYS}
    std = {k: round(statistics.stdev(r[k] for r in rows), 5) if len(rows) > 1 else 0.0
           for k in MEAN_KEYS}
    return {"mean": mean, "stdev": std}


_LABELS = {
    "three_phase": "three-phase: prune + fit, strip, quantize + fit",
    "one_fit": "one fit: quantize(prune(dense))",
    "one_fit_distilled": "one fit + distillation (dense teacher)",
}


def render_one_fit(d: dict) -> list[str]:
    """Markdown lines of the BENCHMARKS.md section (used by run_all.py)."""
    out = ["## One fit: prune 80% + QAT (+ distillation) vs three phases", ""]
    cmd = ("`.venv/bin/python benchmarks/one_fit.py "
           "--out benchmarks/results/one_fit.json`")
    g = (d or {}).get("digits") or {}
    if not d or "error" in g or "mean" not in g:
        why = "not run" if not d else (g.get("error") or "no result")
        return out + [f"n/a ({why.splitlines()[0][:120]}): {cmd}", ""]
    mean, std, n = g["mean"], g["stdev"], len(g["seeds"])

    def ms(key, kind="pct"):
        return common.mean_sd(mean, std, key, kind)

    rec = d.get("recipe", {})
    out += [f"Digits CNN from the same dense model (float {ms('dense_acc')}); "
            f"schedule {rec.get('schedule')}; three-phase: {rec.get('three_phase')}; "
            f"one fit: {rec.get('one_fit')}; distilled: {rec.get('one_fit_distilled')}. "
            f"Mean (± sd) over {n} seeds; differences paired by seed. Kernel "
            "sparsity is the least sparse CONV_2D / FULLY_CONNECTED int8 weight of "
            "the file; int8 share is the int8 fraction of its compute ops.", ""]
    rows = []
    for name in VARIANTS:
        delta = ("-" if name == "three_phase"
                 else ms(f"{name}_minus_three_phase_points", "pts"))
        rows.append([_LABELS[name], ms(f"{name}_int8_acc"), delta,
                     ms(f"{name}_qat_keras_acc"), ms(f"{name}_kernel_sparsity_min"),
                     ms(f"{name}_int8_share")])
    out += ["| variant | int8 file accuracy | vs three-phase | QAT Keras accuracy | "
            "kernel sparsity (min) | int8 share |", "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    goal = mean.get("one_fit_minus_three_phase_points")
    met = "n/a" if goal is None else ("yes" if goal >= -0.3 else "**no**")
    out += ["", f"Goal (one fit within 0.3 point of three-phase, int8 file): {met}. "
            f"Reproduce: {cmd}; load average {get_load(d)}.", ""]
    return out


def get_load(d: dict) -> str:
    start = (d.get("env") or {}).get("loadavg") or "n/a"
    return f"{start} at start -> {d.get('loadavg_end') or 'n/a'} at end"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    # Accepted for run_all.py's --quick/--sections; this benchmark has one section.
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sections", default="digits", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    log = common.Clock("one_fit")
    result: dict = {"benchmark": "one_fit", "command": common.command_line(),
                    "env": common.env_info(), "recipe": recipe()}
    data = common.load_digits_split()
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for seed in seeds:
                rows.append(digits_seed(data, seed, workdir, log))
        result["digits"] = {"seeds": rows, **summarize(rows)}
    except Exception as e:  # noqa: BLE001 - report what ran, and the error
        log(f"failed: {type(e).__name__}: {e}")
        result["digits"] = {"seeds": rows, **common.error_record(e)}
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
