"""KerasHub backbones (built from a config, no weights) through tfaccel's int8 path.

The `hub` section of `benchmarks/transformers.py`:

- a 2-layer BERT-style text classifier: `keras_hub.models.BertBackbone`
  (vocabulary 32, hidden 32, 2 heads, intermediate 64) reading each digit as
  a "sentence" of 64 tokens (its pixel intensities 0..16, real data), its
  pooled output into `Dense(10)`; trained float for a few epochs;
- a small ViT: `keras_hub.models.ViTBackbone` (8x8x1 images, 2x2 patches,
  2 layers, 4 heads, hidden 32), its class token into `Dense(10)`; trained
  float the same way.

Each goes through `tfaccel.quantize` (its `TransformerEncoder`,
`PositionEmbedding`, `ViTPatchingAndEmbedding` and `ViTEncoder` layers are
quantized from the inside, `tfaccel.quantization.QuantizedSublayers`; where
QAT refuses a layer the error is recorded and the refused layers are kept
float with `skip=`), calibrated on 256 training samples, no QAT epochs ->
`export_tflite(quantization="int8", verification_data=...)` -> op table by
dtype, accuracy of the file, and float32 vs int8 latency at 1 and 2
threads (`tfaccel.export.benchmark_tflite` on one real test sample,
`inputs=`; it is also run once on random inputs, whose token ids it draws
within the embedding tables).
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import common
import numpy as np

SEQ, VOCAB = 64, 32
BERT = {"num_layers": 2, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64}
VIT = {"patch_size": 2, "num_layers": 2, "num_heads": 4, "hidden_dim": 32, "mlp_dim": 64}
HUB_EPOCHS = 10
NAMES = ("token_ids", "segment_ids", "padding_mask")


def recipe() -> dict[str, str]:
    return {
        "bert": f"keras_hub BertBackbone({BERT}, vocabulary {VOCAB}, sequence "
        f"{SEQ}) on digits read as 64 pixel tokens, pooled -> Dense(10); Adam "
        f"{common.LR}, {HUB_EPOCHS} float epochs; quantize (calibrated, no QAT "
        "epochs) -> export_tflite(int8)",
        "vit": f"keras_hub ViTBackbone({VIT}, image 8x8x1) -> class token -> Dense(10); "
        f"Adam {common.LR}, {HUB_EPOCHS} float epochs; quantize (calibrated, no QAT "
        "epochs) -> export_tflite(int8)",
    }


def digit_tokens(x: np.ndarray) -> dict[str, np.ndarray]:
    """Digits as BERT inputs: 64 pixel-intensity tokens, one segment, no padding."""
    tokens = np.rint(x.reshape(len(x), -1) * 16).astype("int32")
    return dict(zip(NAMES, [tokens, np.zeros_like(tokens), np.ones_like(tokens)]))


def bert_classifier():
    """A dict of inputs, as KerasHub backbones take them."""
    import keras
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, max_sequence_length=SEQ, **BERT
    )
    inputs = {n: keras.Input((SEQ,), dtype="int32", name=n) for n in NAMES}
    pooled = backbone(inputs)["pooled_output"]
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(pooled))


def vit_classifier():
    import keras
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(image_shape=(8, 8, 1), **VIT)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10, name="logits")(backbone(inputs)[:, 0])
    return keras.Model(inputs, outputs)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400]}"


def _latency(path: str, threads=(1, 2), inputs=None) -> dict[str, dict[str, float]]:
    from tfaccel.export import benchmark_tflite

    rows = benchmark_tflite(path, threads=list(threads), runs=100, warmup=10,
                            inputs=inputs)
    return {str(r["threads"]): {"median_ms": round(r["median_ms"], 4),
                                "min_ms": round(r["min_ms"], 4)} for r in rows}


def _file_accuracy(path: str, x, y: np.ndarray) -> float:
    from tfaccel.export.run import signature_runner

    runner = signature_runner(path)
    feeds = x if isinstance(x, dict) else {next(iter(runner.get_input_details())): x}
    logits = [
        next(iter(runner(**{n: a[i : i + 1] for n, a in feeds.items()}).values()))
        for i in range(len(y))
    ]
    return float(np.mean(np.argmax(np.concatenate(logits), -1) == y))


def _export(model, path: str, data, **kwargs) -> dict[str, Any]:
    import tfaccel

    report = tfaccel.export_tflite(model, path, verification_data=data, **kwargs)
    out = common.file_sizes(path)
    out["ops"] = common.tflite_op_summary(path)
    out["agreement"] = report.agreement
    out["int8_coverage"] = report.int8_coverage
    return out


def _quantize(model, calib, refused_classes) -> tuple[Any, dict[str, Any]]:
    """QAT as is; if refused, again with the refused KerasHub layers float."""
    import tfaccel

    info: dict[str, Any] = {}
    try:
        return tfaccel.quantize(model, calibration_data=calib), info
    except Exception as exc:  # noqa: BLE001 - recorded in the result
        info["qat_error"] = _error(exc)
    info["skip"] = [c.__name__ for c in refused_classes]
    try:
        qat = tfaccel.quantize(model, calibration_data=calib, skip=refused_classes)
        return qat, info
    except Exception as exc:  # noqa: BLE001
        info["qat_skip_error"] = _error(exc)
        return None, info


def _row(build, x_train, y_train, x_test, y_test, name, workdir, refused, inputs):
    import keras

    keras.utils.set_random_seed(0)
    model = common.compile_classifier(build(), keras)
    model.fit(x_train, y_train, epochs=HUB_EPOCHS, batch_size=common.BATCH, verbose=0)
    res: dict[str, Any] = {"params": model.count_params()}
    res["float_acc"] = common.accuracy(model, x_test, y_test)
    paths = {"float32": os.path.join(workdir, f"hub_{name}_float.tflite")}
    res["float32"] = _export(model, paths["float32"], x_test)
    calib = keras.tree.map_structure(lambda a: a[:256], x_train)
    qat, info = _quantize(model, calib, refused)
    res.update(info)
    if qat is not None:
        res["qat_keras_acc"] = common.accuracy(qat, x_test, y_test)
        paths["int8"] = os.path.join(workdir, f"hub_{name}_int8.tflite")
        res["int8"] = _export(qat, paths["int8"], x_test, quantization="int8")
        res["int8"]["acc"] = _file_accuracy(paths["int8"], x_test, y_test)
        res["int8"]["vs_float32_bytes"] = round(
            res["int8"]["bytes"] / res["float32"]["bytes"], 4
        )
    try:  # random inputs (token ids drawn within the embedding tables)
        _latency(paths["float32"], threads=[1])
    except Exception as exc:  # noqa: BLE001
        res["benchmark_tflite_error"] = _error(exc)
    for kind, path in paths.items():
        res[kind]["latency"] = _latency(path, inputs=inputs)
    keras.backend.clear_session()
    return res


def bert_row(data, workdir: str, log) -> dict[str, Any]:
    from keras_hub.layers import PositionEmbedding, TransformerEncoder

    x_train, y_train, x_test, y_test = data
    t_test = digit_tokens(x_test)
    res = _row(bert_classifier, digit_tokens(x_train), y_train, t_test, y_test,
               "bert", workdir, [PositionEmbedding, TransformerEncoder],
               {k: v[:1] for k, v in t_test.items()})
    log(f"hub bert: float {res['float_acc']:.4f}, int8 {res.get('int8', {}).get('acc')}")
    return res


def vit_row(data, workdir: str, log) -> dict[str, Any]:
    from keras_hub.src.models.vit.vit_layers import ViTEncoder, ViTPatchingAndEmbedding

    x_train, y_train, x_test, y_test = data
    res = _row(vit_classifier, x_train, y_train, x_test, y_test, "vit", workdir,
               [ViTPatchingAndEmbedding, ViTEncoder], x_test[:1])
    log(f"hub vit: float {res['float_acc']:.4f}, int8 {res.get('int8', {}).get('acc')}")
    return res


def hub_section(data, workdir: str, log) -> dict[str, Any]:
    try:
        import keras_hub
    except ImportError as exc:
        return {"error": _error(exc)}
    out: dict[str, Any] = {"keras_hub": keras_hub.__version__, "recipe": recipe()}
    for name, fn in (("bert", bert_row), ("vit", vit_row)):
        try:
            out[name] = fn(data, workdir, log)
        except Exception as exc:  # noqa: BLE001 - a failed row is a result
            out[name] = {"error": _error(exc), "trace": traceback.format_exc()[-2000:]}
    out["load_avg"] = list(os.getloadavg())
    return out


# --------------------------------------------------------------------------
# Report.


def _ops(ops: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('/', '[')}] x{n}" for k, n in sorted(ops.items()))


def _lat(r: dict | None) -> str:
    lat = (r or {}).get("latency")
    if not lat:
        return "n/a"
    return f"{lat['1']['median_ms']:.3f} / {lat['2']['median_ms']:.3f}"


def render_hub(d: dict | None, command: str = "") -> list[str]:
    """Markdown lines for the KerasHub part of the transformers section."""
    if not d:
        return []
    lines = [f"### KerasHub backbones (keras-hub {d.get('keras_hub', '?')}, "
             "built from a config, no weights)", ""]
    if "error" in d:
        return lines + [f"Not run: {d['error']}", ""]
    header = ["model", "params", "QAT", "int8 coverage", "agreement int8 vs QAT",
              "file bytes vs float32", "latency float32 1 / 2 threads (median ms)",
              "latency int8 1 / 2 threads (median ms)"]
    table = []
    for name, label in (("bert", "BERT-style classifier"), ("vit", "ViT")):
        r = d.get(name) or {}
        if "error" in r:
            table.append([label, "", f"**failed**: {r['error']}", "", "", "", "", ""])
            continue
        q = r.get("int8")
        qat = ("refused: kept float " + ", ".join(r["skip"])) if r.get("skip") else "all"
        if r.get("qat_skip_error"):
            qat = "**refused** (see below)"
        table.append([
            label, f"{r.get('params', 0):,}", qat,
            f"{q['int8_coverage']:.0%}" if q and q.get("int8_coverage") is not None
            else "n/a",
            f"{q['agreement']:.2%}" if q and q.get("agreement") is not None else "n/a",
            f"{q['bytes'] / r['float32']['bytes']:.2f}x" if q else "n/a",
            _lat(r.get("float32")), _lat(q),
        ])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in table]
    lines.append("")
    bert, vit = d.get("bert") or {}, d.get("vit") or {}
    for r, what in ((bert, "BERT on digits as 64 pixel tokens"), (vit, "ViT on digits")):
        if "float_acc" in r:
            acc = r.get("int8", {}).get("acc")
            lines += [
                f"{what}, {HUB_EPOCHS} float epochs: float accuracy "
                f"{r['float_acc']:.2%}, int8 file "
                f"{'n/a' if acc is None else f'{acc:.2%}'}.",
                "",
            ]
    for r, label in ((bert, "BERT"), (vit, "ViT")):
        for key, what in (("qat_error", "QAT refused"),
                          ("qat_skip_error", "with the refused layers kept float"),
                          ("benchmark_tflite_error", "`benchmark_tflite` on random "
                           "inputs")):
            if r.get(key):
                lines += [f"- {label}, {what}: `{r[key]}`"]
        if r.get("int8"):
            lines += [f"- {label} int8 file ops: {_ops(r['int8']['ops'])}"]
    lines += ["", f"Command: `{command}` (load average after {' '.join(f'{v:.2f}' for v in d.get('load_avg') or [])})", ""]
    return lines
