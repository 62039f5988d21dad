"""Model builders and state probes shared by the distribute tests and workers.

The workflow under test is tfaccel's: `prune` and train (masks and step
advance in-graph), then `quantize` the pruned model (it is stripped, its
zeros kept by a fixed mask) and train QAT (EMA ranges), then export int8.
The pruning phase needs `tfaccel.pruning`; the later phases run when
`tfaccel.quantization` / `tfaccel.export` exist (others build them in
parallel), else a plain model is used.
"""

import importlib
import math

from tests.tiny_models import load_digits_split, make_cnn

TARGET = 0.5
BATCH = 64


def available(module, name):
    """Whether `module` exists and exports `name`."""
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def can_prune():
    return available("tfaccel.pruning", "prune")


def can_quantize():
    return available("tfaccel.quantization", "quantize")


def can_export():
    return available("tfaccel.export", "export_tflite")


def digits():
    return load_digits_split()


def steps(n, batch_size, epochs):
    # Numpy input is sharded by data: the global batch count per epoch.
    return math.ceil(n / batch_size) * epochs


def schedule(total_steps):
    from tfaccel.schedules import PolynomialDecay

    # Reaches TARGET at 2/3 of training, prunes every 2 steps.
    return PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=TARGET,
        begin_step=0,
        end_step=max(2, (2 * total_steps) // 3),
        frequency=2,
    )


def pruned_cnn(total_steps):
    """The digits CNN, pruned when tfaccel.pruning exists."""
    model = make_cnn()
    if can_prune():
        from tfaccel.pruning import prune

        model = prune(model, schedule=schedule(total_steps))
    return model


def quantized(model, x):
    from tfaccel.quantization import quantize

    return quantize(model, calibration_data=x[:BATCH])


def compile_model(model, **kwargs):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )


def _np(variable):
    import keras

    return keras.ops.convert_to_numpy(variable)


def variable_arrays(model):
    """Every model variable (weights, masks, steps, ranges) by unique key."""
    return {f"{i:03d}:{v.path}": _np(v) for i, v in enumerate(model.variables)}


def pruning_steps(model):
    return [int(_np(v)) for v in model.variables if v.path.endswith("pruning_step")]


def ranges(model):
    return {
        v.path: float(_np(v))
        for v in model.variables
        if v.path.endswith(("range_min", "range_max"))
    }


def summary(model):
    """JSON-able training state: optimizer step, pruning steps, sparsities, ranges."""
    out = {
        "iterations": int(_np(model.optimizer.iterations)),
        "pruning_steps": pruning_steps(model),
        "ranges": ranges(model),
        "masks": {
            v.path: float((_np(v) == 0).mean())
            for v in model.variables
            if "mask" in v.name
        },
    }
    if available("tfaccel.pruning", "sparsity"):
        from tfaccel.pruning import sparsity

        out["sparsity"] = {k: float(v) for k, v in sparsity(model).items()}
    return out


def export_int8(model, path, x):
    """Export int8 with tfaccel.export; returns the report as a dict."""
    from tfaccel.export import export_tflite

    report = export_tflite(model, path, quantization="int8", representative_data=x)
    return report.to_dict()
