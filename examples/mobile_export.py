"""Export a digits CNN for a mobile app: int8 (CPU/NPU) and float16 (GPU).

Trains the digits CNN, fine-tunes it with quantization-aware training, and
writes into `saved_models/` (or `--out-dir`):

- `digits_int8.tflite`: integer end to end with **int8 input and output
  tensors** (`input_type="int8"`), for the CPU (XNNPACK), Android NNAPI /
  vendor NPUs, and Edge TPU-style accelerators;
- `digits_float16.tflite`: float16 weights with float32 input/output, for
  the GPU delegate (Android `GpuDelegate`, iOS `MetalDelegate`);
- `labels.txt` and `digits_int8.json`: the class names and what the app needs
  to feed the int8 file (input scale, zero point, preprocessing).

Choosing the input type
-----------------------
- `input_type="float32"` (export's default): the file starts with a QUANTIZE
  op; the app passes floats exactly as in Python (`x / 16` here). Simplest;
  costs one cheap op.
- `input_type="int8"`: the app quantizes itself, `q = round(x / scale) +
  zero_point` clipped to [-128, 127], and dequantizes outputs with
  `y = (q - zero_point) * scale`. Needed by integer-only accelerators and
  saves a copy when the camera already gives bytes. (`"uint8"` exists for old
  uint8-only pipelines.)
- For argmax-only classification the output can stay int8: argmax of the
  int8 logits equals argmax of the dequantized ones (scale > 0).

Reading scale and zero point
----------------------------
They are stored in the file, per tensor; never hard-code them (they change
at every training run):

- Python: `Interpreter(...).get_input_details()[0]["quantization"]` gives
  `(scale, zero_point)` (this script prints and uses them).
- Android (Kotlin, `org.tensorflow:tensorflow-lite` / LiteRT):
  `val p = interpreter.getInputTensor(0).quantizationParams()` then
  `p.scale`, `p.zeroPoint`; the input buffer is a direct `ByteBuffer` of
  `8*8*1` bytes in native order.
- iOS (Swift, `TensorFlowLiteSwift`): `let t = try interpreter.input(at: 0)`
  then `t.quantizationParameters?.scale` and `.zeroPoint`; copy the int8
  bytes with `interpreter.copy(Data(...), toInputAt: 0)`.

Metadata
--------
ML Kit and the TFLite Task Library read labels and normalization from TFLite
Metadata embedded in the file (`tflite-support`'s
`metadata_writers.image_classifier.MetadataWriter.create_for_inference(model,
input_norm_mean=[0], input_norm_std=[16], label_file_paths=["labels.txt"])`).
`tflite-support` is not a tfaccel dependency (and is not maintained for new
Python versions), so this script writes the same facts to a JSON sidecar
bundled next to the file; with `tflite-support` installed you can embed them.
Check the file before shipping: `tfaccel inspect saved_models/digits_int8.tflite`.

Run it:

```
python examples/mobile_export.py --epochs 5
tfaccel inspect saved_models/digits_int8.tflite
tfaccel bench saved_models/digits_int8.tflite --threads 1 2
```

`TFACCEL_EXAMPLE_EPOCHS` and `TFACCEL_EXAMPLE_OUT_DIR` set the defaults of
`--epochs` and `--out-dir` (the test suite uses them).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfaccel.demo import load_digits  # noqa: E402

LABELS = [str(d) for d in range(10)]


def build_model():
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = inputs
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def run_int8_like_an_app(path, x, y):
    """What app code does with an int8-in/int8-out file, in Python."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    print(f"input  {inp['dtype'].__name__}{inp['shape'].tolist()}: "
          f"scale={in_scale:.6g} zero_point={in_zero}")
    print(f"output {out['dtype'].__name__}{out['shape'].tolist()}: "
          f"scale={out_scale:.6g} zero_point={out_zero}")
    correct = 0
    for sample, label in zip(x, y):
        q = np.clip(np.round(sample / in_scale) + in_zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        logits_q = interpreter.get_tensor(out["index"])[0]
        logits = (logits_q.astype(np.float32) - out_zero) * out_scale
        correct += int(np.argmax(logits) == label)
    return correct / len(x), (float(in_scale), int(in_zero)), (float(out_scale), int(out_zero))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int,
                        default=int(os.environ.get("TFACCEL_EXAMPLE_EPOCHS", "5")))
    parser.add_argument("--out-dir",
                        default=os.environ.get("TFACCEL_EXAMPLE_OUT_DIR", "saved_models"))
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    from tfaccel.export import export_tflite
    from tfaccel.quantization import quantize

    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = load_digits()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = build_model()
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32, verbose=0)
    _, float_acc = model.evaluate(x_test, y_test, verbose=0)

    # float16 for the GPU delegate: float32 in/out, half-size weights.
    fp16 = export_tflite(model, os.path.join(args.out_dir, "digits_float16.tflite"),
                         quantization="float16", verification_data=x_test)

    # int8 for CPU/NPU: quantization-aware fine-tune, then int8 in/out tensors.
    qat = quantize(model, calibration_data=x_train[:256])
    qat.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
    qat.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    int8_path = os.path.join(args.out_dir, "digits_int8.tflite")
    int8 = export_tflite(qat, int8_path, quantization="int8", input_type="int8",
                         output_type="int8", verification_data=x_test,
                         tolerance={"min_agreement": 0.95})

    app_acc, (in_scale, in_zero), (out_scale, out_zero) = run_int8_like_an_app(
        int8_path, x_test, y_test)

    with open(os.path.join(args.out_dir, "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    sidecar = {
        "model": os.path.basename(int8_path),
        "labels": "labels.txt",
        "input": {"name": int8.inputs[0]["name"], "shape": int8.inputs[0]["shape"],
                  "dtype": "int8", "scale": in_scale, "zero_point": in_zero,
                  "preprocessing": "grayscale 8x8, pixel / 16.0 in [0, 1], then "
                                   "q = round(x / scale) + zero_point"},
        "output": {"dtype": "int8", "scale": out_scale, "zero_point": out_zero,
                   "meaning": "logits; argmax is the digit"},
    }
    with open(os.path.join(args.out_dir, "digits_int8.json"), "w") as f:
        json.dump(sidecar, f, indent=2)

    print(f"float Keras accuracy (before QAT) {float_acc:.2%}")
    print(f"float16 file  {fp16.bytes:>7,} bytes, agreement {fp16.agreement:.2%}")
    print(f"int8 file     {int8.bytes:>7,} bytes, agreement {int8.agreement:.2%}, "
          f"int8 coverage {int8.int8_coverage:.0%}")
    print(f"int8 file accuracy, app-style     {app_acc:.2%}")
    print(f"wrote {int8_path}, labels.txt and digits_int8.json in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
