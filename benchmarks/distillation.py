"""tfaccel distillation benchmark: digits student distilled vs alone, float and int8.

For each seed, on scikit-learn's real digits:

1. a teacher, the digits CNN with (8, 16) filters, trained 10 epochs;
2. a student, the same CNN with (1, 2) filters, trained 10 epochs alone on
   the labels and, from the *same* initial weights, with
   `tfaccel.distill(student, teacher, temperature=2, alpha=0.5,
   cache_teacher=True)`;
3. int8: each student is quantized (`tfaccel.quantize`, 256 calibration
   samples) and fine-tuned 3 epochs the way it was trained (alone: labels;
   distilled: the distiller around the quantized student), exported with
   `tfaccel.export_tflite(..., quantization="int8")` and scored with
   `tfaccel.export.run_tflite`;
4. the full pipeline on a student one would ship, the CNN with (4, 8)
   filters (about a third of the teacher): pruned with `PolynomialDecay(0 -> 0.8)`
   and distilled 10 epochs, stripped, quantized, a 3-epoch distilled QAT
   fine-tune, int8 export; accuracy vs the float teacher and file / gzip
   sizes of the teacher float32, student float32 and pipeline int8 files;
   the same pipeline pruning only the Dense layer, for reference.

5. few labels (`--sections few_labels`): the teacher learns from 700
   labelled training digits; the student's pool is the other 700, of which
   100 keep their labels and the teacher labels the other 600. The (4, 8)
   student, from the same initial weights, trains (a) alone on the 100
   labelled digits (repeated: the same number of steps), (b) on all 700
   with the teacher's hard labels for the rest
   (pseudo-labels, plain `fit`), (c) the same distilled (soft targets,
   `alpha=0.5`, `cache_teacher=True`); then each is quantized, fine-tuned
   3 epochs the same way and exported int8.

Figures are means over seeds, reported whichever way they point.

Usage:

    .venv/bin/python benchmarks/distillation.py --out benchmarks/results/distillation.json
    .venv/bin/python benchmarks/distillation.py --sections few_labels \
        --out benchmarks/results/distillation.json   # keeps the digits section

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TEACHER_FILTERS = (8, 16)
STUDENT_FILTERS = (1, 2)
# The full pipeline prunes 80% of the student's weights: its student must have
# weights to spare (the (1, 2) student's convolutions hold 27 weights in all).
PIPELINE_FILTERS = (4, 8)
EPOCHS = 10
QAT_EPOCHS = 3
TEMPERATURE = 2.0
ALPHA = 0.5
SEEDS = (0, 1, 2, 3, 4)
_INT8_IO = {"input_type": "int8", "output_type": "int8"}

MEAN_KEYS = (
    "teacher_acc", "alone_acc", "distilled_acc", "distilled_minus_alone_points",
    "alone_int8_acc", "distilled_int8_acc", "distilled_int8_minus_alone_int8_points",
    "pipeline_int8_acc", "pipeline_int8_minus_teacher_points",
    "pipeline_int8_minus_alone_points", "pipeline_kernel_sparsity",
    "pipeline_pruned_float_acc", "pipeline_dense_only_int8_acc",
    "pipeline_dense_only_int8_minus_teacher_points", "pipeline_dense_only_kernel_sparsity",
    "pipeline_dense_only_pruned_float_acc",
)


def recipe() -> dict[str, str]:
    return {
        "data": common.recipe()["data"],
        "teacher": f"digits CNN filters {TEACHER_FILTERS}, Adam {common.LR}, batch "
                   f"{common.BATCH}, {EPOCHS} epochs",
        "student": f"digits CNN filters {STUDENT_FILTERS}, same initial weights alone "
                   f"and distilled, Adam {common.LR}, batch {common.BATCH}, {EPOCHS} epochs",
        "distillation": f"tfaccel.distill(temperature={TEMPERATURE}, alpha={ALPHA}, "
                        "cache_teacher=True)",
        "int8": f"tfaccel.quantize(calibration_data=256 train samples), {QAT_EPOCHS}-epoch "
                f"fine-tune at Adam {common.QAT_LR} (alone: labels; distilled: distiller "
                "around the quantized student), export_tflite int8 with int8 I/O",
        "pipeline": f"student CNN filters {PIPELINE_FILTERS}: prune(student, PolynomialDecay 0 -> {common.TARGET_SPARSITY}, "
                    f"{common.prune_schedule_args(1400)}) distilled {EPOCHS} epochs, "
                    f"strip_pruning, quantize, {QAT_EPOCHS}-epoch distilled QAT, int8 export",
        "pipeline_dense_only": "the same pipeline with prune(..., layers=[Dense]): the "
                               "convolutions stay dense",
    }


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _distill_fit(student, teacher, x, y, epochs: int, lr: float):
    import keras

    import tfaccel

    distiller = tfaccel.distill(student, teacher, temperature=TEMPERATURE, alpha=ALPHA,
                                cache_teacher=True)
    distiller.compile(optimizer=keras.optimizers.Adam(lr), loss=_loss())
    distiller.fit(x, y, epochs=epochs, batch_size=common.BATCH, verbose=0)
    return distiller.student


def _int8(model, path: str, x_test, y_test) -> dict:
    import tfaccel
    from tfaccel.export import run_tflite

    t0 = time.perf_counter()
    report = tfaccel.export_tflite(model, path, quantization="int8",
                                   verification_data=x_test, **_INT8_IO)
    logits = run_tflite(path, x_test)
    return {
        **common.file_sizes(path),
        "export_s": round(time.perf_counter() - t0, 2),
        "acc": float(np.mean(np.argmax(logits, -1) == y_test)),
        "agreement_vs_keras": getattr(report, "agreement", None),
        "ops": getattr(report, "ops", None),
    }


def _float32(model, path: str) -> dict:
    import tfaccel

    tfaccel.export_tflite(model, path)
    return common.file_sizes(path)


def _kernels(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights
            if w.path.endswith("kernel") or w.name == "kernel"]


def digits_seed(data, seed: int, workdir: str, log) -> dict:
    import keras

    import tfaccel
    from tfaccel.schedules import PolynomialDecay

    x_train, y_train, x_test, y_test = data
    calibration = x_train[:256]
    res: dict = {"seed": seed}

    keras.utils.set_random_seed(seed)
    teacher = common.compile_classifier(
        common.make_cnn(keras, TEACHER_FILTERS, name="teacher"), keras)
    teacher.fit(x_train, y_train, epochs=EPOCHS, batch_size=common.BATCH, verbose=0)
    res["teacher_acc"] = common.accuracy(teacher, x_test, y_test)
    res["teacher_params"] = int(teacher.count_params())
    teacher.trainable = False

    keras.utils.set_random_seed(1000 + seed)
    alone = common.make_cnn(keras, STUDENT_FILTERS, name="student")
    initial = alone.get_weights()
    res["student_params"] = int(alone.count_params())

    def fresh_student():
        student = common.make_cnn(keras, STUDENT_FILTERS, name="student")
        student.set_weights(initial)
        return student

    # Student alone, float then QAT on the labels.
    common.compile_classifier(alone, keras)
    alone.fit(x_train, y_train, epochs=EPOCHS, batch_size=common.BATCH, verbose=0)
    res["alone_acc"] = common.accuracy(alone, x_test, y_test)
    alone_qat = tfaccel.quantize(alone, calibration_data=calibration)
    common.compile_classifier(alone_qat, keras, lr=common.QAT_LR)
    alone_qat.fit(x_train, y_train, epochs=QAT_EPOCHS, batch_size=common.BATCH, verbose=0)
    alone_int8 = _int8(alone_qat, os.path.join(workdir, f"alone_{seed}.tflite"),
                       x_test, y_test)
    res["alone_int8"] = alone_int8
    res["alone_int8_acc"] = alone_int8["acc"]

    # Same start, distilled; then QAT with the distiller around the QAT student.
    distilled = _distill_fit(fresh_student(), teacher, x_train, y_train, EPOCHS, common.LR)
    res["distilled_acc"] = common.accuracy(distilled, x_test, y_test)
    distilled_qat = _distill_fit(tfaccel.quantize(distilled, calibration_data=calibration),
                                 teacher, x_train, y_train, QAT_EPOCHS, common.QAT_LR)
    distilled_int8 = _int8(distilled_qat, os.path.join(workdir, f"distilled_{seed}.tflite"),
                           x_test, y_test)
    res["distilled_int8"] = distilled_int8
    res["distilled_int8_acc"] = distilled_int8["acc"]
    log(f"seed {seed}: teacher {res['teacher_acc']:.4f} alone {res['alone_acc']:.4f} "
        f"distilled {res['distilled_acc']:.4f} | int8 alone {res['alone_int8_acc']:.4f} "
        f"distilled {res['distilled_int8_acc']:.4f}")

    # Full pipeline: distill into a pruned student, strip, QAT (distilled), int8.
    # "all": every prunable layer (the recipe); "dense": the Dense layer only
    # (the convolutions of a (1, 2)-filter student hold 27 weights in all).
    keras.utils.set_random_seed(2000 + seed)
    pipeline_initial = common.make_cnn(keras, PIPELINE_FILTERS, name="student").get_weights()

    def pipeline_student():
        student = common.make_cnn(keras, PIPELINE_FILTERS, name="student")
        student.set_weights(pipeline_initial)
        return student

    res["pipeline_student_params"] = int(pipeline_student().count_params())
    for tag, layers in (("pipeline", None), ("pipeline_dense_only", [keras.layers.Dense])):
        schedule = PolynomialDecay(**common.prune_schedule_args(len(x_train)))
        pruned = _distill_fit(tfaccel.prune(pipeline_student(), schedule, layers=layers),
                              teacher, x_train, y_train, EPOCHS, common.LR)
        stripped = tfaccel.strip_pruning(pruned)
        res[f"{tag}_pruned_float_acc"] = common.accuracy(stripped, x_test, y_test)
        res[f"{tag}_kernel_sparsity"] = common.weight_sparsity(_kernels(stripped))
        qat = _distill_fit(tfaccel.quantize(stripped, calibration_data=calibration),
                           teacher, x_train, y_train, QAT_EPOCHS, common.QAT_LR)
        exported = _int8(qat, os.path.join(workdir, f"{tag}_{seed}.tflite"), x_test, y_test)
        res[f"{tag}_int8"] = exported
        res[f"{tag}_int8_acc"] = exported["acc"]
        res[f"{tag}_int8_minus_teacher_points"] = round(
            100 * (exported["acc"] - res["teacher_acc"]), 3)
        log(f"seed {seed}: {tag} sparsity {res[f'{tag}_kernel_sparsity']:.3f} pruned "
            f"float {res[f'{tag}_pruned_float_acc']:.4f} int8 {exported['acc']:.4f} "
            f"({exported['bytes']} bytes, gzip {exported['gzip_bytes']})")

    res["teacher_float32"] = _float32(teacher, os.path.join(workdir, f"teacher_{seed}.tflite"))
    res["student_float32"] = _float32(distilled,
                                      os.path.join(workdir, f"student_{seed}.tflite"))
    res["distilled_minus_alone_points"] = round(
        100 * (res["distilled_acc"] - res["alone_acc"]), 3)
    res["distilled_int8_minus_alone_int8_points"] = round(
        100 * (res["distilled_int8_acc"] - res["alone_int8_acc"]), 3)
    res["pipeline_int8_minus_alone_points"] = round(
        100 * (res["pipeline_int8_acc"] - res["alone_acc"]), 3)
    keras.backend.clear_session()
    return res


def summarize(rows: list[dict]) -> dict:
    mean = {k: round(statistics.mean(r[k] for r in rows), 5) for k in MEAN_KEYS}
    std = {k: round(statistics.stdev(r[k] for r in rows), 5) if len(rows) > 1 else 0.0
           for k in MEAN_KEYS}
    sizes = {}
    for key in ("teacher_float32", "student_float32", "pipeline_int8",
                "pipeline_dense_only_int8"):
        sizes[key] = {f: round(statistics.mean(r[key][f] for r in rows), 1)
                      for f in ("bytes", "gzip_bytes")}
    sizes["pipeline_int8_gzip_vs_teacher_float32_gzip"] = round(
        sizes["pipeline_int8"]["gzip_bytes"] / sizes["teacher_float32"]["gzip_bytes"], 4)
    sizes["pipeline_int8_bytes_vs_teacher_float32_bytes"] = round(
        sizes["pipeline_int8"]["bytes"] / sizes["teacher_float32"]["bytes"], 4)
    wins = sum(r["distilled_acc"] > r["alone_acc"] for r in rows)
    return {"mean": mean, "stdev": std, "sizes": sizes,
            "distilled_beats_alone_seeds": f"{wins}/{len(rows)}",
            "teacher_params": rows[0]["teacher_params"],
            "student_params": rows[0]["student_params"],
            "pipeline_student_params": rows[0]["pipeline_student_params"]}


# Few labels: the teacher learns from 700 labelled digits; the student's pool
# is the other 700, LABELS of them labelled; the teacher labels the rest.
LABELS = 100
FEW_LABEL_KEYS = ("alone_acc", "pseudo_acc", "distilled_acc", "alone_int8_acc",
                  "pseudo_int8_acc", "distilled_int8_acc",
                  "distilled_minus_alone_points", "distilled_minus_pseudo_points",
                  "distilled_int8_minus_alone_int8_points",
                  "distilled_int8_minus_pseudo_int8_points")


def few_labels_seed(data, seed: int, workdir: str, log) -> dict:
    """Student alone on LABELS labels vs teacher-labelled rest, hard or distilled.

    The teacher learns from half of the training digits (its labelled set);
    the student's pool is the other half, LABELS of them labelled: the
    teacher's labels for the rest are its predictions, not memorized labels.
    """
    import keras

    import tfaccel

    x_all, y_all, x_test, y_test = data
    half = len(x_all) // 2
    res: dict = {"seed": seed}
    keras.utils.set_random_seed(seed)
    teacher = common.compile_classifier(
        common.make_cnn(keras, TEACHER_FILTERS, name="teacher"), keras)
    teacher.fit(x_all[:half], y_all[:half], epochs=EPOCHS, batch_size=common.BATCH,
                verbose=0)
    teacher.trainable = False
    res["teacher_acc"] = common.accuracy(teacher, x_test, y_test)
    x_train, y_train = x_all[half:], y_all[half:]
    labelled = np.random.default_rng(seed).permutation(len(x_train))[:LABELS]
    # The labels a user has, and the teacher's labels for the rest.
    y_mixed = np.argmax(teacher.predict(x_train, verbose=0), -1).astype("int32")
    y_mixed[labelled] = y_train[labelled]
    res["teacher_label_acc_on_unlabelled"] = float(np.mean(
        np.delete(y_mixed, labelled) == np.delete(y_train, labelled)))
    keras.utils.set_random_seed(3000 + seed)
    initial = common.make_cnn(keras, PIPELINE_FILTERS, name="student").get_weights()

    def student():
        model = common.make_cnn(keras, PIPELINE_FILTERS, name="student")
        model.set_weights(initial)
        return model

    # Every arm takes the same number of optimizer steps.
    repeat = len(x_train) // LABELS
    x_few, y_few = np.repeat(x_train[labelled], repeat, 0), np.repeat(y_train[labelled], repeat)

    def plain(model, x, y, epochs, lr):
        common.compile_classifier(model, keras, lr=lr)
        model.fit(x, y, epochs=epochs, batch_size=common.BATCH, verbose=0)
        return model

    arms = {
        "alone": lambda m, e, lr: plain(m, x_few, y_few, e, lr),
        "pseudo": lambda m, e, lr: plain(m, x_train, y_mixed, e, lr),
        "distilled": lambda m, e, lr: _distill_fit(m, teacher, x_train, y_mixed, e, lr),
    }
    for name, train in arms.items():
        model = train(student(), EPOCHS, common.LR)
        res[f"{name}_acc"] = common.accuracy(model, x_test, y_test)
        qat = train(tfaccel.quantize(model, calibration_data=x_train[:256]), QAT_EPOCHS,
                    common.QAT_LR)
        exported = _int8(qat, os.path.join(workdir, f"few_{name}_{seed}.tflite"),
                         x_test, y_test)
        res[f"{name}_int8_acc"] = exported["acc"]
    for kind in ("", "_int8"):
        for other in ("alone", "pseudo"):
            res[f"distilled{kind}_minus_{other}{kind}_points"] = round(
                100 * (res[f"distilled{kind}_acc"] - res[f"{other}{kind}_acc"]), 3)
    log(f"few labels seed {seed}: teacher {res['teacher_acc']:.4f} | alone "
        f"{res['alone_acc']:.4f} pseudo {res['pseudo_acc']:.4f} distilled "
        f"{res['distilled_acc']:.4f} | int8 {res['alone_int8_acc']:.4f} "
        f"{res['pseudo_int8_acc']:.4f} {res['distilled_int8_acc']:.4f}")
    keras.backend.clear_session()
    return res


def _digits(seeds, data, workdir, log) -> dict:
    rows = [digits_seed(data, seed, workdir, log) for seed in seeds]
    return {"seeds": rows, **summarize(rows)}


def _few_labels(seeds, data, workdir, log) -> dict:
    rows = [few_labels_seed(data, seed, workdir, log) for seed in seeds]
    mean = {k: round(statistics.mean(r[k] for r in rows), 5) for k in FEW_LABEL_KEYS}
    std = {k: round(statistics.stdev(r[k] for r in rows), 5) if len(rows) > 1 else 0.0
           for k in FEW_LABEL_KEYS}
    wins = sum(r["distilled_acc"] > r["pseudo_acc"] for r in rows)
    label_acc = statistics.mean(r["teacher_label_acc_on_unlabelled"] for r in rows)
    return {"seeds": rows, "mean": mean, "stdev": std, "labels": LABELS,
            "teacher_label_acc": round(label_acc, 5),
            "distilled_beats_pseudo_seeds": f"{wins}/{len(rows)}"}


def render_few_labels(d: dict) -> list[str]:
    """Markdown lines of the few-labels section of BENCHMARKS.md (run_all.py)."""
    out = ["## Distillation that pays: few labels, the teacher labels the rest", ""]
    cmd = ("`.venv/bin/python benchmarks/distillation.py --sections few_labels "
           "--out benchmarks/results/distillation.json`")
    g = (d or {}).get("few_labels") or {}
    if "mean" not in g:
        return out + [f"n/a ({(g.get('error') or 'not run')[:120]}): {cmd}", ""]
    mean, std, n = g["mean"], g["stdev"], len(g["seeds"])

    def ms(key, pts=False):
        v, s_ = mean[key], std[key]
        return f"{v:+.2f} pts (± {s_:.2f})" if pts else f"{100 * v:.2f}% (± {100 * s_:.2f})"

    out += ["A (8, 16) teacher learns from 700 labelled training digits; the "
            f"student's pool is the other 700, {g['labels']} of them labelled, the "
            "teacher labelling the rest (its labels "
            f"{100 * g.get('teacher_label_acc', 0):.1f}% right). The (4, 8) student, same "
            "initial weights in every arm, the same number of steps; int8 = quantize, "
            f"{QAT_EPOCHS}-epoch fine-tune the same way, int8 file. Mean (± sd) over "
            f"{n} seeds; distilled beat pseudo-labels (float) on "
            f"{g['distilled_beats_pseudo_seeds']} seeds. Reproduce: {cmd}.", ""]
    rows = [[label, ms(f"{arm}_acc"), ms(f"{arm}_int8_acc")] for arm, label in (
        ("alone", f"alone on the {g['labels']} labels"),
        ("pseudo", "+ teacher's hard labels for the rest (plain fit)"),
        ("distilled", f"+ the same, distilled (T={TEMPERATURE}, alpha={ALPHA})"))]
    rows += [[f"distilled minus {other}", ms(f"distilled_minus_{other}_points", True),
              ms(f"distilled_int8_minus_{other}_int8_points", True)]
             for other in ("alone", "pseudo")]
    out += ["| student | float (Keras) | int8 file |", "|---|---|---|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sections", default="digits,few_labels",
                        help="comma-separated subset of digits,few_labels; with "
                        "--out, the sections not run are kept from that file")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    log = common.Clock("distillation")
    result: dict = {"benchmark": "distillation", "command": common.command_line(),
                    "env": common.env_info(), "recipe": recipe()}
    data = common.load_digits_split()
    sections = [n for n in args.sections.split(",") if n]
    with tempfile.TemporaryDirectory() as workdir:
        if "digits" in sections:
            common.guard_section("digits", lambda: _digits(seeds, data, workdir, log),
                                 result, log)
        if "few_labels" in sections:
            common.guard_section(
                "few_labels", lambda: _few_labels(seeds, data, workdir, log), result, log)
    result["elapsed_s"] = log.elapsed()
    if args.out:
        result = common.merge_sections(args.out, result, ["digits", "few_labels"])
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
