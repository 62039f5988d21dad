"""The head-pruning section of `benchmarks/transformers.py` (`--sections heads`).

50% of the heads of the trained digits ViT removed two ways: one-shot
(`tfaccel.pruning.heads.prune_heads`, then a float fine-tune) and on a
schedule during the same fine-tune (`tfaccel.prune(structure="heads")`,
then `strip_pruning`); parameters, MACs, accuracy, and the QAT int8 file's
accuracy and latency next to the unpruned model's.
"""

from __future__ import annotations

import os
from typing import Any

import common
import numpy as np

HEAD_FRACTION = 0.5
HEAD_FINETUNE_EPOCHS = 10


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _load(values) -> str:
    return "n/a" if not values else " ".join(f"{v:.2f}" for v in values)


def vit_macs(model) -> int:
    """Multiply-accumulates of one image: Dense/EinsumDense kernels per token
    and the two attention products (`2 * heads * T * T * head_dim`)."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.MultiHeadAttention):
            tokens = layer.get_build_config()["shapes_dict"]["query_shape"][1]
            for dense in (
                layer._query_dense,
                layer._key_dense,
                layer._value_dense,
                layer._output_dense,
            ):
                macs += tokens * int(np.prod(dense.kernel.shape))
            macs += 2 * layer.num_heads * tokens * tokens * layer.key_dim
        elif isinstance(layer, keras.layers.Dense):
            tokens = int(np.prod(layer.input.shape[1:-1] or (1,)))
            macs += tokens * int(np.prod(layer.kernel.shape))
    return macs


def _qat_int8(model, data, workdir: str, tag: str, qat_epochs: int) -> dict[str, Any]:
    """QAT fine-tune + int8 export of `model`: accuracy, bytes, latency."""
    import keras

    import tfaccel

    x_train, y_train, x_test, y_test = data
    qat = tfaccel.quantize(model, calibration_data=x_train[:256])
    common.compile_classifier(qat, keras, lr=common.QAT_LR)
    qat.fit(x_train, y_train, epochs=qat_epochs, batch_size=common.BATCH, verbose=0)
    path = os.path.join(workdir, f"{tag}.tflite")
    tfaccel.export_tflite(qat, path, quantization="int8", verification_data=x_test)
    out = common.file_sizes(path)
    out["acc"] = common.tflite_accuracy(path, x_test, y_test)
    out["latency"] = {
        str(t): common.tflite_latency(path, t, runs=200, warmup=20) for t in (1, 2)
    }
    return out


def head_pruning(data, workdir: str, log, build, epochs: int, qat_epochs: int,
                 seed: int = 0) -> dict[str, Any]:
    """50% of the heads removed from a trained ViT, fine-tuned, then QAT int8."""
    import keras

    from tfaccel.pruning.heads import prune_heads

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = common.compile_classifier(build(), keras)
    model.fit(x_train, y_train, epochs=epochs, batch_size=common.BATCH, verbose=0)
    res: dict[str, Any] = {"seed": seed, "fraction": HEAD_FRACTION}
    res["dense"] = {
        "params": model.count_params(),
        "macs": vit_macs(model),
        "acc": common.accuracy(model, x_test, y_test),
    }
    small = common.compile_classifier(prune_heads(model, HEAD_FRACTION), keras)
    res["pruned_before_finetune_acc"] = common.accuracy(small, x_test, y_test)
    small.fit(
        x_train,
        y_train,
        epochs=HEAD_FINETUNE_EPOCHS,
        batch_size=common.BATCH,
        verbose=0,
    )
    res["pruned"] = {
        "params": small.count_params(),
        "macs": vit_macs(small),
        "acc": common.accuracy(small, x_test, y_test),
    }
    log(
        f"heads: dense {res['dense']['acc']:.4f}, pruned {res['pruned_before_finetune_acc']:.4f}"
        f" -> fine-tuned {res['pruned']['acc']:.4f}"
    )
    res["gradual"] = _gradual_heads(model, data, log)
    res["dense"]["qat_int8"] = _qat_int8(model, data, workdir, "heads_dense", qat_epochs)
    res["pruned"]["qat_int8"] = _qat_int8(small, data, workdir, "heads_pruned", qat_epochs)
    res["gradual"]["qat_int8"] = _qat_int8(
        res["gradual"].pop("model"), data, workdir, "heads_gradual", qat_epochs
    )
    res["pruned_minus_dense_points"] = round(
        100 * (res["pruned"]["acc"] - res["dense"]["acc"]), 3
    )
    log(
        f"heads: int8 latency 1 thread {res['dense']['qat_int8']['latency']['1']} -> "
        f"{res['pruned']['qat_int8']['latency']['1']}"
    )
    keras.backend.clear_session()
    return res


def _gradual_heads(model, data, log) -> dict[str, Any]:
    """`prune(structure="heads")`: heads masked on a schedule during the
    fine-tune (ramp over its first half), then `strip_pruning` slices them."""
    import keras

    import tfaccel
    from tfaccel.schedules import PolynomialDecay

    x_train, y_train, x_test, y_test = data
    steps = HEAD_FINETUNE_EPOCHS * -(-len(x_train) // common.BATCH)
    schedule = PolynomialDecay(0.0, HEAD_FRACTION, 0, steps // 2, frequency=steps // 20)
    pruned = common.compile_classifier(
        tfaccel.prune(model, schedule, structure="heads"), keras
    )
    pruned.fit(
        x_train, y_train, epochs=HEAD_FINETUNE_EPOCHS, batch_size=common.BATCH,
        verbose=0,
    )
    small = common.compile_classifier(tfaccel.strip_pruning(pruned), keras)
    res = {
        "schedule": repr(schedule),
        "params": small.count_params(),
        "macs": vit_macs(small),
        "acc": common.accuracy(small, x_test, y_test),
        "masked_acc": common.accuracy(pruned, x_test, y_test),
        "model": small,
    }
    log(f"heads gradual: {res['acc']:.4f} (masked model {res['masked_acc']:.4f})")
    return res



def render_heads(d: dict) -> list[str]:
    h = d.get("heads")
    if not h:
        return []
    header = [
        "ViT",
        "parameters",
        "MACs",
        "float acc",
        "QAT int8 file acc",
        "int8 latency 1 / 2 threads (min ms)",
    ]

    def row(name, r):
        lat = r["qat_int8"]["latency"]
        return [
            name,
            f"{r['params']:,}",
            f"{r['macs']:,}",
            _pct(r["acc"]),
            _pct(r["qat_int8"]["acc"]),
            f"{lat['1']['min_ms']:.3f} / {lat['2']['min_ms']:.3f}",
        ]

    table = [
        row("all heads", h["dense"]),
        row(f"{int(100 * h['fraction'])}% heads removed + fine-tune", h["pruned"]),
    ]
    if h.get("gradual"):
        table.append(
            row(
                f"{int(100 * h['fraction'])}% heads masked during the fine-tune "
                '(`prune(structure="heads")`), stripped',
                h["gradual"],
            )
        )
    return [
        f"Attention-head pruning (`tfaccel.pruning.heads.prune_heads`, seed {h['seed']}): "
        "the lowest-scoring heads of each MultiHeadAttention removed (query, key, "
        "value and output projections sliced together), then "
        f"{HEAD_FINETUNE_EPOCHS} float epochs; accuracy right after removal "
        f"{_pct(h['pruned_before_finetune_acc'])}. Goal: within 1 point of the "
        "unpruned model. The scheduled row starts from the same trained model: "
        f"{h.get('gradual', {}).get('schedule', '')} over the same fine-tune "
        "epochs, then `strip_pruning`; accuracy of the masked model before "
        f"stripping {_pct(h.get('gradual', {}).get('masked_acc'))} (the stripped "
        "model's is in the table).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in table),
        "",
        f"Command: `{d.get('section_commands', {}).get('heads', d.get('command', ''))}` "
        f"(load average after {_load(d.get('load_avg_heads'))})",
        "",
    ]
