"""Add tfaccel to a Keras training script you already have.

The script below is an ordinary Keras 3 training script (digits CNN, Adam,
`fit`). Making it produce a pruned, quantization-aware trained, int8 TFLite
file is this diff — no custom training loop, no callback to remember:

```diff
+from tfaccel import schedules
+from tfaccel.export import export_tflite
+from tfaccel.pruning import prune, strip_pruning
+from tfaccel.quantization import quantize

 model = build_model()
+steps = epochs * math.ceil(len(x_train) / 32)
+model = prune(model, schedules.PolynomialDecay(
+    initial_sparsity=0.0, final_sparsity=0.8,
+    begin_step=0, end_step=int(0.8 * steps), frequency=10))
 model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
 model.fit(x_train, y_train, epochs=epochs, batch_size=32)
+model = quantize(strip_pruning(model), calibration_data=x_train[:256])
+model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
+model.fit(x_train, y_train, epochs=1, batch_size=32)          # QAT fine-tune
+report = export_tflite(model, "saved_models/digits_int8.tflite",
+                       verification_data=x_test)
+print(report)
 model.evaluate(x_test, y_test)
```

Pruning happens inside `fit` (masks live in layer variables, so it is
exact without callbacks and survives `BackupAndRestore`), `strip_pruning`
bakes the zeros in, `quantize` rebuilds the model for int8 (BatchNorm
folded, ReLU fused) and the int8 file is checked against the Keras model
when written.

Run it (artifacts go to `saved_models/` or `--out-dir`):

```
python examples/add_to_existing_training.py --epochs 5
python examples/add_to_existing_training.py --plain   # the script before the diff
```

`TFACCEL_EXAMPLE_EPOCHS` and `TFACCEL_EXAMPLE_OUT_DIR` set the defaults of
`--epochs` and `--out-dir` (the test suite uses them).
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def load_digits():
    """scikit-learn's 1,797 real 8x8 digits as NHWC float32 in [0, 1]."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def build_model():
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10)(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int,
                        default=int(os.environ.get("TFACCEL_EXAMPLE_EPOCHS", "5")))
    parser.add_argument("--out-dir",
                        default=os.environ.get("TFACCEL_EXAMPLE_OUT_DIR", "saved_models"))
    parser.add_argument("--plain", action="store_true",
                        help="run the original script, without the tfaccel lines")
    args = parser.parse_args(argv)
    use_tfaccel = not args.plain
    epochs = args.epochs
    os.makedirs(args.out_dir, exist_ok=True)
    keras.utils.set_random_seed(0)

    x_train, y_train, x_test, y_test = load_digits()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = build_model()
    if use_tfaccel:  # + tfaccel: prune to 80% inside fit
        from tfaccel import schedules
        from tfaccel.pruning import prune, sparsity

        steps = epochs * math.ceil(len(x_train) / 32)
        model = prune(model, schedules.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=0.8,
            begin_step=0, end_step=max(1, int(0.8 * steps)), frequency=10))
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=2)

    if use_tfaccel:  # + tfaccel: strip, quantization-aware fine-tune, export
        from tfaccel.export import export_tflite
        from tfaccel.pruning import strip_pruning
        from tfaccel.quantization import quantize

        stripped = strip_pruning(model)
        print("zero weights per layer:",
              {k: round(v, 3) for k, v in sparsity(stripped).items()})
        model = quantize(stripped, calibration_data=x_train[:256])
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss,
                      metrics=["accuracy"])
        model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=2)
        report = export_tflite(model, os.path.join(args.out_dir, "digits_int8.tflite"),
                               verification_data=x_test)
        print(report)

    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy (Keras): {accuracy:.2%}")
    model.save(os.path.join(args.out_dir, "digits_trained.keras"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
