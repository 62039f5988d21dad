"""The tfmot peer: the same measurements as tfaccel's benchmarks, with tfmot.

tensorflow-model-optimization 0.8.1 works on `tf_keras` models only and sets
`TF_USE_LEGACY_KERAS=1` for its whole process, so this script is always run
in a process of its own (`run_all.py` starts it with a subprocess) and never
imports tfaccel.

Usage:

    .venv/bin/python benchmarks/peer_tfmot.py --out benchmarks/results/peer_tfmot.json

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

import os

# Before TensorFlow is imported: tfmot would flip it anyway, do it knowingly.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTIONS = ("digits", "overhead", "mobilenet")


def _imports():
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    return tf, tf_keras, tfmot


def _copy(tf_keras, model):
    """An independent copy: tfmot wraps the ORIGINAL layer objects, so pruning
    `model` itself would also zero the dense baseline's kernels."""
    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _kernels(model):
    return [w.numpy() for w in model.weights
            if "kernel" in w.name and "quantize" not in w.name]


def digits_seed(tf, tf_keras, tfmot, data, seed: int, workdir: str, log) -> dict:
    x_train, y_train, x_test, y_test = data
    tf_keras.utils.set_random_seed(seed)
    res: dict = {"seed": seed}

    dense = common.compile_classifier(common.make_cnn(tf_keras), tf_keras)
    t0 = time.perf_counter()
    dense.fit(x_train, y_train, epochs=common.DENSE_EPOCHS, batch_size=common.BATCH,
              verbose=0)
    res["dense_train_s"] = round(time.perf_counter() - t0, 2)
    res["dense_acc"] = common.accuracy(dense, x_test, y_test)
    log(f"seed {seed}: dense accuracy {res['dense_acc']:.4f}")

    # Pruning: PolynomialDecay to 80% over the 10-epoch fine-tune.
    args = common.prune_schedule_args(len(x_train))
    schedule = tfmot.sparsity.keras.PolynomialDecay(**args)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(_copy(tf_keras, dense),
                                                      pruning_schedule=schedule)
    common.compile_classifier(pruned, tf_keras)
    t0 = time.perf_counter()
    pruned.fit(x_train, y_train, epochs=common.PRUNE_EPOCHS, batch_size=common.BATCH,
               verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    res["prune_train_s"] = round(time.perf_counter() - t0, 2)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    res["pruned_acc"] = common.accuracy(stripped, x_test, y_test)
    res["pruned_sparsity"] = common.weight_sparsity(_kernels(stripped))
    res["pruned_minus_dense_points"] = round(100 * (res["pruned_acc"] - res["dense_acc"]), 3)
    log(f"seed {seed}: pruned accuracy {res['pruned_acc']:.4f} "
        f"sparsity {res['pruned_sparsity']:.4f}")

    # Float32 files, dense and stripped-pruned.
    dense_path = common.write_bytes(os.path.join(workdir, f"dense_{seed}.tflite"),
                                    common.convert_keras(dense, "float32"))
    pruned_path = common.write_bytes(os.path.join(workdir, f"pruned_{seed}.tflite"),
                                     common.convert_keras(stripped, "float32"))
    res["dense_float32"] = common.file_sizes(dense_path)
    res["pruned_float32"] = common.file_sizes(pruned_path)
    res["dense_float32_tflite_acc"] = common.tflite_accuracy(dense_path, x_test, y_test)
    res["pruned_gzip_ratio"] = round(
        res["pruned_float32"]["gzip_bytes"] / res["dense_float32"]["gzip_bytes"], 4)

    # QAT from the dense model: quantize_model, short fine-tune, int8 file.
    qat = tfmot.quantization.keras.quantize_model(_copy(tf_keras, dense))
    common.compile_classifier(qat, tf_keras, lr=common.QAT_LR)
    t0 = time.perf_counter()
    qat.fit(x_train, y_train, epochs=common.QAT_EPOCHS, batch_size=common.BATCH, verbose=0)
    res["qat_train_s"] = round(time.perf_counter() - t0, 2)
    res["qat_keras_acc"] = common.accuracy(qat, x_test, y_test)
    try:
        qat_bytes = common.convert_keras(qat, "qat", int8_io=True)
        res["qat_int8_io"] = True
    except Exception as e:  # noqa: BLE001 - record and fall back to float I/O
        log(f"QAT int8 I/O conversion failed ({type(e).__name__}); float I/O")
        res["qat_int8_io_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        qat_bytes = common.convert_keras(qat, "qat", int8_io=False)
        res["qat_int8_io"] = False
    qat_path = common.write_bytes(os.path.join(workdir, f"qat_{seed}.tflite"), qat_bytes)
    res["qat_int8"] = common.file_sizes(qat_path)
    qat_logits = common.run_tflite(qat_path, x_test)
    keras_logits = qat.predict(x_test, verbose=0, batch_size=256)
    res["qat_int8_tflite_acc"] = float(np.mean(np.argmax(qat_logits, -1) == y_test))
    res["qat_int8_agreement_vs_qat_keras"] = float(
        np.mean(np.argmax(qat_logits, -1) == np.argmax(keras_logits, -1)))
    res["qat_int8_minus_float_points"] = round(
        100 * (res["qat_int8_tflite_acc"] - res["dense_acc"]), 3)
    if seed == common.SEEDS[0]:
        res["qat_int8_ops"] = common.tflite_op_summary(qat_path)
    log(f"seed {seed}: QAT keras {res['qat_keras_acc']:.4f} "
        f"int8 file {res['qat_int8_tflite_acc']:.4f}")

    # The converter's own post-training full int8 of the dense float model.
    ptq_path = common.write_bytes(
        os.path.join(workdir, f"ptq_{seed}.tflite"),
        common.convert_keras(dense, "ptq", representative=x_train[:256]))
    res["ptq_int8"] = common.file_sizes(ptq_path)
    res["ptq_int8_tflite_acc"] = common.tflite_accuracy(ptq_path, x_test, y_test)
    res["ptq_int8_minus_float_points"] = round(
        100 * (res["ptq_int8_tflite_acc"] - res["dense_acc"]), 3)
    tf_keras.backend.clear_session()
    return res, dense


def overhead(tf, tf_keras, tfmot, data, dense, repeats: int, steps: int, log) -> dict:
    """Train-step time pruned/unpruned and QAT/float, interleaved."""
    x_train, y_train, _, _ = data
    base = _copy(tf_keras, dense)
    common.compile_classifier(base, tf_keras)
    args = common.prune_schedule_args(len(x_train))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        _copy(tf_keras, dense), pruning_schedule=tfmot.sparsity.keras.PolynomialDecay(**args))
    common.compile_classifier(pruned, tf_keras)
    qat = tfmot.quantization.keras.quantize_model(_copy(tf_keras, dense))
    common.compile_classifier(qat, tf_keras)
    cb = tf_keras.callbacks.Callback
    runners = [
        ("float", common.fit_round(base, x_train, y_train, cb, steps)),
        ("pruned", common.fit_round(pruned, x_train, y_train, cb, steps,
                                    callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])),
        ("qat", common.fit_round(qat, x_train, y_train, cb, steps)),
    ]
    log(f"interleaved step timing: {repeats} rounds x {steps} steps x 3 models")
    res = common.interleaved_step_times(runners, repeats=repeats, warmup=1)
    res["steps_per_round"] = steps
    res["how"] = common.OVERHEAD_HOW
    return res


def mobilenet(tf, tf_keras, tfmot, log, threads=(1, 2)) -> dict:
    res, model, representative = common.mobilenet_model(tf_keras)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        float_bytes = common.convert_keras(model, "float32")  # also warms the converter up
        first_float_s = time.perf_counter() - t0
        float_path = common.write_bytes(os.path.join(d, "float.tflite"), float_bytes)
        res["float32"] = common.file_sizes(float_path)
        log(f"MobileNetV2 float32 {res['float32']}")

        t0 = time.perf_counter()
        ptq_path = common.write_bytes(
            os.path.join(d, "ptq.tflite"),
            common.convert_keras(model, "ptq", representative=representative))
        res["ptq_convert_s"] = round(time.perf_counter() - t0, 2)
        res["ptq_int8"] = common.file_sizes(ptq_path)
        log(f"MobileNetV2 PTQ int8 {res['ptq_int8']}")

        qat = tfmot.quantization.keras.quantize_model(_copy(tf_keras, model))
        # One forward pass in training mode so the activation ranges move off
        # their initial values (a real QAT run would train).
        qat(representative, training=True)
        float_times, qat_times = [first_float_s], []
        qat_bytes = None
        for _ in range(common.CONVERT_REPEATS):
            t0 = time.perf_counter()
            common.convert_keras(model, "float32")
            float_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            qat_bytes = common.convert_keras(qat, "qat")
            qat_times.append(time.perf_counter() - t0)
        qat_path = common.write_bytes(os.path.join(d, "qat.tflite"), qat_bytes)
        res["qat_int8"] = common.file_sizes(qat_path)
        res["float32_convert_s"] = round(min(float_times[1:]), 2)
        res["qat_convert_s"] = round(min(qat_times), 2)
        res["qat_convert_ratio"] = round(res["qat_convert_s"] / res["float32_convert_s"], 3)
        res["qat_int8_vs_ptq_int8_bytes"] = round(
            res["qat_int8"]["bytes"] / res["ptq_int8"]["bytes"], 4)
        res["qat_int8_ops"] = common.tflite_op_summary(qat_path)
        log(f"MobileNetV2 QAT int8 {res['qat_int8']} convert {res['qat_convert_s']}s "
            f"vs float {res['float32_convert_s']}s")

        # Pruned to 80%: one zero-learning-rate step applies the masks.
        pruned = tfmot.sparsity.keras.prune_low_magnitude(
            _copy(tf_keras, model), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(
                common.TARGET_SPARSITY, begin_step=0, frequency=1))
        pruned.compile(optimizer=tf_keras.optimizers.SGD(0.0),
                       loss=tf_keras.losses.SparseCategoricalCrossentropy())
        pruned.fit(representative[:2], np.zeros(2, "int32"), epochs=1, batch_size=2,
                   verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        stripped = tfmot.sparsity.keras.strip_pruning(pruned)
        res["pruned_sparsity"] = common.weight_sparsity(_kernels(stripped))
        pf_path = common.write_bytes(os.path.join(d, "pruned_float.tflite"),
                                     common.convert_keras(stripped, "float32"))
        pi_path = common.write_bytes(
            os.path.join(d, "pruned_int8.tflite"),
            common.convert_keras(stripped, "ptq", representative=representative))
        res["pruned_float32"] = common.file_sizes(pf_path)
        res["pruned_ptq_int8"] = common.file_sizes(pi_path)
        res["pruned_int8_gzip_vs_dense_float32_gzip"] = round(
            res["pruned_ptq_int8"]["gzip_bytes"] / res["float32"]["gzip_bytes"], 4)
        log(f"MobileNetV2 pruned sparsity {res['pruned_sparsity']:.3f} "
            f"int8 gzip ratio {res['pruned_int8_gzip_vs_dense_float32_gzip']}")

        res["latency_ms"] = {}
        for name, path in (("float32", float_path), ("ptq_int8", ptq_path),
                           ("qat_int8", qat_path)):
            for t in threads:
                res["latency_ms"][f"{name}@{t}"] = common.tflite_latency(path, t)
        log(f"MobileNetV2 latency {res['latency_ms']}")
    return res


def _mean(rows, key):
    return round(statistics.mean(r[key] for r in rows), 5)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--seeds", default=",".join(map(str, common.SEEDS)))
    parser.add_argument("--repeats", type=int, default=121)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections must be among {SECTIONS}. Received: {sorted(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    log = common.Clock("peer_tfmot")
    tf, tf_keras, tfmot = _imports()
    result: dict = {"benchmark": "peer_tfmot", "command": common.command_line(),
                    "env": common.env_info(), "recipe": common.recipe()}
    data = common.load_digits_split()
    dense = None
    if "digits" in sections or "overhead" in sections:
        rows = []
        with tempfile.TemporaryDirectory() as workdir:
            for seed in (seeds if "digits" in sections else seeds[:1]):
                row, dense_seed = digits_seed(tf, tf_keras, tfmot, data, seed, workdir, log)
                rows.append(row)
                if dense is None:
                    dense = dense_seed
        if "digits" in sections:
            result["digits"] = {
                "seeds": rows,
                "mean": {k: _mean(rows, k) for k in (
                    "dense_acc", "pruned_acc", "pruned_minus_dense_points",
                    "pruned_sparsity", "pruned_gzip_ratio", "qat_keras_acc",
                    "qat_int8_tflite_acc", "qat_int8_minus_float_points",
                    "qat_int8_agreement_vs_qat_keras", "ptq_int8_tflite_acc",
                    "ptq_int8_minus_float_points")},
            }
    if "overhead" in sections:
        result["overhead"] = overhead(tf, tf_keras, tfmot, data, dense, args.repeats,
                                      args.steps, log)
    if "mobilenet" in sections:
        result["mobilenet"] = mobilenet(tf, tf_keras, tfmot, log)
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
