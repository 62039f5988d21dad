"""Transformers to int8 TFLite: a digits ViT through QAT, side by side with peers.

A small Vision Transformer written the keras.io way (2x2 patches of the 8x8
digits = 16 tokens, a Dense patch projection plus a learned position
`Embedding`, pre-norm blocks of `LayerNormalization`, `MultiHeadAttention`,
residual adds and a Dense/GELU MLP) trained on the real digits, then:

- tfaccel: `quantize` + a short QAT fine-tune + `export_tflite(int8)`
  (verified against the QAT model): accuracy of the int8 file, op table by
  dtype, file size vs the float32 file;
- the converter's post-training int8 of the float model (representative
  data, `TFLITE_BUILTINS_INT8`; ops without an int8 kernel are allowed to
  stay float, so this is the converter's best);
- Keras' own `model.quantize("int8")` (post-training, weight-only; accuracy
  in Keras, and whether it converts to TFLite).

Usage:

    .venv/bin/python benchmarks/transformers.py --out benchmarks/results/transformers.json

Prints one JSON object to stdout (progress goes to stderr).
`render_transformers(result)` returns the markdown lines for BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import peer_keras_quantize  # noqa: E402
import transformers_heads  # noqa: E402
import transformers_hub  # noqa: E402
from transformers_heads import _pct  # noqa: E402

DIM, HEADS, BLOCKS, MLP = 32, 4, 2, 64
EPOCHS = 30
QAT_EPOCHS = 3
KERNEL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")
SCALING_DIMS = (32, 64, 128, 192)


def digits_vit(
    dim: int = DIM,
    heads: int = HEADS,
    blocks: int = BLOCKS,
    mlp: int = MLP,
    dropout: float = 0.1,
):
    """The digits ViT: 16 tokens of 2x2 pixels, `blocks` pre-norm blocks.

    keras.io's `PatchEncoder` layer written with functional ops so that every
    layer is visible to `quantize`: the position ids are computed from the
    patches' shape (`cumsum` of ones: a constant `arange` added to a
    batch-shaped zero tensor becomes an int32 BiasAdd the TFLite converter
    cannot lower).
    """
    import keras
    from keras import layers as L

    inputs = keras.Input((8, 8, 1), name="image")
    x = L.Reshape((4, 2, 4, 2))(inputs)
    x = L.Permute((1, 3, 2, 4))(x)
    patches = L.Reshape((16, 4))(x)
    ones = keras.ops.ones_like(patches[:, :, 0], dtype="int32")
    positions = keras.ops.cumsum(ones, axis=1) - 1
    x = L.Dense(dim, name="patch_projection")(patches)
    x = x + L.Embedding(16, dim, name="position_embedding")(positions)
    for i in range(blocks):
        h = L.LayerNormalization(epsilon=1e-6, name=f"norm_{i}a")(x)
        h = L.MultiHeadAttention(
            heads, dim // heads, dropout=dropout, name=f"attention_{i}"
        )(h, h)
        x = L.Add(name=f"residual_{i}a")([h, x])
        h = L.LayerNormalization(epsilon=1e-6, name=f"norm_{i}b")(x)
        h = L.Dense(mlp, activation="gelu", name=f"mlp_{i}_up")(h)
        h = L.Dropout(dropout)(h)
        h = L.Dense(dim, name=f"mlp_{i}_down")(h)
        x = L.Add(name=f"residual_{i}b")([h, x])
    x = L.LayerNormalization(epsilon=1e-6, name="norm_out")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="digits_vit")


def recipe() -> dict[str, str]:
    return {
        "data": common.recipe()["data"],
        "model": (
            f"ViT: 2x2 patches (16 tokens), dim {DIM}, {HEADS} heads, "
            f"{BLOCKS} pre-norm blocks, GELU MLP {MLP}, dropout 0.1, "
            "learned position Embedding, LayerNorm + mean pool + Dense(10)"
        ),
        "float": f"Adam {common.LR}, batch {common.BATCH}, {EPOCHS} epochs",
        "qat": f"tfaccel.quantize from the float model, Adam {common.QAT_LR}, "
        f"{QAT_EPOCHS} epochs; export_tflite(int8), float I/O",
        "ptq": common.recipe()["ptq"].replace("TFLITE_BUILTINS_INT8, ", ""),
        "keras_quantize": 'model.quantize("int8") after float training (post-training, '
        "weight-only)",
    }


def _ptq(model, representative) -> bytes:
    """The converter's full-integer post-training int8 (float ops allowed)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def gen():
        for i in range(len(representative)):
            yield [representative[i : i + 1]]

    converter.representative_dataset = gen
    return converter.convert()


def _kernels_int8(ops: dict[str, int]) -> bool:
    """Whether every FULLY_CONNECTED / BATCH_MATMUL reads int8."""
    kernels = {k: n for k, n in ops.items() if k.split("/")[0] in KERNEL_OPS}
    return bool(kernels) and all(k.endswith("/int8") for k in kernels)


def one_seed(data, seed: int, workdir: str, log, dim: int = DIM) -> dict[str, Any]:
    import keras

    import tfaccel

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = common.compile_classifier(digits_vit(dim=dim, mlp=2 * dim), keras)
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=common.BATCH, verbose=0)
    res: dict[str, Any] = {
        "seed": seed,
        "dim": dim,
        "float_train_s": round(time.perf_counter() - t0, 1),
    }
    res["params"] = model.count_params()
    res["float_acc"] = common.accuracy(model, x_test, y_test)
    log(f"seed {seed}: float {res['float_acc']:.4f}")

    float_path = os.path.join(workdir, f"float_{seed}.tflite")
    tfaccel.export_tflite(model, float_path)
    res["float32"] = common.file_sizes(float_path)

    qat = tfaccel.quantize(model, calibration_data=x_train[:256])
    common.compile_classifier(qat, keras, lr=common.QAT_LR)
    t0 = time.perf_counter()
    qat.fit(x_train, y_train, epochs=QAT_EPOCHS, batch_size=common.BATCH, verbose=0)
    res["qat_train_s"] = round(time.perf_counter() - t0, 1)
    res["qat_keras_acc"] = common.accuracy(qat, x_test, y_test)
    qat_path = os.path.join(workdir, f"qat_{seed}.tflite")
    report = tfaccel.export_tflite(
        qat, qat_path, quantization="int8", verification_data=x_test
    )
    res["qat_int8"] = common.file_sizes(qat_path)
    res["qat_int8"]["agreement_vs_qat_keras"] = report.agreement
    res["qat_int8"]["int8_coverage"] = report.int8_coverage
    res["qat_int8"]["ops"] = common.tflite_op_summary(qat_path)
    res["qat_int8"]["kernels_int8"] = _kernels_int8(res["qat_int8"]["ops"])
    res["qat_int8"]["acc"] = common.tflite_accuracy(qat_path, x_test, y_test)
    res["qat_int8"]["vs_float32_bytes"] = round(
        res["qat_int8"]["bytes"] / res["float32"]["bytes"], 4
    )
    res["qat_int8_minus_float_points"] = round(
        100 * (res["qat_int8"]["acc"] - res["float_acc"]), 3
    )
    log(
        f"seed {seed}: QAT keras {res['qat_keras_acc']:.4f} int8 file "
        f"{res['qat_int8']['acc']:.4f} ({res['qat_int8']['vs_float32_bytes']:.2f}x bytes)"
    )

    ptq_path = common.write_bytes(
        os.path.join(workdir, f"ptq_{seed}.tflite"), _ptq(model, x_train[:256])
    )
    res["ptq_int8"] = common.file_sizes(ptq_path)
    res["ptq_int8"]["ops"] = common.tflite_op_summary(ptq_path)
    res["ptq_int8"]["kernels_int8"] = _kernels_int8(res["ptq_int8"]["ops"])
    res["ptq_int8"]["acc"] = common.tflite_accuracy(ptq_path, x_test, y_test)
    res["ptq_int8"]["vs_float32_bytes"] = round(
        res["ptq_int8"]["bytes"] / res["float32"]["bytes"], 4
    )
    log(f"seed {seed}: converter PTQ int8 file {res['ptq_int8']['acc']:.4f}")

    model.quantize("int8")
    res["keras_int8_acc"] = common.accuracy(model, x_test, y_test)
    res["keras_quantized_layers"] = len(peer_keras_quantize.quantized_layers(model))
    if seed == 0:
        res["keras_int8_tflite"] = peer_keras_quantize.try_convert(
            model, x_test, y_test, workdir, f"keras_{seed}", True
        )
    log(f"seed {seed}: Keras model.quantize int8 {res['keras_int8_acc']:.4f}")
    keras.backend.clear_session()
    return res


def buffer_bytes(path: str) -> int:
    """Bytes of the file's constant buffers (weights), without the graph."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        data = f.read()
    model = schema.Model.GetRootAsModel(data, 0)
    return sum(model.Buffers(i).DataLength() for i in range(model.BuffersLength()))


def size_scaling(x_calib, workdir: str, log, dims=SCALING_DIMS) -> list[dict]:
    """int8 vs float32 file bytes of wider ViTs (calibrated, untrained).

    The file's graph (tensor names, shapes, quantization parameters, ops)
    costs about the same in both files, so the ratio falls towards the
    weights' 0.25x as the model grows. Training does not change sizes.
    """
    import keras

    import tfaccel

    rows = []
    for dim in dims:
        keras.utils.set_random_seed(0)
        model = digits_vit(dim=dim, heads=HEADS, mlp=2 * dim)
        f_path, q_path = (
            os.path.join(workdir, f"scale_{dim}_{k}.tflite") for k in "fq"
        )
        tfaccel.export_tflite(model, f_path)
        qat = tfaccel.quantize(model, calibration_data=x_calib)
        tfaccel.export_tflite(qat, q_path, quantization="int8")
        row = {
            "dim": dim,
            "mlp": 2 * dim,
            "params": model.count_params(),
            "float32_bytes": os.path.getsize(f_path),
            "qat_int8_bytes": os.path.getsize(q_path),
            "float32_weight_bytes": buffer_bytes(f_path),
            "qat_int8_weight_bytes": buffer_bytes(q_path),
        }
        row["file_ratio"] = round(row["qat_int8_bytes"] / row["float32_bytes"], 4)
        row["weight_ratio"] = round(
            row["qat_int8_weight_bytes"] / row["float32_weight_bytes"], 4
        )
        log(
            f"dim {dim}: {row['params']} params, int8/float32 file "
            f"{row['file_ratio']}, weights {row['weight_ratio']}"
        )
        rows.append(row)
        keras.backend.clear_session()
    return rows


def _mean(rows: list[dict]) -> dict[str, float]:
    keys = (
        "float_acc",
        "qat_keras_acc",
        "keras_int8_acc",
        "qat_int8_minus_float_points",
    )
    mean = {k: round(statistics.mean(r[k] for r in rows), 5) for k in keys}
    for kind in ("qat_int8", "ptq_int8"):
        mean[f"{kind}_acc"] = round(statistics.mean(r[kind]["acc"] for r in rows), 5)
        mean[f"{kind}_vs_float32_bytes"] = round(
            statistics.mean(r[kind]["vs_float32_bytes"] for r in rows), 4
        )
    return mean


def vit_key(dim: int) -> str:
    """The JSON section of the vit rows at width `dim`."""
    return "vit" if dim == DIM else f"vit_dim{dim}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--seeds", default=",".join(map(str, common.SEEDS)))
    parser.add_argument(
        "--sections",
        default="vit,scaling",
        help="comma-separated subset of vit,scaling,heads,hub",
    )
    parser.add_argument(
        "--dim",
        type=int,
        default=DIM,
        help=f"ViT width of the vit section (MLP twice that); other than {DIM}, "
        "the rows go to the section vit_dim<N>",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the other sections of the --out file"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sections = [s for s in args.sections.split(",") if s]
    log = common.Clock("transformers")
    result: dict[str, Any] = {}
    if args.merge and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    result.update(
        {
            "benchmark": "transformers",
            "command": common.command_line(),
            "env": common.env_info(),
            "recipe": recipe(),
        }
    )
    commands = result.setdefault("section_commands", {})
    for section in sections:
        if section != "vit":  # the vit rows are keyed by width below
            commands[section] = result["command"]
    data = common.load_digits_split()
    with tempfile.TemporaryDirectory() as workdir:
        if "vit" in sections:
            key = vit_key(args.dim)
            rows = [one_seed(data, s, workdir, log, args.dim) for s in seeds]
            result[key] = {"seeds": rows, "mean": _mean(rows)}
            result[f"load_avg_{key}"] = list(os.getloadavg())
            commands[key] = result["command"]
        if "scaling" in sections:
            result["scaling"] = size_scaling(data[0][:128], workdir, log)
            result["load_avg_scaling"] = list(os.getloadavg())
        if "heads" in sections:
            result["heads"] = transformers_heads.head_pruning(
                data, workdir, log, digits_vit, EPOCHS, QAT_EPOCHS
            )
            result["load_avg_heads"] = list(os.getloadavg())
        if "hub" in sections:
            result["hub"] = transformers_hub.hub_section(data, workdir, log)
    result["elapsed_s"] = log.elapsed()
    common.emit(result, args.out)
    return result


# --------------------------------------------------------------------------
# Report.


def _op_table(ops: dict[str, int]) -> str:
    return ", ".join(f"{k.replace('/', '[')}] x{n}" for k, n in sorted(ops.items()))


def _float_ops_line(ops: dict[str, int]) -> str:
    """What runs float in the QAT file's body (besides its float I/O)."""
    floats = sorted(
        k.split("/")[0]
        for k in ops
        if k.endswith("/float32") and not k.startswith(("QUANTIZE/", "DEQUANTIZE/"))
    )
    ints = "the int32 ops compute shapes and position ids."
    if not floats:
        return (
            "No float op in the QAT file's body: each LayerNormalization runs as "
            "int8 MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, MUL, ADD "
            f"(`tfaccel.quantization.layernorm`); {ints}"
        )
    return f"Float in the QAT file: {', '.join(floats)}; {ints}"


def render_transformers(d: dict) -> list[str]:
    """Markdown lines for the transformers section of BENCHMARKS.md."""
    lines = ["## Transformers: digits ViT to int8 TFLite", ""]
    if not d.get("vit"):
        return lines + [
            "Not run: `.venv/bin/python benchmarks/transformers.py "
            "--out benchmarks/results/transformers.json`",
            "",
        ]
    wider = sorted(
        (k for k in d if k.startswith("vit_dim")), key=lambda k: int(k[len("vit_dim"):])
    )
    for key in ["vit", *wider]:
        lines += _vit_lines(d, key)
    hub = transformers_hub.render_hub(
        d.get("hub"), d.get("section_commands", {}).get("hub", "")
    )
    return lines + _scaling_lines(d) + transformers_heads.render_heads(d) + hub


def _vit_lines(d: dict, key: str) -> list[str]:
    """The accuracy/size table of one ViT width."""
    vit = d[key]
    rows, mean = vit["seeds"], vit["mean"]
    dim = rows[0].get("dim", DIM)
    lines = [f"Width {dim} (MLP {2 * dim}):", ""]
    first = rows[0]
    float_kb = first["float32"]["bytes"] / 1024
    keras_tfl = peer_keras_quantize._tflite_cell(first.get("keras_int8_tflite"))
    header = [
        "path",
        "accuracy",
        "Δ vs float (points)",
        "FC / BATCH_MATMUL int8",
        "file bytes vs float32",
    ]
    table = [
        [
            "float32 (Keras)",
            _pct(mean["float_acc"]),
            "",
            "",
            f"1.00x ({float_kb:.1f} KB)",
        ],
        [
            "tfaccel QAT int8 file",
            _pct(mean["qat_int8_acc"]),
            f"{100 * (mean['qat_int8_acc'] - mean['float_acc']):+.2f}",
            "all" if all(r["qat_int8"]["kernels_int8"] for r in rows) else "**no**",
            f"{mean['qat_int8_vs_float32_bytes']:.2f}x",
        ],
        [
            "converter post-training int8 file",
            _pct(mean["ptq_int8_acc"]),
            f"{100 * (mean['ptq_int8_acc'] - mean['float_acc']):+.2f}",
            "all" if all(r["ptq_int8"]["kernels_int8"] for r in rows) else "**no**",
            f"{mean['ptq_int8_vs_float32_bytes']:.2f}x",
        ],
        [
            'Keras `model.quantize("int8")` (in Keras)',
            _pct(mean["keras_int8_acc"]),
            f"{100 * (mean['keras_int8_acc'] - mean['float_acc']):+.2f}",
            "n/a (no int8 file)",
            keras_tfl,
        ],
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    load = d.get(f"load_avg_{key}") or d.get("load_avg_end")
    lines += [
        "",
        f"Means over {len(rows)} seeds on the 397-image digits test split; "
        f"{first['params']:,} parameters. "
        "Goals (issue 16): QAT int8 file within 0.5 point of float, every "
        "FULLY_CONNECTED / BATCH_MATMUL int8, file ≤ 0.3x the float32 file: "
        f"{_verdict(rows, mean)}.",
        "",
        f"QAT int8 file ops (seed {first['seed']}): {_op_table(first['qat_int8']['ops'])}",
        "",
        f"Converter PTQ int8 file ops: {_op_table(first['ptq_int8']['ops'])}",
        "",
        _float_ops_line(first["qat_int8"]["ops"]),
        "",
        "The QAT row trains 3 more epochs (Adam 1e-4) from the float row's "
        "model: its gain over float is that training, not quantization.",
        "",
        f"Command: `{d.get('section_commands', {}).get(key, d.get('command', ''))}` "
        f"(load average after the seeds {load})",
        "",
    ]
    return lines


def _verdict(rows: list[dict], mean: dict) -> str:
    """Which of issue 16's three ViT goals these rows meet."""
    missed = []
    if 100 * (mean["qat_int8_acc"] - mean["float_acc"]) < -0.5:
        missed.append("accuracy")
    if not all(r["qat_int8"]["kernels_int8"] for r in rows):
        missed.append("int8 kernels")
    if mean["qat_int8_vs_float32_bytes"] > 0.3:
        missed.append("file size")
    return "all met" if not missed else "not met: " + ", ".join(missed)


def _scaling_lines(d: dict) -> list[str]:
    rows = d.get("scaling")
    if not rows:
        return []
    header = [
        "ViT width (MLP)",
        "parameters",
        "float32 file",
        "QAT int8 file",
        "file ratio",
        "weights ratio",
    ]
    table = [
        [
            f"{r['dim']} ({r['mlp']})",
            f"{r['params']:,}",
            f"{r['float32_bytes'] / 1024:.1f} KB",
            f"{r['qat_int8_bytes'] / 1024:.1f} KB",
            f"{r['file_ratio']:.2f}x",
            f"{r['weight_ratio']:.2f}x",
        ]
        for r in rows
    ]
    return [
        "File size vs width (2 blocks, calibrated and untrained: training does "
        "not change sizes). Both files carry the same graph (tensor names, shapes, "
        "quantization parameters, ops: ~30-40 KB here), so the file ratio reaches "
        "the weights' ratio only as the model grows:",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in table),
        "",
        f"Command: `{d.get('section_commands', {}).get('scaling', d.get('command', ''))}`",
        "",
    ]


if __name__ == "__main__":
    main()
