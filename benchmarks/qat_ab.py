"""A/B of the activation quantizer's training formulations, one process.

Times one compiled train step (`train_on_batch`, batch 16, SGD) of a
keras.applications model (`--model`, as `qat_profile.py` builds it) and of
three QAT copies (`bn_folding="batch"`) traced with different activation
quantizer formulations, in interleaved rounds (`common.interleaved_step_times`:
the median of per-round ratios to the plain model):

- `computed_relu`: the ReLU/ReLU6 before an output quantizer computed as its
  own op, and FakeQuant's own gradient (also the range sums nobody uses);
- `folded_relu`: the quantizer's clip to `[0, max]` is the ReLU (no ReLU
  op, no min reduction), FakeQuant's own gradient;
- `current`: folded ReLU and the input gradient as one `Relu6Grad`
  (`fake_quant_activation(range_gradient=False)`), what `tfaccel` ships.

The first two are traced with the shipped code patched back for the
duration of their first step (Python-level patches of
`tfaccel.quantization.activations`); the traced graphs keep them.

Usage:

    .venv/bin/python benchmarks/qat_ab.py --model mobilenetv2_1.0 --rounds 12
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import qat_profile  # noqa: E402

VARIANTS = ("computed_relu", "folded_relu", "current")


def _trace(model, x, y, variant: str) -> None:
    """Run `model`'s first step (its trace) under `variant`'s formulation."""
    import tensorflow as tf

    from tfaccel.quantization import activations

    call, fake_quant = activations.ActivationQuantizer.call, activations.fake_quant_activation

    def computed_relu_call(self, inputs, training=None):
        relu, self.activation = self.activation, None
        try:
            if relu is not None:
                inputs = activations._activate(tf.cast(inputs, "float32"), relu)
            return call(self, inputs, training=training)
        finally:
            self.activation = relu

    def op_gradient(x, low, high, range_gradient=True):
        return fake_quant(x, low, high)

    if variant == "computed_relu":
        activations.ActivationQuantizer.call = computed_relu_call
    if variant in ("computed_relu", "folded_relu"):
        activations.fake_quant_activation = op_gradient
    try:
        model.train_on_batch(x, y)
    finally:
        activations.ActivationQuantizer.call = call
        activations.fake_quant_activation = fake_quant


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=qat_profile.MODELS, default="mobilenetv2_1.0")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args(argv)
    import keras

    import tfaccel

    log = common.Clock("qat_ab")
    plain = qat_profile.build_model(args.model)
    models = {"plain": plain}
    for variant in VARIANTS:
        models[variant] = tfaccel.quantize(plain, bn_folding="batch")
    for model in models.values():
        model.compile(optimizer=keras.optimizers.SGD(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy())
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (qat_profile.BATCH, *plain.input_shape[1:])).astype("float32")
    y = rng.integers(0, 1000, qat_profile.BATCH).astype("int32")
    plain.train_on_batch(x, y)
    for variant in VARIANTS:
        _trace(models[variant], x, y, variant)
    log("traced")

    timing = qat_profile._step_times(models, x, y, args.rounds, args.steps)
    result = {"benchmark": "qat_ab", "command": common.command_line(),
              "env": common.env_info(), "model": args.model,
              "ratio_vs_plain": timing["ratio"], "ratio_iqr": timing["ratio_iqr"],
              "median_step_s": {k: round(v, 4) for k, v in timing["median_step_s"].items()},
              "load_average": [round(v, 2) for v in os.getloadavg()],
              "elapsed_s": log.elapsed()}
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
