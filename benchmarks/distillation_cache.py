"""Benchmark: distillation epoch time with and without teacher-output caching.

A CNN teacher (hundreds of times the student's multiply-adds) distils into a
32-unit MLP on scikit-learn digits (tiled to make epochs measurable). Prints
JSON: multiply-adds per sample, mean epoch time with the live teacher and
with `cache_teacher=True` (after one warm-up epoch each, which also covers
tracing), the one-off cost of computing the cache, and the speed-up.

With `--accuracy` it also prints, for a few seeds, the test accuracy of the
student distilled from the teacher vs the same student trained alone.

Run: `python benchmarks/distillation_cache.py [--epochs 3] [--accuracy]
[--out benchmarks/results/distillation_cache.json]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run as a script from anywhere: the digits helpers live in tests/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tests.tiny_models import load_digits_split, make_cnn, make_mlp  # noqa: E402
from tfaccel.distillation import distill  # noqa: E402

SCCE = keras.losses.SparseCategoricalCrossentropy


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds per sample of the Dense/Conv layers of `model`."""
    total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        positions = (
            int(np.prod(layer.output.shape[1:-1])) if layer.output.shape[1:-1] else 1
        )
        total += int(np.prod(kernel.shape)) * positions
    return total


class _EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _trained_teacher(x, y, epochs=8):
    keras.utils.set_random_seed(1)
    teacher = make_cnn((32, 64))
    teacher.compile("adam", SCCE(from_logits=True))
    teacher.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    teacher.trainable = False
    return teacher


def time_epochs(teacher, x, y, cache_teacher, epochs, batch_size=64):
    keras.utils.set_random_seed(0)
    d = distill(make_mlp(), teacher, cache_teacher=cache_teacher)
    d.compile("adam", loss=SCCE(from_logits=True))
    timer = _EpochTimer()
    start = time.perf_counter()
    d.fit(x, y, epochs=epochs + 1, batch_size=batch_size, verbose=0, callbacks=[timer])
    total = time.perf_counter() - start
    # Time outside epochs is mostly the one teacher pass of the cache.
    return float(np.mean(timer.times[1:])), total - sum(timer.times)


def accuracy_comparison(teacher, x, y, xt, yt, seeds=(0, 1, 2), epochs=15):
    def accuracy(model):
        return float(np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt))

    rows = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        alone = make_mlp()
        alone.compile("adam", SCCE(from_logits=True))
        alone.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        keras.utils.set_random_seed(seed)
        d = distill(make_mlp(), teacher, temperature=4.0, alpha=0.1)
        d.compile("adam", loss=SCCE(from_logits=True))
        d.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        rows.append(
            {"seed": seed, "alone": accuracy(alone), "distilled": accuracy(d.student)}
        )
    return {
        "epochs": epochs,
        "runs": rows,
        "mean_alone": float(np.mean([r["alone"] for r in rows])),
        "mean_distilled": float(np.mean([r["distilled"] for r in rows])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10, help="tile the data")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    header = {"benchmark": "distillation_cache", "command": common.command_line(),
              "env": common.env_info()}

    x, y, xt, yt = load_digits_split()
    teacher = _trained_teacher(x, y)
    xr, yr = np.tile(x, (args.repeat, 1, 1, 1)), np.tile(y, args.repeat)
    live, live_outside = time_epochs(teacher, xr, yr, False, args.epochs)
    cached, cached_outside = time_epochs(teacher, xr, yr, True, args.epochs)
    result = {
        **header,
        "samples_per_epoch": len(xr),
        "teacher_macs": multiply_adds(teacher),
        "student_macs": multiply_adds(make_mlp()),
        "epoch_s_live_teacher": round(live, 3),
        "epoch_s_cached_teacher": round(cached, 3),
        "speedup": round(live / cached, 2),
        # Time in fit outside the epochs: setup, plus the teacher pass with
        # the cache (the difference is the one-off cost of caching).
        "outside_epochs_s_live": round(live_outside, 3),
        "outside_epochs_s_cached": round(cached_outside, 3),
        "teacher_test_accuracy": float(
            np.mean(np.argmax(teacher.predict(xt, verbose=0), -1) == yt)
        ),
    }
    result["macs_ratio"] = round(result["teacher_macs"] / result["student_macs"], 1)
    if args.accuracy:
        result["accuracy"] = accuracy_comparison(teacher, x, y, xt, yt)
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
