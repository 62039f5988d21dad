"""TFLite files of the coverage matrix: outputs, ops, parity (both sides).

No Keras and no tfaccel: the tfmot peer uses this module too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# Parity of the int8 file with the QAT Keras model (issue 13 "Must show").
MIN_AGREEMENT = 0.99
# Parity is not graded on a reference that gives one class this often.
MAX_TOP_CLASS_SHARE = 0.9
MAX_MAE_OVER_STD = 0.01
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
               "BATCH_MATMUL", "CONV_3D", "UNIDIRECTIONAL_SEQUENCE_LSTM",
               "BIDIRECTIONAL_SEQUENCE_LSTM")
# Ops whose float side is the file's boundary, not a float island.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


def tflite_outputs(path: str, inputs: list[np.ndarray], input_names: Sequence[str],
                   output_shapes: Sequence[tuple]) -> list[np.ndarray]:
    """Runs a (multi-input, multi-output) file on float data, dequantized.

    Inputs are matched by name when the signature uses the Keras input
    names, else in order; outputs are matched to `output_shapes` by shape,
    then in signature order.
    """
    in_details, out_details, invoke = _runner(path)
    names = list(input_names) if set(input_names) == set(in_details) else list(in_details)
    feed = {}
    for name, x in zip(names, inputs):
        d = in_details[name]
        dtype, (scale, zero) = np.dtype(d["dtype"]), d["quantization"]
        if np.issubdtype(dtype, np.integer) and scale and not np.issubdtype(
                x.dtype, np.integer):
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        feed[name] = x.astype(dtype)
    outs = []
    n = len(inputs[0])
    for i in range(n):
        res = invoke({k: v[i:i + 1] for k, v in feed.items()})
        outs.append({k: _dequantize(v, out_details[k]) for k, v in res.items()})
    merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    free = list(out_details)
    ordered = []
    for shape in output_shapes:
        match = next((k for k in free if merged[k].shape[1:] == tuple(shape)), free[0])
        free.remove(match)
        ordered.append(merged[match])
    return ordered


def _runner(path: str):
    """`(input details, output details, invoke)` by tensor name: the default
    signature, or the plain tensors of a file without signatures (tf_keras
    models converted with `from_keras_model` may have none)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    # Each invocation starts from zeroed variable tensors: a fused LSTM keeps
    # its final state in them between invocations (one sample = one sequence).
    interp.allocate_tensors()
    if interp.get_signature_list():
        runner = interp.get_signature_runner()

        def invoke_signature(feed):
            interp.reset_all_variables()
            return runner(**feed)

        return (runner.get_input_details(), runner.get_output_details(),
                invoke_signature)
    ins = {d["name"]: d for d in interp.get_input_details()}
    outs = {d["name"]: d for d in interp.get_output_details()}

    def invoke(feed):
        interp.reset_all_variables()
        for name, value in feed.items():
            interp.set_tensor(ins[name]["index"], value)
        interp.invoke()
        return {name: interp.get_tensor(d["index"]) for name, d in outs.items()}

    return ins, outs, invoke


def _dequantize(y: np.ndarray, details: dict) -> np.ndarray:
    scale, zero = details["quantization"]
    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype("float32") - zero) * np.float32(scale)
    return y.astype("float32")


def _top1_agreement(want: np.ndarray, have: np.ndarray) -> float:
    """The file's top-1 is one of the Keras model's top-1 classes (an exact
    tie in the Keras output is not a disagreement; a tie in the file is).
    The same rule as `tfaccel.export.verify.top1_agreement`, kept here so the
    tf_keras (tfmot) process does not import tfaccel."""
    picked = have.argmax(-1)[..., None]
    return float(np.mean(np.take_along_axis(want, picked, -1)[..., 0]
                         == want.max(-1)))


def parity(expected: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> dict:
    """Top-1 agreement (outputs with a class axis) and MAE / output std."""
    per_output = []
    for want, have in zip(expected, got):
        want = np.asarray(want, "float32")
        have = have.reshape(want.shape)
        std = float(np.std(want))
        mae = float(np.mean(np.nan_to_num(np.abs(have - want), nan=np.inf)))
        item = {"mae": mae, "std": std, "mae_over_std": mae / std if std > 0 else None}
        if want.ndim >= 2 and want.shape[-1] > 1:
            item["agreement"] = _top1_agreement(want, have)
            item["reference_ties"] = int(np.sum((want == want.max(-1, keepdims=True))
                                                .sum(-1) > 1))
            # A model that gives one class for (nearly) every sample did not
            # learn: agreeing with it is no evidence.
            top = np.argmax(want.reshape(-1, want.shape[-1]), -1)
            item["top_class_share"] = float(np.bincount(top).max() / len(top))
        per_output.append(item)
    agreements = [o["agreement"] for o in per_output if "agreement" in o]
    ratios = [o["mae_over_std"] for o in per_output if o["mae_over_std"] is not None]
    shares = [o["top_class_share"] for o in per_output if "top_class_share" in o]
    return {"agreement": min(agreements) if agreements else None,
            "mae_over_std": max(ratios) if ratios else None,
            "top_class_share": max(shares) if shares else None,
            "outputs": per_output}


def parity_met(p: dict) -> list[str]:
    """What misses the issue's parity goals (empty when both are met)."""
    misses = []
    share = p.get("top_class_share")
    if share is not None and share >= MAX_TOP_CLASS_SHARE:
        misses.append(f"the Keras model gives one class for {share:.0%} of the samples "
                      "(it did not learn): agreement is no evidence")
    if p["agreement"] is not None and p["agreement"] < MIN_AGREEMENT:
        misses.append(f"top-1 agreement {p['agreement']:.1%} < {MIN_AGREEMENT:.0%}")
    if p["mae_over_std"] is None or not np.isfinite(p["mae_over_std"]):
        misses.append("MAE/std not finite")
    elif p["mae_over_std"] > MAX_MAE_OVER_STD:
        misses.append(f"MAE {p['mae_over_std']:.2%} of output std > "
                      f"{MAX_MAE_OVER_STD:.0%}")
    return misses


def op_facts(path: str) -> dict:
    """Op counts, int8 coverage of compute ops and the float ops of a file.

    An op's dtype is that of its first input that is not an int32/int64
    shape or index (TRANSPOSE_CONV's first input is its output shape);
    QUANTIZE / DEQUANTIZE are the file's float boundary, not float islands.
    """
    ops = op_summary(path)
    compute = {k: v for k, v in ops.items() if k.split("/")[0] in COMPUTE_OPS}
    total = sum(compute.values())
    int8 = sum(v for k, v in compute.items() if k.split("/")[1] in ("int8", "uint8",
                                                                     "int16"))
    floats = {k: v for k, v in ops.items()
              if k.split("/")[1] == "float32" and k.split("/")[0] not in BOUNDARY_OPS}
    return {"ops": ops, "int8_coverage": round(int8 / total, 4) if total else None,
            "float_ops": floats, "bytes": os.path.getsize(path)}


def op_summary(path: str) -> dict[str, int]:
    """Counts of the builtin ops of a file, keyed like 'CONV_2D/int8'."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in interp.get_tensor_details()}
    counts: dict[str, int] = {}
    for op in interp._get_ops_details():  # noqa: SLF001 - the only way to list ops
        seen = [dtypes.get(int(i)) for i in list(op["inputs"]) + list(op["outputs"])
                if int(i) >= 0]
        data = [t for t in seen if t not in (None, "int32", "int64", "bool")]
        key = f"{op['op_name']}/{(data or seen or ['?'])[0]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def export_summary(facts: dict, p: dict) -> str:
    cov = facts["int8_coverage"]
    parts = [f"int8 {cov:.0%}" if cov is not None else "no compute ops"]
    if facts["float_ops"]:
        parts.append("float: " + ", ".join(f"{k.split('/')[0]}x{v}"
                                           for k, v in sorted(facts["float_ops"].items())))
    if p.get("agreement") is not None:
        parts.append(f"agree {p['agreement']:.1%}")
    if p.get("mae_over_std") is not None:
        parts.append(f"MAE/std {p['mae_over_std']:.2%}")
    return "; ".join(parts)
