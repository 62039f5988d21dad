"""tfaccel pruning benchmark: the digits CNN and MobileNetV2, Keras 3.

The same recipe as the tfmot peer (`peer_tfmot.py`): dense training, then
`tfaccel.pruning.prune` to 80% with `tfaccel.schedules.PolynomialDecay`
during a 10-epoch fine-tune (no callback), `strip_pruning`, float32 TFLite
files and their gzip sizes; train-step time pruned/unpruned measured
interleaved; MobileNetV2 pruned to 80% (+ int8) file sizes.

Usage:

    .venv/bin/python benchmarks/pruning.py --out benchmarks/results/pruning.json

To re-measure one section into the existing results (the others are kept):

    .venv/bin/python benchmarks/pruning.py --sections overhead --merge \\
        --out benchmarks/results/pruning.json

Prints one JSON object to stdout (progress goes to stderr).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTIONS = common.SECTIONS


def _copy(model):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _kernels(model):
    return [np.asarray(w) for w in model.weights
            if w.name in ("kernel", "depthwise_kernel") or w.path.endswith("kernel")]


def _export_float(model, path: str) -> dict:
    from tfaccel.export import export_tflite

    t0 = time.perf_counter()
    report = export_tflite(model, path)
    out = common.file_sizes(path)
    out["export_s"] = round(time.perf_counter() - t0, 2)
    out["converter_s"] = getattr(report, "conversion_seconds", None)
    return out


def _tfaccel_sparsity(model) -> dict:
    from tfaccel.pruning import sparsity

    per_weight = sparsity(model)
    return {k: round(float(v), 5) for k, v in per_weight.items()}


def digits_seed(data, seed: int, workdir: str, log):
    import keras

    from tfaccel.pruning import prune, strip_pruning
    from tfaccel.schedules import PolynomialDecay

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    res: dict = {"seed": seed}
    dense = common.compile_classifier(common.make_cnn(keras), keras)
    t0 = time.perf_counter()
    dense.fit(x_train, y_train, epochs=common.DENSE_EPOCHS, batch_size=common.BATCH,
              verbose=0)
    res["dense_train_s"] = round(time.perf_counter() - t0, 2)
    res["dense_acc"] = common.accuracy(dense, x_test, y_test)
    log(f"seed {seed}: dense accuracy {res['dense_acc']:.4f}")

    schedule = PolynomialDecay(**common.prune_schedule_args(len(x_train)))
    pruned = prune(_copy(dense), schedule=schedule)
    common.compile_classifier(pruned, keras)
    t0 = time.perf_counter()
    pruned.fit(x_train, y_train, epochs=common.PRUNE_EPOCHS, batch_size=common.BATCH,
               verbose=0)
    res["prune_train_s"] = round(time.perf_counter() - t0, 2)
    res["wrapped_acc"] = common.accuracy(pruned, x_test, y_test)
    stripped = strip_pruning(pruned)
    res["pruned_acc"] = common.accuracy(stripped, x_test, y_test)
    res["pruned_sparsity"] = common.weight_sparsity(_kernels(stripped))
    res["tfaccel_sparsity"] = _tfaccel_sparsity(stripped)
    res["pruned_minus_dense_points"] = round(100 * (res["pruned_acc"] - res["dense_acc"]), 3)
    log(f"seed {seed}: pruned accuracy {res['pruned_acc']:.4f} "
        f"sparsity {res['pruned_sparsity']:.4f}")

    # The same fine-tune with the sparsity shared by size (ERK).
    keras.utils.set_random_seed(seed)
    erk = prune(_copy(dense), schedule=schedule, allocation="erk")
    common.compile_classifier(erk, keras)
    erk.fit(x_train, y_train, epochs=common.PRUNE_EPOCHS, batch_size=common.BATCH,
            verbose=0)
    erk_stripped = strip_pruning(erk)
    res["erk_pruned_acc"] = common.accuracy(erk_stripped, x_test, y_test)
    res["erk_pruned_sparsity"] = common.weight_sparsity(_kernels(erk_stripped))
    res["erk_tfaccel_sparsity"] = _tfaccel_sparsity(erk_stripped)
    res["erk_minus_dense_points"] = round(
        100 * (res["erk_pruned_acc"] - res["dense_acc"]), 3)
    log(f"seed {seed}: ERK pruned accuracy {res['erk_pruned_acc']:.4f} "
        f"sparsity {res['erk_pruned_sparsity']:.4f}")

    dense_path = os.path.join(workdir, f"dense_{seed}.tflite")
    pruned_path = os.path.join(workdir, f"pruned_{seed}.tflite")
    erk_path = os.path.join(workdir, f"pruned_erk_{seed}.tflite")
    res["dense_float32"] = _export_float(dense, dense_path)
    res["pruned_float32"] = _export_float(stripped, pruned_path)
    res["erk_pruned_float32"] = _export_float(erk_stripped, erk_path)
    res["dense_float32_tflite_acc"] = common.tflite_accuracy(dense_path, x_test, y_test)
    res["pruned_float32_tflite_acc"] = common.tflite_accuracy(pruned_path, x_test, y_test)
    res["pruned_gzip_ratio"] = round(
        res["pruned_float32"]["gzip_bytes"] / res["dense_float32"]["gzip_bytes"], 4)
    res["erk_pruned_gzip_ratio"] = round(
        res["erk_pruned_float32"]["gzip_bytes"] / res["dense_float32"]["gzip_bytes"], 4)
    keras.backend.clear_session()
    return res, dense


def overhead(data, dense, repeats: int, steps: int, log) -> dict:
    import keras

    from tfaccel.pruning import prune
    from tfaccel.schedules import PolynomialDecay

    x_train, y_train, _, _ = data
    base = common.compile_classifier(_copy(dense), keras)
    schedule = PolynomialDecay(**common.prune_schedule_args(len(x_train)))
    pruned = common.compile_classifier(prune(_copy(dense), schedule=schedule), keras)
    cb = keras.callbacks.Callback
    runners = [
        ("float", common.fit_round(base, x_train, y_train, cb, steps)),
        ("pruned", common.fit_round(pruned, x_train, y_train, cb, steps)),
    ]
    log(f"interleaved step timing: {repeats} rounds x {steps} steps x 2 models")
    res = common.interleaved_step_times(runners, repeats=repeats, warmup=1)
    res["steps_per_round"] = steps
    res["how"] = common.OVERHEAD_HOW
    return res


def _prune_one_step(model, representative, allocation: str):
    """`model` pruned to 80% with `allocation`, stripped.

    One zero-learning-rate step: the masks are computed in the train step,
    the weights do not move.
    """
    import keras

    from tfaccel.pruning import prune, strip_pruning
    from tfaccel.schedules import ConstantSparsity

    pruned = prune(_copy(model), schedule=ConstantSparsity(
        common.TARGET_SPARSITY, begin_step=0, frequency=1), allocation=allocation)
    pruned.compile(optimizer=keras.optimizers.SGD(0.0),
                   loss=keras.losses.SparseCategoricalCrossentropy())
    pruned.fit(representative[:2], np.zeros(2, "int32"), epochs=1, batch_size=2,
               verbose=0)
    return strip_pruning(pruned)


def _qat_int8_sizes(model, representative, path: str) -> dict:
    from tfaccel.export import export_tflite
    from tfaccel.quantization import quantize

    export_tflite(quantize(model, calibration_data=representative), path,
                  quantization="int8")
    return {**common.file_sizes(path), "breakdown": gzip_breakdown(path)}


def gzip_breakdown(path: str) -> dict:
    """Where an int8 file's gzip bytes go, read from its flatbuffer.

    gzip of the int8 constant tensors (kernels), of the int32 constants
    (biases), of all quantization scales (float32); and for the kernels the
    bits per weight gzip spends against their zeroth-order entropy.
    """
    import gzip

    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        data = f.read()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    int8, int32, scales = [], [], []
    for tensor in model.subgraphs[0].tensors:
        buffer = model.buffers[tensor.buffer].data
        if buffer is not None and len(buffer):
            if tensor.type == schema.TensorType.INT8:
                int8.append(np.asarray(buffer, np.uint8).tobytes())
            elif tensor.type == schema.TensorType.INT32:
                int32.append(np.asarray(buffer, np.uint8).tobytes())
        q = tensor.quantization
        if q is not None and q.scale is not None:
            scales.append(np.asarray(q.scale, np.float32).tobytes())

    def gz(parts):
        return len(gzip.compress(b"".join(parts), compresslevel=9, mtime=0))

    weights = np.frombuffer(b"".join(int8), np.int8)
    _, counts = np.unique(weights, return_counts=True)
    p = counts / counts.sum()
    return {
        "int8_constants_gzip_bytes": gz(int8),
        "int32_constants_gzip_bytes": gz(int32),
        "scales_gzip_bytes": gz(scales),
        "int8_constants": int(weights.size),
        "int8_gzip_bits_per_weight": round(8 * gz(int8) / weights.size, 3),
        "int8_entropy_bits_per_weight": round(float(-(p * np.log2(p)).sum()), 3),
        "int8_nonzero_abs_min": int(np.abs(weights[weights != 0].astype(int)).min()),
    }


def mobilenet(log) -> dict:
    import keras

    res, model, representative = common.mobilenet_model(keras)
    with tempfile.TemporaryDirectory() as d:
        float_path = os.path.join(d, "float.tflite")
        res["float32"] = _export_float(model, float_path)
        log(f"MobileNetV2 float32 {res['float32']}")

        stripped = _prune_one_step(model, representative, "uniform")
        res["pruned_sparsity"] = common.weight_sparsity(_kernels(stripped))
        pf_path = os.path.join(d, "pruned_float.tflite")
        res["pruned_float32"] = _export_float(stripped, pf_path)
        log(f"MobileNetV2 pruned float32 {res['pruned_float32']} "
            f"sparsity {res['pruned_sparsity']:.4f}")

        # Pruned + int8, two ways: tfaccel QAT export (quantize, no fine-tune)
        # and the converter's PTQ of the stripped model (what tfmot users do).
        pi_path = common.write_bytes(
            os.path.join(d, "pruned_ptq_int8.tflite"),
            common.convert_keras(stripped, "ptq", representative=representative))
        res["pruned_ptq_int8"] = common.file_sizes(pi_path)
        common.guard_section("pruned_qat_int8", lambda: _qat_int8_sizes(
            stripped, representative, os.path.join(d, "pruned_qat_int8.tflite")),
            res, log)
        best = min(res[k].get("gzip_bytes", float("inf"))
                   for k in ("pruned_ptq_int8", "pruned_qat_int8"))
        res["pruned_int8_gzip_vs_dense_float32_gzip"] = round(
            best / res["float32"]["gzip_bytes"], 4)

        # The same 80% shared by size (allocation="erk"), QAT int8 export.
        erk = _prune_one_step(model, representative, "erk")
        res["erk_pruned_sparsity"] = common.weight_sparsity(_kernels(erk))
        per_layer = _tfaccel_sparsity(erk)
        res["erk_dense_weights"] = sum(1 for v in per_layer.values() if v == 0.0)
        res["erk_pruned_weights"] = len(per_layer) - res["erk_dense_weights"]
        common.guard_section("erk_pruned_qat_int8", lambda: _qat_int8_sizes(
            erk, representative, os.path.join(d, "erk_pruned_qat_int8.tflite")),
            res, log)
        for k in ("pruned_ptq_int8", "pruned_qat_int8", "erk_pruned_qat_int8"):
            if "gzip_bytes" in res[k]:
                res[f"{k}_gzip_vs_dense_float32_gzip"] = round(
                    res[k]["gzip_bytes"] / res["float32"]["gzip_bytes"], 4)
        log(f"MobileNetV2 pruned int8 gzip ratio "
            f"{res['pruned_int8_gzip_vs_dense_float32_gzip']} (uniform), "
            f"{res.get('erk_pruned_qat_int8_gzip_vs_dense_float32_gzip')} (erk)")
    return res


def main(argv=None) -> dict:
    return common.run_sections(
        "pruning", __doc__, argv, digits_seed=digits_seed, overhead=overhead,
        mobilenet=mobilenet, mean_keys=("dense_acc", "pruned_acc",
                                                  "pruned_minus_dense_points",
                                                  "pruned_sparsity",
                                                  "pruned_gzip_ratio",
                                                  "erk_pruned_acc",
                                                  "erk_minus_dense_points",
                                                  "erk_pruned_sparsity",
                                                  "erk_pruned_gzip_ratio"))


if __name__ == "__main__":
    main()
