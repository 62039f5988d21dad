"""Peer: Keras 3's own post-training `model.quantize("int8")` on the digits models.

Keras 3 ships weight-only post-training quantization (`model.quantize(mode)`),
for Dense, EinsumDense and Embedding layers. It is the first thing a Keras
user tries, so it is the natural peer of tfaccel's QAT + int8 export. This
benchmark trains the same digits models as the other benchmarks (the digits
CNN of `common.make_cnn`, whose Conv2D layers Keras does not quantize, and a
Dense-only MLP, where every weight layer is quantized), then records:

- accuracy on the digits test split, float vs after `model.quantize("int8")`;
- which layers were quantized (class and `quantization_mode`);
- the bytes of the model's weights in memory before and after;
- whether the quantized Keras model converts to TFLite at all (the error
  message when it does not), with and without `Optimize.DEFAULT`.

Usage:

    .venv/bin/python benchmarks/peer_keras_quantize.py \
        --out benchmarks/results/peer_keras_quantize.json

Prints one JSON object to stdout (progress goes to stderr).
`render_keras_quantize(result)` returns the markdown lines for BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MODELS = ("cnn", "mlp")
MLP_UNITS = (128, 64)
MODE = "int8"


def make_mlp(keras_module: Any = None, units=MLP_UNITS, classes: int = 10):
    """A Dense-only digits model: Flatten, Dense(128, relu), Dense(64, relu), Dense(10)."""
    if keras_module is None:
        import keras as keras_module
    k = keras_module
    inputs = k.Input((8, 8, 1))
    x = k.layers.Flatten()(inputs)
    for u in units:
        x = k.layers.Dense(u, activation="relu")(x)
    outputs = k.layers.Dense(classes)(x)
    return k.Model(inputs, outputs, name="digits_mlp")


def weight_bytes(model) -> int:
    """Bytes of every weight the model holds (int8 kernels, scales and all)."""
    return int(sum(np.asarray(v.numpy()).nbytes for v in model.weights))


def quantized_layers(model) -> dict[str, str]:
    """`layer name -> "Class/mode"` for each layer `quantize` touched."""
    out = {}
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001
        mode = getattr(layer, "quantization_mode", None)
        if mode:
            out[layer.name] = f"{layer.__class__.__name__}/{mode}"
    return out


def weight_layers(model) -> dict[str, str]:
    """`layer name -> Class` for each layer that owns a kernel."""
    return {layer.name: layer.__class__.__name__
            for layer in model._flatten_layers(include_self=False)  # noqa: SLF001
            if any(w.path.endswith("kernel") for w in layer.weights)}


def _first_error_line(e: Exception) -> str:
    """The message of a converter error, without the MLIR location noise."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            msg = ln[ln.index("error:") + len("error:"):]
            # Drop the MLIR `loc(callsite(...)):` prefix, keep the op's message.
            msg = re.sub(r"^\s*loc\(.*\)\s*:\s*", "", msg).strip()
            return f"{type(e).__name__}: {msg[:400]}"
    return f"{type(e).__name__}: {(lines[0] if lines else text)[:400]}"


def try_convert(model, x_test, y_test, workdir: str, tag: str,
                optimize: bool) -> dict[str, Any]:
    """Converts `model` with the TF converter; sizes and accuracy, or the error."""
    import tensorflow as tf

    res: dict[str, Any] = {"optimizations": "DEFAULT" if optimize else None}
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        data = converter.convert()
    except Exception as e:  # noqa: BLE001 - the error IS the figure
        res["converts"] = False
        res["error"] = _first_error_line(e)
        res["error_full"] = str(e)[-1500:]
        return res
    path = common.write_bytes(os.path.join(workdir, f"{tag}.tflite"), data)
    res["converts"] = True
    res.update(common.file_sizes(path))
    try:
        res["tflite_acc"] = common.tflite_accuracy(path, x_test, y_test)
    except Exception as e:  # noqa: BLE001 - converted but does not run
        res["runs"] = False
        res["run_error"] = _first_error_line(e)
    return res


def one_model(kind: str, data, seed: int, workdir: str, log,
              convert: bool) -> dict[str, Any]:
    import keras

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = common.make_cnn(keras) if kind == "cnn" else make_mlp(keras)
    common.compile_classifier(model, keras)
    model.fit(x_train, y_train, epochs=common.DENSE_EPOCHS, batch_size=common.BATCH,
              verbose=0)
    res: dict[str, Any] = {"seed": seed}
    res["float_acc"] = common.accuracy(model, x_test, y_test)
    res["float_weight_bytes"] = weight_bytes(model)
    float_logits = model.predict(x_test, verbose=0, batch_size=256)
    res["weight_layers"] = weight_layers(model)

    model.quantize(MODE)
    res["quantized_layers"] = quantized_layers(model)
    res["skipped_layers"] = sorted(set(res["weight_layers"]) - set(res["quantized_layers"]))
    q_logits = model.predict(x_test, verbose=0, batch_size=256)
    res["int8_acc"] = float(np.mean(np.argmax(q_logits, -1) == y_test))
    res["int8_minus_float_points"] = round(100 * (res["int8_acc"] - res["float_acc"]), 3)
    res["int8_agreement_vs_float"] = float(
        np.mean(np.argmax(q_logits, -1) == np.argmax(float_logits, -1)))
    res["int8_weight_bytes"] = weight_bytes(model)
    res["int8_vs_float_weight_bytes"] = round(
        res["int8_weight_bytes"] / res["float_weight_bytes"], 4)
    log(f"{kind} seed {seed}: float {res['float_acc']:.4f} int8 {res['int8_acc']:.4f} "
        f"bytes {res['float_weight_bytes']} -> {res['int8_weight_bytes']}")
    if convert:
        res["tflite"] = {
            "plain": try_convert(model, x_test, y_test, workdir, f"{kind}_{seed}", False),
            "optimize_default": try_convert(model, x_test, y_test, workdir,
                                            f"{kind}_{seed}_opt", True),
        }
        for k, v in res["tflite"].items():
            log(f"{kind} seed {seed}: TFLite {k}: "
                f"{'converts' if v['converts'] else v['error']}")
    keras.backend.clear_session()
    return res


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--seeds", default=",".join(map(str, common.SEEDS)))
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"--models must be among {MODELS}. Received: {sorted(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    log = common.Clock("peer_keras_quantize")
    recipe = common.recipe()
    recipe["mlp"] = (f"Flatten, Dense{MLP_UNITS} relu, Dense(10); trained like the "
                     "CNN (the 'dense' recipe)")
    recipe["keras_quantize"] = (f'model.quantize("{MODE}") after float training '
                                "(post-training, weight-only, no calibration data)")
    result: dict[str, Any] = {"benchmark": "peer_keras_quantize",
                              "command": common.command_line(),
                              "env": common.env_info(), "recipe": recipe}
    data = common.load_digits_split()
    with tempfile.TemporaryDirectory() as workdir:
        for kind in models:
            rows = [one_model(kind, data, s, workdir, log, convert=(i == 0))
                    for i, s in enumerate(seeds)]
            mean = {k: round(statistics.mean(r[k] for r in rows), 5)
                    for k in ("float_acc", "int8_acc", "int8_minus_float_points",
                              "int8_agreement_vs_float", "int8_vs_float_weight_bytes")}
            first = rows[0]
            result[kind] = {
                "seeds": rows,
                "mean": mean,
                "float_weight_bytes": first["float_weight_bytes"],
                "int8_weight_bytes": first["int8_weight_bytes"],
                "quantized_layers": first["quantized_layers"],
                "skipped_layers": first["skipped_layers"],
                "tflite": first.get("tflite"),
            }
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    return result


# --------------------------------------------------------------------------
# Report.


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _tflite_cell(t: dict | None) -> str:
    if not t:
        return "n/a"
    if t.get("converts"):
        acc = t.get("tflite_acc")
        return f"converts ({t['bytes']} B, acc {_pct(acc)})"
    return "**fails**: `" + t.get("error", "?").replace("`", "'").replace("|", "/") + "`"


def _tflite_both(t: dict) -> str:
    plain, opt = _tflite_cell(t.get("plain")), _tflite_cell(t.get("optimize_default"))
    if plain == opt:
        return plain + " (same with `Optimize.DEFAULT`)"
    return f"plain: {plain}; `Optimize.DEFAULT`: {opt}"


def render_keras_quantize(d: dict) -> list[str]:
    """Markdown lines for the Keras `model.quantize` peer section."""
    lines = ['## Peer: Keras 3 `model.quantize("int8")` (post-training, weight-only)', ""]
    if not d:
        return lines + ["Not run: `.venv/bin/python benchmarks/peer_keras_quantize.py "
                        "--out benchmarks/results/peer_keras_quantize.json`", ""]
    names = {"cnn": "digits CNN", "mlp": "digits MLP (Dense only)"}
    header = ["model", "float acc", "int8 acc (Keras)", "Δ points", "layers quantized",
              "weight bytes float → int8", "TFLite conversion"]
    rows = []
    n = 0
    for kind in MODELS:
        m = d.get(kind)
        if not m:
            continue
        mean = m["mean"]
        n = len(m["seeds"])
        q = m["quantized_layers"]
        rows.append([
            names[kind],
            _pct(mean["float_acc"]),
            _pct(mean["int8_acc"]),
            f"{mean['int8_minus_float_points']:+.2f}",
            f"{len(q)} of {len(q) + len(m['skipped_layers'])}"
            + (f" (skipped: {', '.join(m['skipped_layers'])})" if m["skipped_layers"] else ""),
            f"{m['float_weight_bytes']:,} → {m['int8_weight_bytes']:,} "
            f"({m['mean']['int8_vs_float_weight_bytes']:.2f}x)",
            _tflite_both(m.get("tflite") or {}),
        ])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        f"Accuracies are means over {n} seeds on the 397-image digits test split; "
        "bytes are the model's weights in memory (int8 kernels plus their float "
        "scales); TFLite is tried on the first seed's quantized model with "
        "`TFLiteConverter.from_keras_model`. Keras quantizes only Dense, "
        "EinsumDense and Embedding weights (activations stay float), so it shrinks "
        "the Keras model but gives no int8 TFLite file; tfaccel's QAT export does.",
        "",
        f"Command: `{d.get('command', '.venv/bin/python benchmarks/peer_keras_quantize.py')}`",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
