"""The cell machinery of the coverage matrix, shared by both sides.

A row runs in a child process (a converter crash kills the process, and
must become a recorded cell, not a dead benchmark). The child runs its cells
one at a time and rewrites a small JSON file after each (`CellRunner`); the
parent (`run_row`) reads it after the child exits: a cell marked running in
a dead child is a crash (the signal is recorded), and the cells after it are
run again in a fresh child. No Keras and no tfaccel here: the tfmot peer
uses this module too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import common
import numpy as np
from coverage_models import ROWS, row_data, take

# The columns of each side (the tfmot side's module sets TF_USE_LEGACY_KERAS
# on import, so the parent reads its columns from here).
TFACCEL_CELLS = ("prune", "prune_2_4", "channels", "qat_int8", "ptq_int8",
                 "keras_roundtrip")
TFMOT_CELLS = ("prune", "prune_2_4", "qat_int8")
# Steps of the short fine-tunes and sizes of the data sets (defaults).
FLOAT_STEPS = 128  # MobileNet: 11% held-out digits at 64 steps, 87-89% from 96
QAT_STEPS = 16
PRUNE_STEPS = 2
BATCH = 32
N_TRAIN = 512
N_TEST = 128
N_CALIBRATION = 32
# Parity of the int8 file with the QAT Keras model (issue 13 "Must show").
MIN_AGREEMENT = 0.99
MAX_MAE_OVER_STD = 0.01
# Below this a post-training file is reported partial (export's own warning
# threshold, tfaccel.export.verify.DEFAULT_MIN_AGREEMENT).
PTQ_MIN_AGREEMENT = 0.9
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
               "BATCH_MATMUL", "CONV_3D", "UNIDIRECTIONAL_SEQUENCE_LSTM",
               "BIDIRECTIONAL_SEQUENCE_LSTM")
# Ops whose float side is the file's boundary, not a float island.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


def error_line(e: BaseException) -> str:
    """`Type: first line` of an exception, as a user sees it, and where from.

    Keras and TF wrap errors raised inside a traced call ("in user code:",
    "Exception encountered when calling layer ..."); the inner `XError: ...`
    line of such a message is the actual error, so it is added.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if lines and first.startswith(_WRAPPED) and len(lines) > 1:
        inner = [ln for ln in lines[1:] if re.match(r"^[\w.]+(Error|Exception): ", ln)]
        first += " ... " + (inner[-1] if inner else lines[-1])
    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        path = frame.filename.replace("\\", "/")
        if "site-packages/" in path:
            where = path.split("site-packages/", 1)[1].split("/", 1)[0]
        elif "/tfaccel/" in path:
            where = "tfaccel"
        if where:
            break
    return f"{type(e).__name__}: {first[:400]}" + (f" [raised in {where}]" if where else "")


_WRAPPED = ("in user code", "Exception encountered when calling")


def refused(e: BaseException) -> bool:
    """tfaccel refused up front (an argument or layer it does not take, named
    in the message), as opposed to failing on the way (converter, NaN, ...)."""
    return isinstance(e, (ValueError, TypeError, NotImplementedError)) and (
        error_line(e).endswith("[raised in tfaccel]"))


class CellRunner:
    """Runs cells in order; the state goes to `path` after every cell."""

    def __init__(self, path: str, row: str, side: str):
        self.path = path
        self.state: dict[str, Any] = {"row": row, "side": side, "cells": {},
                                      "running": None}

    def write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, default=common._jsonable)  # noqa: SLF001
        os.replace(tmp, self.path)

    def setup(self, fn: Callable[[], Any]) -> Any:
        """Runs the row's set-up (build, float fine-tune); its time is kept."""
        self.state["running"] = "setup"
        self.write()
        t0 = time.perf_counter()
        value = fn()
        self.state["setup_s"] = round(time.perf_counter() - t0, 2)
        self.state["running"] = None
        self.write()
        return value

    def note(self, **facts: Any) -> None:
        """Facts of the running cell kept even if the process dies in it
        (a NaN loss before a converter crash)."""
        self.state["progress"] = {**self.state.get("progress", {}), **facts}
        self.write()

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        """`fn()` returns the cell's figures (`status` defaults to "pass")."""
        self.state["running"] = name
        self.write()
        sys.stderr.write(f"[coverage] {self.state['row']}/{self.state['side']}: {name}\n")
        t0 = time.perf_counter()
        try:
            cell = dict(fn())
            cell.setdefault("status", "pass")
        except Exception as e:  # noqa: BLE001 - a failed cell is a result
            cell = {"status": "refused" if refused(e) else "fail", "error": error_line(e),
                    "traceback": traceback.format_exc()[-1500:]}
        cell["seconds"] = round(time.perf_counter() - t0, 2)
        self.state["cells"][name] = cell
        self.state["running"] = None
        self.state.pop("progress", None)
        self.write()
        return cell


class RowSide:
    """One library's side of a row, in its child process: the row's data and
    its model built with Keras module `k` (`keras` or `tf_keras`), trained
    `float_steps` steps by `setup`. Subclasses list their cells in `cells`."""

    def __init__(self, k, row, args, workdir: str):
        self.k, self.row, self.args, self.workdir = k, row, args, workdir
        self.data = row_data(row, args.train, args.test)
        self.note: Callable[..., None] = lambda **facts: None  # CellRunner.note

    def compile(self, model, lr: float = common.LR):
        model.compile(optimizer=self.k.optimizers.Adam(lr), loss=self.row.loss(self.k))
        return model

    def setup(self) -> dict:
        self.k.utils.set_random_seed(0)
        self.model = self.compile(self.row.build(self.k))
        loss = fit_steps(self.model, self.data, self.args.float_steps)
        return {"params": int(self.model.count_params()), "float_loss": loss,
                "float_test_accuracy": accuracy(self.model, self.data)}

    def cells(self) -> dict[str, Callable[[], dict]]:
        raise NotImplementedError


def child_main(argv, doc: str, side_name: str, make_side, cells: Sequence[str]) -> None:
    """The child process of one row: set-up, then each asked-for cell."""
    args = child_parser(doc, cells).parse_args(argv)
    row = ROWS[args.child]
    runner = CellRunner(args.partial, row.name, side_name)
    with tempfile.TemporaryDirectory() as workdir:
        side = make_side(row, args, workdir)
        side.note = runner.note
        runner.state["setup"] = runner.setup(side.setup)
        runner.write()
        table = side.cells()
        for name in args.cells.split(","):
            runner.run(name, table[name])


def child_parser(doc: str, cells: Sequence[str]):
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--child", required=True, help="the row to run")
    parser.add_argument("--cells", default=",".join(cells))
    parser.add_argument("--partial", required=True, help="the state file to write")
    add_recipe_args(parser)
    return parser


def add_recipe_args(parser) -> None:
    parser.add_argument("--float-steps", type=int, default=FLOAT_STEPS)
    parser.add_argument("--qat-steps", type=int, default=QAT_STEPS)
    parser.add_argument("--train", type=int, default=N_TRAIN)
    parser.add_argument("--test", type=int, default=N_TEST)


def recipe_args(args) -> list[str]:
    return ["--float-steps", str(args.float_steps), "--qat-steps", str(args.qat_steps),
            "--train", str(args.train), "--test", str(args.test)]


def run_row(script: str, row: str, cells: Sequence[str], timeout: float,
            extra: Sequence[str] = (), env: dict | None = None) -> dict:
    """Runs `script --child row` until every cell is recorded or time is up.

    A child that dies inside a cell (a converter segfault, an abort) gets
    that cell recorded as a crash and the rest run in a new child.
    """
    t0 = time.perf_counter()
    result: dict[str, Any] = {"cells": {}, "launches": 0}
    remaining = list(cells)
    while remaining:
        left = timeout - (time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as d:
            partial = os.path.join(d, "state.json")
            cmd = [sys.executable, script, "--child", row, "--cells", ",".join(remaining),
                   "--partial", partial, *extra]
            result["launches"] += 1
            before = _children_cpu()
            try:
                proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True,
                                      text=True, timeout=max(left, 1), check=False)
                rc, tail = proc.returncode, proc.stderr[-3000:]
            except subprocess.TimeoutExpired as e:
                rc, tail = "timeout", (e.stderr or b"")[-3000:]
                tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            result["cpu_s"] = round(result.get("cpu_s", 0) + _children_cpu() - before, 1)
            try:
                with open(partial) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                state = {"cells": {}, "running": "setup"}
        result["cells"].update(state.get("cells", {}))
        if state.get("setup"):
            result["setup"] = state["setup"]
        if "setup_s" in state:
            result.setdefault("setup_s", [])
            result["setup_s"].append(state["setup_s"])
        running = state.get("running")
        if rc == 0:
            break
        what = _death(rc, tail)
        if running in (None, "setup"):
            # Died outside a cell: nothing more can be learned by relaunching.
            for name in remaining:
                if name not in result["cells"]:
                    result["cells"][name] = {"status": "timeout" if rc == "timeout"
                                             else "crash", "error": f"{what} during "
                                             f"{running or 'start-up'}"}
            break
        result["cells"][running] = {"status": "timeout" if rc == "timeout" else "crash",
                                    "error": what, **state.get("progress", {})}
        if rc == "timeout":
            for name in remaining:
                result["cells"].setdefault(name, {"status": "not run",
                                                  "error": "row timeout"})
            break
        remaining = [c for c in remaining if c not in result["cells"]]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def _children_cpu() -> float:
    """CPU seconds of finished children (the row's cost on a loaded machine)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _death(rc, tail: str) -> str:
    last = [ln for ln in (tail or "").splitlines() if ln.strip()][-1:] or [""]
    if rc == "timeout":
        return "timed out (row timeout)"
    if isinstance(rc, int) and rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"process killed by {name}; last stderr line: {last[0][:200]}"
    return f"process exited {rc}; last stderr line: {last[0][:200]}"


# --------------------------------------------------------------------------
# TFLite files: outputs, ops, parity.


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
    if interp.get_signature_list():
        runner = interp.get_signature_runner()
        return (runner.get_input_details(), runner.get_output_details(),
                lambda feed: runner(**feed))
    interp.allocate_tensors()
    ins = {d["name"]: d for d in interp.get_input_details()}
    outs = {d["name"]: d for d in interp.get_output_details()}

    def invoke(feed):
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
            item["agreement"] = float(np.mean(have.argmax(-1) == want.argmax(-1)))
        per_output.append(item)
    agreements = [o["agreement"] for o in per_output if "agreement" in o]
    ratios = [o["mae_over_std"] for o in per_output if o["mae_over_std"] is not None]
    return {"agreement": min(agreements) if agreements else None,
            "mae_over_std": max(ratios) if ratios else None,
            "outputs": per_output}


def parity_met(p: dict) -> list[str]:
    """What misses the issue's parity goals (empty when both are met)."""
    misses = []
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


def grade(cell: dict, kind: str, parity_goal: bool) -> dict:
    """An export cell's status: float ops the report does not name, and (for
    QAT) parity misses, fail QAT on a keras.applications row (issue 13's
    "Must show") and make any other export cell partial."""
    problems = []
    named = str(cell.get("report_extra") or "")
    unnamed = [k for k in cell["float_ops"] if k.split("/")[0] not in named]
    if unnamed:
        problems.append("float ops" + (" not named in the report" if named else "")
                        + ": " + ", ".join(unnamed))
    if parity_goal:
        problems += parity_met(cell["parity"])
    else:
        agreement = cell["parity"]["agreement"]
        if agreement is not None and agreement < PTQ_MIN_AGREEMENT:
            problems.append(f"top-1 agreement {agreement:.1%} < {PTQ_MIN_AGREEMENT:.0%}")
    if problems:
        strict = kind == "applications" and parity_goal
        cell.update(status="fail" if strict else "partial",
                    problems=problems)
    return cell


def weights_left_dense(named_weights) -> tuple[float, list[str]]:
    """Zero fraction over the kernels (>= 2-D weights but biases: an
    attention layer's biases are 2-D) and the layers whose kernels stayed
    dense (under 25% zeros), from `(name, array)` pairs."""
    dense, zeros, total = set(), 0, 0
    for name, value in named_weights:
        path = name.split(":")[0]
        if value.ndim < 2 or path.rsplit("/", 1)[-1].endswith("bias"):
            continue
        zeros, total = zeros + int(np.sum(value == 0)), total + value.size
        if np.mean(value == 0) < 0.25:
            dense.add(path.rsplit("/", 1)[0])
    return (zeros / total if total else 0.0), sorted(dense)


def left_dense(cell: dict, dense: list[str], warned: list[str], structure: str) -> dict:
    """A pruning cell with weights left dense: 2:4 skipping a layer it cannot
    take, with a warning, is the designed behaviour; elsewhere a warned skip
    is a limit and a silent one is partial coverage."""
    if not dense:
        return cell
    listed = ", ".join(dense[:3]) + (", ..." if len(dense) > 3 else "")
    cell["summary"] += f"; {len(dense)} left dense ({listed})"
    if warned:
        cell["summary"] += ", warned"
        cell["status"] = "pass" if structure == "2:4" else "limit"
    else:
        cell["summary"] += ", silently"
        cell["status"] = "partial"
    return cell


def accuracy(model, data: dict) -> float | None:
    """Top-1 test accuracy of the first classification output, or None."""
    outs = model.predict(data["x_test"], verbose=0)
    out = outs[0] if isinstance(outs, (list, tuple)) else outs
    y = data["y_test"][0] if isinstance(data["y_test"], list) else data["y_test"]
    if np.ndim(out) != 2 or np.shape(out)[-1] < 2 or np.ndim(y) != 1:
        return None
    return round(float(np.mean(np.argmax(out, -1) == y)), 4)


def fit_steps(model, data: dict, steps: int, callbacks: Sequence[Any] = ()):
    """About `steps` training steps of `BATCH` on the row's data; the first
    and last epoch's loss."""
    import math

    n = len(data["y"][0] if isinstance(data["y"], list) else data["y"])
    want = steps * BATCH
    x, y = data["x"], data["y"]
    epochs = 1
    if want <= n:
        x, y = take(x, want), take(y, want)
    else:
        epochs = math.ceil(want / n)
    hist = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=False,
                     callbacks=list(callbacks))
    loss = hist.history.get("loss") or [float("nan")]
    return [round(float(loss[0]), 4), round(float(loss[-1]), 4)]
