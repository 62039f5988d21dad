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
from coverage_tflite import (  # noqa: F401 - the sides use them as cc.*
    MAX_MAE_OVER_STD,
    MIN_AGREEMENT,
    export_summary,
    op_facts,
    parity,
    parity_met,
    tflite_outputs,
)

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
# Below this a post-training file is reported partial (export's own warning
# threshold, tfaccel.export.verify.DEFAULT_MIN_AGREEMENT).
PTQ_MIN_AGREEMENT = 0.9

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
        self.model = self.compile(self.row.build(self.k), self.row.float_lr or common.LR)
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


def grade(cell: dict, kind: str, parity_goal: bool) -> dict:
    """An export cell's status: float ops (other than those the report lists
    as having no int8 kernel in TFLite) and, for QAT, parity misses fail QAT
    on a keras.applications row (issue 13's "Must show") and make any other
    export cell partial; so does a post-training file under 90% agreement."""
    problems = []
    listed = (cell.get("report_extra") or {}).get("float_ops")
    if listed is None:
        # A report without its own list: every float op found counts.
        if cell["float_ops"]:
            problems.append("float ops: " + ", ".join(cell["float_ops"]))
    else:
        # The report lists each non-integer op with its layer and whether
        # TFLite has an int8 kernel for it: only those with one are islands.
        islands = sorted({f"{o['op']} ({o.get('layer')})" for o in listed
                          if o.get("int8_kernel")})
        cell["no_int8_kernel"] = sorted({o["op"] for o in listed
                                         if not o.get("int8_kernel")})
        if islands:
            problems.append("float islands: " + ", ".join(islands))
        missed = [k for k in cell["float_ops"]
                  if k.split("/")[0] not in {o["op"] for o in listed}]
        if missed:
            problems.append("float ops the report does not list: " + ", ".join(missed))
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
