"""Channel pruning benchmark: what shrinking buys in size, MACs and latency.

Prints one JSON object. Not part of the test suite. Run:

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/channels.py [--size 96] \
        [--out benchmarks/results/channels.json]

- MobileNetV2 (alpha 1.0, weights=None, size x size input): 50% of the output
  channels of every layer `prune_channels` selects by default (layers whose
  channels feed no residual Add) removed by `shrink`; parameters, conv/dense
  MACs, float TFLite latency (ai_edge_litert, XNNPACK, median, 1 and 2
  threads) and int8 TFLite latency (converter post-training quantization
  calibrated on a few random-normal batches: fine for latency, meaningless
  for accuracy) for the dense and the shrunken model. Random weights: the
  l1 criterion picks the filters, which does not change the timing.
- Digits CNN (real sklearn digits): dense training vs prune-50%-of-channels
  fine-tune from the dense weights, then `shrink`; test accuracy of both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from tfaccel.pruning.channels import PruneChannels, prune_channels  # noqa: E402
from tfaccel.pruning.shrink import shrink  # noqa: E402


def macs(model: keras.Model) -> int:
    """Multiply-accumulates of Conv/DepthwiseConv/Dense layers (batch 1)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            out = layer.output.shape
            kernel = layer.kernel.shape
            total += int(np.prod(out[1:-1])) * int(np.prod(kernel))
        elif isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
            out = layer.output.shape
            total += int(np.prod(out[1:-1])) * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            out = layer.output.shape
            total += int(np.prod(out[1:-1] or [1])) * int(np.prod(layer.kernel.shape))
    return total


def to_tflite(model: keras.Model, int8: bool = False, shape=None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(8):
                yield [rng.standard_normal((1, *shape[1:])).astype("float32")]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def latencies_ms(flats: dict[str, bytes], threads: int, rounds: int) -> dict:
    """Median invoke time of each model, measured interleaved.

    The models take turns (10 invokes each per round) so that load from
    other processes on the machine hits all of them alike.
    """
    interpreters = {}
    for name, flat in flats.items():
        interpreter = Interpreter(model_content=flat, num_threads=threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(
            detail["index"], np.zeros(detail["shape"], detail["dtype"])
        )
        for _ in range(5):
            interpreter.invoke()
        interpreters[name] = interpreter
    times = {name: [] for name in flats}
    for _ in range(rounds):
        for name, interpreter in interpreters.items():
            for _ in range(10):
                start = time.perf_counter()
                interpreter.invoke()
                times[name].append(time.perf_counter() - start)
    return {name: round(1000 * float(np.median(t)), 3) for name, t in times.items()}


def mobilenet(size: int, runs: int) -> dict:
    dense = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=1.0, weights=None, classifier_activation=None
    )
    pruned = prune_channels(dense, schedule=0.5)
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype("float32")
    pruned(x, training=True)  # computes the masks, as the first fit step would
    small = shrink(pruned)
    wrappers = [layer for layer in pruned.layers if isinstance(layer, PruneChannels)]
    difference = float(
        np.abs(
            keras.ops.convert_to_numpy(pruned(x, training=False))
            - keras.ops.convert_to_numpy(small(x, training=False))
        ).max()
    )
    result = {
        "input": [size, size, 3],
        "pruned_layers": len(wrappers),
        "masked_channels": int(
            sum((keras.ops.convert_to_numpy(w.mask) == 0).sum() for w in wrappers)
        ),
        "max_abs_diff_masked_vs_shrunk": difference,
    }
    flats = {}
    for name, model in (("dense", dense), ("shrunk", small)):
        flats[(name, "float")] = to_tflite(model)
        flats[(name, "int8")] = to_tflite(model, int8=True, shape=model.input_shape)
        result[name] = {
            "params": int(model.count_params()),
            "macs": macs(model),
            "tflite_float_bytes": len(flats[(name, "float")]),
            "tflite_int8_bytes": len(flats[(name, "int8")]),
        }
    for threads in (1, 2):
        suffix = "1thread" if threads == 1 else f"{threads}threads"
        for (name, kind), value in latencies_ms(flats, threads, runs).items():
            result[name][f"{kind}_ms_{suffix}"] = value
    d, s = result["dense"], result["shrunk"]
    result["ratios_shrunk_over_dense"] = {
        key: round(s[key] / d[key], 3) for key in d if isinstance(d[key], (int, float))
    }
    return result


def digits_accuracy(seeds: int, epochs: int, finetune_epochs: int) -> dict:
    from tests.tiny_models import load_digits_split, make_cnn

    x, y, xt, yt = load_digits_split()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = []
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        dense = make_cnn()
        dense.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
        dense.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
        dense_acc = dense.evaluate(xt, yt, verbose=0)[1]
        pruned = prune_channels(dense, schedule=0.5)
        pruned.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        pruned.fit(x, y, batch_size=32, epochs=finetune_epochs, verbose=0)
        small = shrink(pruned)
        small.compile(loss=loss, metrics=["accuracy"])
        rows.append(
            {
                "seed": seed,
                "dense_acc": round(float(dense_acc), 4),
                "shrunk_acc": round(float(small.evaluate(xt, yt, verbose=0)[1]), 4),
                "dense_int8_acc": _int8_accuracy(dense, x, y, xt, yt, loss),
                "shrunk_int8_acc": _int8_accuracy(small, x, y, xt, yt, loss),
                "dense_params": int(make_cnn().count_params()),
                "shrunk_params": int(small.count_params()),
            }
        )
    gap = [r["dense_acc"] - r["shrunk_acc"] for r in rows]
    gap8 = [r["dense_int8_acc"] - r["shrunk_int8_acc"] for r in rows]
    return {
        "epochs": epochs,
        "finetune_epochs": finetune_epochs,
        "int8": f"tfaccel.quantize(calibration 256), {QAT_EPOCHS}-epoch QAT at Adam 1e-4, "
                "export_tflite int8, accuracy of the file",
        "runs": rows,
        "mean_gap_points": round(100 * float(np.mean(gap)), 2),
        "mean_int8_gap_points": round(100 * float(np.mean(gap8)), 2),
    }


QAT_EPOCHS = 2


def _int8_accuracy(model, x, y, xt, yt, loss) -> float:
    """QAT fine-tune, int8 export, accuracy of the file (the path users ship)."""
    import tempfile

    import tfaccel
    from tfaccel.export import run_tflite

    qat = tfaccel.quantize(model, calibration_data=x[:256])
    qat.compile(keras.optimizers.Adam(1e-4), loss)
    qat.fit(x, y, batch_size=32, epochs=QAT_EPOCHS, verbose=0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.tflite")
        tfaccel.export_tflite(qat, path, quantization="int8", verify=False)
        logits = run_tflite(path, xt)
    return round(float(np.mean(np.argmax(logits, -1) == yt)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--runs", type=int, default=10, help="rounds of 10 invokes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-mobilenet", action="store_true",
                        help="keep the MobileNetV2 figures of the existing --out JSON")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    start = time.time()
    header = {"benchmark": "channels", "command": common.command_line(),
              "env": common.env_info()}
    # The converter prints to stdout; keep stdout for the JSON report only.
    with contextlib.redirect_stdout(sys.stderr):
        if args.skip_mobilenet and args.out and os.path.exists(args.out):
            with open(args.out) as f:
                report = {"mobilenet_v2": json.load(f)["mobilenet_v2"]}
        else:
            report = {"mobilenet_v2": mobilenet(args.size, args.runs)}
        if not args.skip_digits:
            report["digits_cnn"] = digits_accuracy(
                args.seeds, args.epochs, args.finetune_epochs
            )
    report["seconds"] = round(time.time() - start, 1)
    common.emit({**header, **report}, args.out)


if __name__ == "__main__":
    main()
