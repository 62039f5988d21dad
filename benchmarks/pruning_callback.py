"""The `Pruning` callback against `tfaccel.prune`: digits CNN, 80%, 3 seeds.

For each seed: train the dense digits CNN, then fine-tune two copies with
the same `PolynomialDecay` to 80% and the same shuffled batches, one with
`tfaccel.callbacks.Pruning` (weights zeroed after each step, model unchanged)
and one rewritten by `tfaccel.prune` (masks in the forward pass, then
`strip_pruning`). Reports test accuracy of both, the final sparsity of every
layer of both, and the train-step time of the callback path against plain
`fit` (and of `prune`, and of an empty callback as the noise floor),
measured interleaved.

A step's time is the wall time between consecutive `on_train_batch_begin`
calls, so it includes every callback's per-batch work (the callback's mask
updates; its re-zeroing runs inside the train step); the first interval of
each `fit` (tracing) is dropped.

Usage (about 2-4 minutes on 2 busy cores):

    .venv/bin/python benchmarks/pruning_callback.py \\
        --out benchmarks/results/pruning_callback.json

Prints a Markdown table to stderr and the JSON to stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DENSE_EPOCHS = 5
PRUNE_EPOCHS = 6
RAMP_EPOCHS = 4  # the schedule reaches 80% after 4 of the 6 epochs


def _schedule(steps_per_epoch: int):
    from tfaccel.schedules import PolynomialDecay

    return PolynomialDecay(
        0.0, common.TARGET_SPARSITY, begin_step=0,
        end_step=steps_per_epoch * RAMP_EPOCHS,
        frequency=max(1, steps_per_epoch // 2),
    )


def _copy(model):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _seed_row(data, seed: int, log) -> dict:
    import keras

    import tfaccel
    from tfaccel.callbacks import Pruning

    x, y, x_test, y_test = data
    spe = common.steps_per_epoch(len(x))
    schedule = _schedule(spe)
    keras.utils.set_random_seed(seed)
    dense = common.compile_classifier(common.make_cnn())
    dense.fit(x, y, batch_size=common.BATCH, epochs=DENSE_EPOCHS, verbose=0)
    dense_acc = common.accuracy(dense, x_test, y_test)

    with_callback = common.compile_classifier(_copy(dense))
    keras.utils.set_random_seed(seed)  # the same shuffles for both paths
    t0 = time.perf_counter()
    with_callback.fit(x, y, batch_size=common.BATCH, epochs=PRUNE_EPOCHS, verbose=0,
                      callbacks=[Pruning(schedule)])
    callback_s = time.perf_counter() - t0

    rewritten = common.compile_classifier(tfaccel.prune(_copy(dense), schedule))
    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    rewritten.fit(x, y, batch_size=common.BATCH, epochs=PRUNE_EPOCHS, verbose=0)
    prune_s = time.perf_counter() - t0
    stripped = tfaccel.strip_pruning(rewritten)

    row = {
        "seed": seed,
        "dense_accuracy": round(dense_acc, 4),
        "callback_accuracy": round(common.accuracy(with_callback, x_test, y_test), 4),
        "prune_accuracy": round(common.accuracy(stripped, x_test, y_test), 4),
        "callback_sparsity": tfaccel.sparsity(with_callback),
        "prune_sparsity": tfaccel.sparsity(stripped),
        "callback_fit_s": round(callback_s, 2),
        "prune_fit_s": round(prune_s, 2),
    }
    row["accuracy_delta_points"] = round(
        100 * (row["callback_accuracy"] - row["prune_accuracy"]), 2)
    # Layer names differ between the copies: compare per-layer values in order.
    row["same_sparsity_per_layer"] = (
        list(row["callback_sparsity"].values()) == list(row["prune_sparsity"].values())
    )
    log(f"seed {seed}: callback {row['callback_accuracy']:.4f} prune "
        f"{row['prune_accuracy']:.4f} same sparsity {row['same_sparsity_per_layer']}")
    return row


def _begin_timer():
    import keras

    class BeginTimer(keras.callbacks.Callback):
        """Wall time between consecutive batch begins (all batch-end work in)."""

        def __init__(self):
            super().__init__()
            self.stamps: list[float] = []

        def on_train_batch_begin(self, batch, logs=None):
            self.stamps.append(time.perf_counter())

        def intervals(self) -> list[float]:
            # Drop the first interval: it holds the first step's tracing.
            return [b - a for a, b in zip(self.stamps[1:], self.stamps[2:])]

    return BeginTimer()


def _round(model, x, y, steps: int, make_callbacks):
    x, y = x[: steps * common.BATCH], y[: steps * common.BATCH]

    def run() -> list[float]:
        timer = _begin_timer()
        model.fit(x, y, batch_size=common.BATCH, epochs=1, verbose=0, shuffle=False,
                  callbacks=[*make_callbacks(), timer])
        return timer.intervals()

    return run


def _overhead(data, repeats: int, steps: int, log) -> dict:
    import keras

    import tfaccel
    from tfaccel.callbacks import Pruning
    from tfaccel.schedules import ConstantSparsity

    x, y, _, _ = data
    keras.utils.set_random_seed(0)
    base = common.make_cnn()
    spe = common.steps_per_epoch(len(x))
    # Masks recomputed every half epoch for ever: the update cost is included.
    schedule = ConstantSparsity(common.TARGET_SPARSITY, frequency=max(1, spe // 2))
    plain = common.compile_classifier(_copy(base))
    with_callback = common.compile_classifier(_copy(base))
    rewritten = common.compile_classifier(tfaccel.prune(_copy(base), schedule))
    control = common.compile_classifier(_copy(base))

    class Nothing(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            pass

    runners = [
        ("plain", _round(plain, x, y, steps, lambda: [])),
        # The noise floor: a callback that does nothing before each batch.
        ("control", _round(control, x, y, steps, lambda: [Nothing()])),
        ("callback", _round(with_callback, x, y, steps,
                            lambda: [Pruning(schedule)])),
        ("prune", _round(rewritten, x, y, steps, lambda: [])),
    ]
    log(f"overhead: {repeats} interleaved rounds of {steps} steps")
    result = common.interleaved_step_times(runners, repeats=repeats, warmup=1)
    medians = result["median_step_s"]
    result["ratio_of_medians"] = {
        name: round(medians[name] / medians["plain"], 4) for name in medians
    }
    result["how"] = (
        f"model.fit, 1 epoch of {steps} batches of {common.BATCH} per round; a "
        "step is the wall time between consecutive on_train_batch_begin calls "
        "(so it includes all per-batch callback work), first interval "
        "of each fit dropped; ConstantSparsity(0.8) recomputing masks every "
        f"{max(1, spe // 2)} steps; ratio = median over rounds of (median step / "
        "plain median step in the same round)")
    return result


def _table(result: dict) -> str:
    lines = [
        "| seed | dense acc | prune acc | callback acc | delta (points) "
        "| same sparsity per layer |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["digits"]["seeds"]:
        lines.append(
            f"| {row['seed']} | {row['dense_accuracy']:.4f} | "
            f"{row['prune_accuracy']:.4f} | {row['callback_accuracy']:.4f} | "
            f"{row['accuracy_delta_points']:+.2f} | {row['same_sparsity_per_layer']} |"
        )
    mean = result["digits"]["mean"]
    lines.append(
        f"| mean | {mean['dense_accuracy']:.4f} | {mean['prune_accuracy']:.4f} | "
        f"{mean['callback_accuracy']:.4f} | {mean['accuracy_delta_points']:+.2f} | |"
    )
    sparsity = result["digits"]["seeds"][0]["callback_sparsity"]
    lines.append("")
    lines.append("Final sparsity per layer (seed 0, both paths): " + ", ".join(
        f"{k.split('/')[0]} {v:.4f}" for k, v in sparsity.items()))
    over = result["overhead"]
    lines.append("")
    lines.append(
        f"Train-step time vs plain fit (median of {over['repeats']} interleaved "
        f"rounds of median steps): callback {over['ratio']['callback']:.3f}x "
        f"(IQR {over['ratio_iqr']['callback']}), prune "
        f"{over['ratio']['prune']:.3f}x, empty control callback "
        f"{over['ratio']['control']:.3f}x (the noise floor); ratio of the "
        f"overall medians: callback {over['ratio_of_medians']['callback']:.3f}x, "
        f"prune {over['ratio_of_medians']['prune']:.3f}x, control "
        f"{over['ratio_of_medians']['control']:.3f}x; plain step "
        f"{1000 * over['median_step_s']['plain']:.2f} ms"
    )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--seeds", default=",".join(map(str, common.SEEDS)))
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    log = common.Clock("pruning_callback")
    data = common.load_digits_split()
    spe = common.steps_per_epoch(len(data[0]))
    result: dict = {
        "benchmark": "pruning_callback",
        "command": common.command_line(),
        "env": common.env_info(),
        "recipe": {
            "data": common.recipe()["data"],
            "model": common.recipe()["model"],
            "dense": f"Adam {common.LR}, batch {common.BATCH}, {DENSE_EPOCHS} epochs",
            "pruning": (f"PolynomialDecay(0 -> {common.TARGET_SPARSITY}, 0, "
                        f"{spe * RAMP_EPOCHS}, frequency={max(1, spe // 2)}), "
                        f"{PRUNE_EPOCHS}-epoch fine-tune, Adam {common.LR}, same "
                        "seed (shuffles) for both paths"),
        },
    }
    rows = [_seed_row(data, int(s), log) for s in args.seeds.split(",") if s]
    keys = ("dense_accuracy", "prune_accuracy", "callback_accuracy",
            "accuracy_delta_points")
    result["digits"] = {
        "seeds": rows,
        "mean": {k: round(statistics.mean(r[k] for r in rows), 5) for k in keys},
        "max_abs_delta_points": max(abs(r["accuracy_delta_points"]) for r in rows),
        "same_sparsity_per_layer_all_seeds": all(
            r["same_sparsity_per_layer"] for r in rows),
    }
    result["overhead"] = _overhead(data, args.repeats, args.steps, log)
    result["elapsed_s"] = log.elapsed()
    table = _table(result)
    result["table_markdown"] = table
    print(table, file=sys.stderr, flush=True)
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
