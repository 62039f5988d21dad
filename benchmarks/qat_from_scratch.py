"""tfaccel QAT from random initialization: moving- vs batch-statistics folding.

For each seed, on scikit-learn's real digits, from one random initialization
of the digits CNN (the same weights for every variant):

1. **float**: fit the float model (Adam 1e-3, batch 32, 10 epochs);
2. **QAT, moving fold**: `quantize(init, bn_folding="moving")` (BatchNorm
   folded with its moving statistics in training too) and the same fit;
3. **QAT, batch fold**: `quantize(init, bn_folding="batch",
   bn_freeze_step=80% of the steps)` (Jacob et al. 2018: batch statistics,
   then the exact int8 computation for the last 20%) and the same fit.

No calibration: the QAT models start from random weights, their first
training batch sets the activation ranges. Each QAT model is exported with
`tfaccel.export_tflite(..., quantization="int8")` (int8 input/output) and
scored with `tfaccel.export.run_tflite`: int8 file accuracy minus the float
model's (goal: within 1 point) and top-1 agreement of the file with the QAT
Keras model (goal: 100%). The same is repeated on inputs scaled by 1e6
(`--scales`), where issue 17 saw the moving fold collapse.

Usage:

    .venv/bin/python benchmarks/qat_from_scratch.py --out benchmarks/results/qat_from_scratch.json

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

SEEDS = (0, 1, 2)
SCALES = (1.0, 1e6)
EPOCHS = common.DENSE_EPOCHS
FREEZE_FRACTION = 0.8
FOLDINGS = ("moving", "batch")
_INT8_IO = {"input_type": "int8", "output_type": "int8"}


def recipe() -> dict[str, str]:
    return {
        "data": common.recipe()["data"] + "; inputs multiplied by each scale",
        "model": common.recipe()["model"],
        "float": f"random init (seed), Adam {common.LR}, batch {common.BATCH}, "
                 f"{EPOCHS} epochs",
        "qat": f"quantize(the same init, bn_folding=...) without calibration, the "
               f"same fit; batch fold freezes after {FREEZE_FRACTION:.0%} of the steps",
        "int8": "export_tflite int8 with int8 I/O; accuracy of the file on the 397 test "
                "digits (run_tflite); agreement = top-1 of file vs QAT Keras model",
    }


def _int8(model, path: str, x_test, y_test) -> dict:
    import tfaccel
    from tfaccel.export import run_tflite

    tfaccel.export_tflite(model, path, quantization="int8", **_INT8_IO)
    logits = np.asarray(run_tflite(path, x_test))
    keras_top1 = np.argmax(np.asarray(model.predict(x_test, verbose=0)), -1)
    return {
        "acc": float(np.mean(np.argmax(logits, -1) == y_test)),
        "agreement": float(np.mean(np.argmax(logits, -1) == keras_top1)),
    }


def digits_seed(data, seed: int, scale: float, workdir: str, log) -> dict:
    import keras

    import tfaccel

    x_train, y_train, x_test, y_test = data
    x_train, x_test = x_train * scale, x_test * scale
    fit = {"batch_size": common.BATCH, "epochs": EPOCHS, "verbose": 0}
    res: dict = {"seed": seed, "scale": scale}

    keras.utils.set_random_seed(seed)
    init = common.make_cnn(keras).get_weights()

    def fresh():
        model = common.make_cnn(keras)
        model.set_weights(init)
        return model

    keras.utils.set_random_seed(100 + seed)
    float_model = common.compile_classifier(fresh(), keras)
    float_model.fit(x_train, y_train, **fit)
    res["float_acc"] = common.accuracy(float_model, x_test, y_test)
    steps = common.steps_per_epoch(len(x_train)) * EPOCHS
    for folding in FOLDINGS:
        keras.utils.set_random_seed(100 + seed)
        freeze = int(FREEZE_FRACTION * steps) if folding == "batch" else None
        qat = tfaccel.quantize(fresh(), bn_folding=folding, bn_freeze_step=freeze)
        common.compile_classifier(qat, keras)
        qat.fit(x_train, y_train, **fit)
        res[f"{folding}_qat_keras_acc"] = common.accuracy(qat, x_test, y_test)
        try:
            out = _int8(qat, os.path.join(workdir, f"{folding}_{seed}.tflite"),
                        x_test, y_test)
        except Exception as e:  # noqa: BLE001 - a collapsed model may not convert
            log(f"seed {seed} scale {scale:g} {folding}: export failed: {e}")
            out = {"acc": None, "agreement": None, "error": str(e)[:300]}
        res[f"{folding}_int8_acc"] = out["acc"]
        res[f"{folding}_agreement"] = out["agreement"]
        res[f"{folding}_int8_minus_float_points"] = (
            None if out["acc"] is None
            else round(100 * (out["acc"] - res["float_acc"]), 3))
    log(f"seed {seed} scale {scale:g}: float {res['float_acc']:.4f} | int8 moving "
        f"{res['moving_int8_acc']} batch {res['batch_int8_acc']} | agreement "
        f"{res['moving_agreement']} / {res['batch_agreement']}")
    keras.backend.clear_session()
    return res


MEAN_KEYS = (
    "float_acc",
    *(f"{f}_{k}" for f in FOLDINGS
      for k in ("int8_acc", "qat_keras_acc", "agreement", "int8_minus_float_points")),
)


def summarize(rows: list[dict]) -> dict:
    def values(k):
        return [r[k] for r in rows if r.get(k) is not None]

    mean = {k: round(statistics.mean(values(k)), 5) if values(k) else None
            for k in MEAN_KEYS}
    std = {k: round(statistics.stdev(values(k)), 5) if len(values(k)) > 1 else 0.0
           for k in MEAN_KEYS}
    return {"mean": mean, "stdev": std}


def render_qat_from_scratch(d: dict) -> list[str]:
    """Markdown lines of the BENCHMARKS.md section (used by run_all.py)."""
    out = ["## QAT from random initialization: moving vs batch BatchNorm folding", ""]
    cmd = ("`.venv/bin/python benchmarks/qat_from_scratch.py "
           "--out benchmarks/results/qat_from_scratch.json`")
    scales = (d or {}).get("scales") or {}
    if not scales:
        return out + [f"n/a (not run): {cmd}", ""]
    rec = d.get("recipe", {})
    out += [f"Digits CNN, the same random initialization for every variant; float: "
            f"{rec.get('float')}; QAT: {rec.get('qat')}. Mean (± sd) over seeds; "
            "differences paired by seed.", "",
            "| input scale | float accuracy | folding | int8 file accuracy | "
            "int8 - float | agreement file vs QAT Keras |", "|---|---|---|---|---|---|"]
    for scale, g in scales.items():
        if "mean" not in g:
            out.append(f"| {scale} | n/a ({(g.get('error') or '')[:80]}) | | | | |")
            continue
        mean, std = g["mean"], g["stdev"]

        def ms(key, kind="pct", mean=mean, std=std):
            return common.mean_sd(mean, std, key, kind)

        for folding in FOLDINGS:
            out.append(f"| {scale} | {ms('float_acc')} | {folding} | "
                       f"{ms(f'{folding}_int8_acc')} | "
                       f"{ms(f'{folding}_int8_minus_float_points', 'pts')} | "
                       f"{ms(f'{folding}_agreement')} |")
    out += ["", "Goals: int8 file within 1 point of float training (batch fold), "
            f"100% agreement. Reproduce: {cmd}; load average "
            f"{(d.get('env') or {}).get('loadavg')} at start -> "
            f"{d.get('loadavg_end')} at end.", ""]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES))
    # Accepted for run_all.py's --quick/--sections; this benchmark has one section.
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sections", default="digits", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    log = common.Clock("qat_from_scratch")
    result: dict = {"benchmark": "qat_from_scratch", "command": common.command_line(),
                    "env": common.env_info(), "recipe": recipe(), "scales": {}}
    data = common.load_digits_split()
    with tempfile.TemporaryDirectory() as workdir:
        for scale in (float(s) for s in args.scales.split(",") if s):
            rows: list[dict] = []
            try:
                for seed in seeds:
                    rows.append(digits_seed(data, seed, scale, workdir, log))
                result["scales"][f"{scale:g}"] = {"seeds": rows, **summarize(rows)}
            except Exception as e:  # noqa: BLE001 - report what ran, and the error
                log(f"scale {scale:g} failed: {type(e).__name__}: {e}")
                result["scales"][f"{scale:g}"] = {"seeds": rows,
                                                   **common.error_record(e)}
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
