"""The end-to-end demo behind `make demo` and `tfaccel demo`.

Trains a small CNN on scikit-learn's bundled real digits (offline), prunes it
to 80% sparsity inside `fit`, strips it, fine-tunes it with quantization-aware
training, distills a small student from it, and exports float32 and int8
TFLite files into `saved_models/`, then prints what each step cost.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Row:
    variant: str
    accuracy: float
    sparsity: float | None = None
    bytes: int | None = None
    gzip_bytes: int | None = None
    agreement: float | None = None


# A student with ~10x fewer parameters than the digits CNN.
STUDENT_FILTERS = (1, 2)


def load_digits(seed: int = 0, split: int = 1400):
    """scikit-learn's 1,797 real 8x8 digits, NHWC float32 in [0, 1]."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "The demo needs scikit-learn for its bundled digits data: "
            "pip install scikit-learn"
        ) from e
    data = _load()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:split], y[:split], x[split:], y[split:]


def digits_cnn(filters=(8, 16), name="digits_cnn"):
    """Conv-BN-ReLU x2, Flatten, Dense: the digits CNN used throughout."""
    import keras

    inputs = keras.Input((8, 8, 1))
    x = inputs
    for f in filters:
        x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs, name=name)


def _compile(model, lr=1e-3):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _accuracy(model, x, y) -> float:
    logits = model.predict(x, verbose=0, batch_size=256)
    return float(np.mean(np.argmax(logits, -1) == y))


def _fmt(value, kind):
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "kb":
        return f"{value / 1024:.1f} KB"
    return str(value)


def print_table(rows: list[Row]) -> str:
    header = ["variant", "accuracy", "sparsity", "file", "gzip", "agreement"]
    lines = [
        [
            r.variant,
            _fmt(r.accuracy, "pct"),
            _fmt(r.sparsity, "pct"),
            _fmt(r.bytes, "kb"),
            _fmt(r.gzip_bytes, "kb"),
            _fmt(r.agreement, "pct"),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    text = "\n".join(out)
    print(text)
    return text


def run(out_dir: str = "saved_models", epochs: int = 10, seed: int = 0) -> list[Row]:
    """Runs the whole demo and returns the table rows."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import tfaccel

    keras.utils.set_random_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits(seed)
    rows: list[Row] = []
    t0 = time.perf_counter()

    def step(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    # 1. Dense baseline.
    step(f"training the dense digits CNN ({epochs} epochs)")
    dense = _compile(digits_cnn())
    dense.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    dense_report = tfaccel.export_tflite(
        dense, os.path.join(out_dir, "digits_dense_float32.tflite"),
        verification_data=x_test,
    )
    rows.append(Row("dense float32", _accuracy(dense, x_test, y_test), 0.0,
                    dense_report.bytes, dense_report.gzip_bytes,
                    dense_report.agreement))

    step("post-training int8 export of the dense model (calibrated on 500 samples)")
    ptq_report = tfaccel.export_tflite(
        dense, os.path.join(out_dir, "digits_dense_int8.tflite"),
        quantization="int8", representative_data=x_train[:500],
        verification_data=x_test,
    )
    rows.append(Row("dense int8 (post-training)",
                    _int8_accuracy(ptq_report.path, x_test, y_test), 0.0,
                    ptq_report.bytes, ptq_report.gzip_bytes, ptq_report.agreement))

    # 2. Prune to 80% inside fit, then strip.
    steps_per_epoch = int(np.ceil(len(x_train) / 32))
    end = steps_per_epoch * max(1, epochs - 2)
    schedule = tfaccel.schedules.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=end,
        frequency=max(1, steps_per_epoch // 2),
    )
    step(f"pruning to 80% inside fit ({epochs} epochs, schedule ends at step {end})")
    pruned = _compile(tfaccel.prune(dense, schedule=schedule))
    pruned.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
               callbacks=[tfaccel.callbacks.PruningSummary()])
    stripped = tfaccel.strip_pruning(pruned)
    weights_sparsity = tfaccel.sparsity(stripped)
    pruned_report = tfaccel.export_tflite(
        stripped, os.path.join(out_dir, "digits_pruned_float32.tflite"),
        verification_data=x_test,
    )
    stripped.save(os.path.join(out_dir, "digits_pruned.keras"))
    rows.append(Row("pruned 80% float32", _accuracy(stripped, x_test, y_test),
                    pruned_report.sparsity, pruned_report.bytes,
                    pruned_report.gzip_bytes, pruned_report.agreement))

    # 3. Quantization-aware fine-tune of the pruned model, int8 export.
    step("quantization-aware fine-tuning of the pruned model (3 epochs)")
    qat = _compile(tfaccel.quantize(stripped, calibration_data=x_train[:256]), 1e-4)
    qat.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    int8_report = tfaccel.export_tflite(
        qat, os.path.join(out_dir, "digits_pruned_int8.tflite"),
        quantization="int8", verification_data=x_test,
    )
    rows.append(Row("pruned 80% + QAT int8", _int8_accuracy(int8_report.path, x_test, y_test),
                    int8_report.sparsity, int8_report.bytes, int8_report.gzip_bytes,
                    int8_report.agreement))

    # 4. Distillation: a much smaller student, alone vs distilled from `dense`.
    step("training a small student alone and distilled from the dense CNN")
    keras.utils.set_random_seed(seed)
    alone = _compile(digits_cnn(filters=STUDENT_FILTERS, name="student_alone"))
    initial = alone.get_weights()
    alone.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    student = digits_cnn(filters=STUDENT_FILTERS, name="student")
    student.set_weights(initial)  # the same start as the student trained alone
    dense.trainable = False  # the teacher is frozen
    distiller = tfaccel.distill(student, dense, temperature=2.0, alpha=0.5,
                                cache_teacher=True)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    distiller.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    rows.append(Row(f"student alone ({alone.count_params():,} params)",
                    _accuracy(alone, x_test, y_test)))
    rows.append(Row("student distilled (same start)",
                    _accuracy(distiller.student, x_test, y_test)))

    for name, text in (("json", int8_report.to_json()), ("md", int8_report.to_markdown())):
        with open(os.path.join(out_dir, f"digits_pruned_int8_report.{name}"), "w") as f:
            f.write(text)
    _plots(rows[:4], weights_sparsity, out_dir)
    step("done")
    print()
    print("Per-layer sparsity of the pruned model: "
          + ", ".join(f"{k}: {v:.1%}" for k, v in weights_sparsity.items()))
    print(f"Artifacts in {os.path.abspath(out_dir)}")
    print()
    print_table(rows)
    return rows


def _plots(rows: list[Row], weights_sparsity: dict, out_dir: str) -> None:
    """Accuracy vs size and sparsity per layer, as PNG (needs matplotlib)."""
    try:
        from tfaccel import plots

        plots.plot_accuracy_vs_size(
            [{"name": r.variant, "accuracy": r.accuracy, "bytes": r.bytes,
              "gzip_bytes": r.gzip_bytes} for r in rows],
            os.path.join(out_dir, "accuracy_vs_size.png"),
        )
        plots.plot_sparsity_per_layer(
            weights_sparsity, os.path.join(out_dir, "sparsity_per_layer.png"),
            target=0.8,
        )
    except ImportError as e:
        print(f"(plots skipped: {e})")


def _int8_accuracy(path, x, y) -> float:
    from tfaccel.export import run_tflite

    logits = run_tflite(path, x)
    return float(np.mean(np.argmax(logits, -1) == y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="tfaccel demo",
        description="Prune, quantize, distill and export a digits CNN, offline.",
    )
    parser.add_argument("--out-dir", default="saved_models",
                        help="where the .tflite/.keras artifacts go (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs for each training phase (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.out_dir, args.epochs, args.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
