"""tfaccel quantization-aware training benchmark: digits CNN and MobileNetV2.

The same recipe as the tfmot peer (`peer_tfmot.py`): dense training, then
`tfaccel.quantization.quantize` and a short QAT fine-tune, int8 export with
`tfaccel.export.export_tflite` (no representative data), its accuracy and
agreement with the QAT Keras model; the converter's own post-training int8 of
the dense model for reference; train-step time QAT/float measured
interleaved; MobileNetV2 int8 file size vs the converter's PTQ file, export
time QAT vs float32 and int8 vs float32 latency (ai_edge_litert, 1 and 2
threads).

Usage:

    .venv/bin/python benchmarks/qat.py --out benchmarks/results/qat.json

To re-measure one section into the existing results (the others are kept):

    .venv/bin/python benchmarks/qat.py --sections overhead --merge \\
        --out benchmarks/results/qat.json

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
_REPORT_FIELDS = ("bytes", "gzip_bytes", "sparsity", "int8_coverage", "agreement",
                  "max_abs_error", "num_samples", "conversion_seconds", "ops", "notes")


# int8 input/output like the converter's PTQ files and the tfmot peer's, so
# sizes and latencies compare the same graph (tfaccel's default is float I/O).
_INT8_IO = {"input_type": "int8", "output_type": "int8"}


def _copy(model):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _export(model, path: str, quantization=None, **kwargs) -> dict:
    """Exports with tfaccel, returns sizes, wall time and the report's fields."""
    from tfaccel.export import export_tflite

    t0 = time.perf_counter()
    report = export_tflite(model, path, quantization=quantization, **kwargs)
    wall = time.perf_counter() - t0
    out = common.file_sizes(path)
    out["export_s"] = round(wall, 2)
    out["report"] = {k: getattr(report, k, None) for k in _REPORT_FIELDS}
    return out


def _quantize(model, calibration_data):
    from tfaccel.quantization import quantize

    return quantize(model, calibration_data=calibration_data)


def digits_seed(data, seed: int, workdir: str, log):
    import keras

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    res: dict = {"seed": seed}
    dense = common.compile_classifier(common.make_cnn(keras), keras)
    dense.fit(x_train, y_train, epochs=common.DENSE_EPOCHS, batch_size=common.BATCH,
              verbose=0)
    res["dense_acc"] = common.accuracy(dense, x_test, y_test)
    log(f"seed {seed}: dense accuracy {res['dense_acc']:.4f}")

    qat = _quantize(_copy(dense), x_train[:256])
    common.compile_classifier(qat, keras, lr=common.QAT_LR)
    t0 = time.perf_counter()
    qat.fit(x_train, y_train, epochs=common.QAT_EPOCHS, batch_size=common.BATCH, verbose=0)
    res["qat_train_s"] = round(time.perf_counter() - t0, 2)
    res["qat_keras_acc"] = common.accuracy(qat, x_test, y_test)

    qat_path = os.path.join(workdir, f"qat_{seed}.tflite")
    exported = _export(qat, qat_path, quantization="int8", verification_data=x_test,
                       **_INT8_IO)
    res["qat_int8"] = {k: exported[k] for k in ("bytes", "gzip_bytes", "export_s")}
    res["qat_int8_io"] = common.tflite_io_types(qat_path)
    res["qat_int8_report"] = exported["report"]
    qat_logits = common.run_tflite(qat_path, x_test)
    keras_logits = qat.predict(x_test, verbose=0, batch_size=256)
    res["qat_int8_tflite_acc"] = float(np.mean(np.argmax(qat_logits, -1) == y_test))
    res["qat_int8_agreement_vs_qat_keras"] = float(
        np.mean(np.argmax(qat_logits, -1) == np.argmax(keras_logits, -1)))
    res["qat_int8_minus_float_points"] = round(
        100 * (res["qat_int8_tflite_acc"] - res["dense_acc"]), 3)
    log(f"seed {seed}: QAT keras {res['qat_keras_acc']:.4f} int8 file "
        f"{res['qat_int8_tflite_acc']:.4f} agreement "
        f"{res['qat_int8_agreement_vs_qat_keras']:.4f}")

    dense_path = os.path.join(workdir, f"dense_{seed}.tflite")
    res["dense_float32"] = _export(dense, dense_path)
    res["dense_float32"].pop("report")
    ptq_path = common.write_bytes(
        os.path.join(workdir, f"ptq_{seed}.tflite"),
        common.convert_keras(dense, "ptq", representative=x_train[:256]))
    res["ptq_int8"] = common.file_sizes(ptq_path)
    res["ptq_int8_tflite_acc"] = common.tflite_accuracy(ptq_path, x_test, y_test)
    res["ptq_int8_minus_float_points"] = round(
        100 * (res["ptq_int8_tflite_acc"] - res["dense_acc"]), 3)
    keras.backend.clear_session()
    return res, dense


def overhead(data, dense, repeats: int, steps: int, log) -> dict:
    import keras

    x_train, y_train, _, _ = data
    base = common.compile_classifier(_copy(dense), keras)
    qat = common.compile_classifier(_quantize(_copy(dense), x_train[:256]), keras)
    cb = keras.callbacks.Callback
    runners = [
        ("float", common.fit_round(base, x_train, y_train, cb, steps)),
        ("qat", common.fit_round(qat, x_train, y_train, cb, steps)),
    ]
    log(f"interleaved step timing: {repeats} rounds x {steps} steps x 2 models")
    res = common.interleaved_step_times(runners, repeats=repeats, warmup=1)
    res["steps_per_round"] = steps
    res["how"] = common.OVERHEAD_HOW
    return res


def mobilenet(log, threads=(1, 2)) -> dict:
    import keras

    res, model, representative = common.mobilenet_model(keras)
    with tempfile.TemporaryDirectory() as d:
        float_path = os.path.join(d, "float.tflite")
        first = _export(model, float_path)  # also warms the converter up
        res["float32"] = {k: first[k] for k in ("bytes", "gzip_bytes")}
        log(f"MobileNetV2 float32 {res['float32']}")

        t0 = time.perf_counter()
        ptq_path = common.write_bytes(
            os.path.join(d, "ptq.tflite"),
            common.convert_keras(model, "ptq", representative=representative))
        res["ptq_convert_s"] = round(time.perf_counter() - t0, 2)
        res["ptq_int8"] = common.file_sizes(ptq_path)
        log(f"MobileNetV2 PTQ int8 {res['ptq_int8']}")

        t0 = time.perf_counter()
        qat = _quantize(_copy(model), representative)
        res["quantize_s"] = round(time.perf_counter() - t0, 2)
        qat(representative, training=True)
        qat_path = os.path.join(d, "qat.tflite")
        float_times, qat_times, exported = [], [], None
        float_export = first
        for _ in range(common.CONVERT_REPEATS):
            float_export = _export(model, float_path)
            float_times.append(float_export["export_s"])
            exported = _export(qat, qat_path, quantization="int8", **_INT8_IO)
            qat_times.append(exported["export_s"])
        res["qat_int8"] = {k: exported[k] for k in ("bytes", "gzip_bytes")}
        res["qat_int8_report"] = {k: v for k, v in exported["report"].items()
                                  if k != "ops"}
        res["qat_int8_ops"] = exported["report"].get("ops")
        res["float32_export_s"] = min(float_times)
        res["float32_converter_s"] = float_export["report"].get("conversion_seconds")
        res["qat_converter_s"] = exported["report"].get("conversion_seconds")
        res["qat_export_s"] = min(qat_times)
        res["qat_export_ratio"] = round(res["qat_export_s"] / res["float32_export_s"], 3)
        res["qat_int8_vs_ptq_int8_bytes"] = round(
            res["qat_int8"]["bytes"] / res["ptq_int8"]["bytes"], 4)
        log(f"MobileNetV2 QAT int8 {res['qat_int8']} export {res['qat_export_s']}s vs "
            f"float {res['float32_export_s']}s")

        res["latency_ms"] = {}
        for name, path in (("float32", float_path), ("ptq_int8", ptq_path),
                           ("qat_int8", qat_path)):
            for t in threads:
                res["latency_ms"][f"{name}@{t}"] = common.tflite_latency(path, t)
        for t in threads:
            res[f"qat_int8_speedup@{t}"] = round(
                res["latency_ms"][f"float32@{t}"]["median_ms"]
                / res["latency_ms"][f"qat_int8@{t}"]["median_ms"], 3)
        log(f"MobileNetV2 latency {res['latency_ms']}")
    return res


def main(argv=None) -> dict:
    return common.run_sections(
        "qat", __doc__, argv, digits_seed=digits_seed, overhead=overhead,
        mobilenet=mobilenet, mean_keys=("dense_acc", "qat_keras_acc",
                                                  "qat_int8_tflite_acc",
                                                  "qat_int8_minus_float_points",
                                                  "qat_int8_agreement_vs_qat_keras",
                                                  "ptq_int8_tflite_acc",
                                                  "ptq_int8_minus_float_points"))


if __name__ == "__main__":
    main()
