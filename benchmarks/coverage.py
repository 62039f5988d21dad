"""Coverage matrix: keras.applications and keras.io-style models, end to end.

Rows (see `coverage_models.py`): 14 keras.applications families with
`weights=None` at their smallest input and default softmax head, and 7
keras.io-style models, all trained briefly on scikit-learn's digits.
Columns: pruning (unstructured, 2:4, channels), QAT -> int8 export (int8
coverage, float ops left, top-1 agreement and MAE / output std against the
QAT Keras model), post-training int8 export, `.keras` round trip, and
tfmot's result on the same architecture (`peer_tfmot_coverage.py`, tf_keras,
its own process). Each row runs in child processes (`coverage_cells.run_row`):
a crash is a recorded cell. Results merge per row into
`benchmarks/results/coverage.json`.

Cost (2 cores, 2026-11-28): a keras.io row takes ~20 s of CPU per side (about
1 min wall each); MobileNet (128 float steps) 205 s wall for tfaccel and 160 s
for tfmot at load average 2.5. Rows of 20M+ parameters or 71-75 px inputs
cost a few times more: plan on 2-3 hours for every row on an idle machine
(estimate; not yet run in full), and use `--rows` to refresh some.

Usage:

    .venv/bin/python benchmarks/coverage.py                      # every row
    .venv/bin/python benchmarks/coverage.py --rows MobileNet,two_io
    .venv/bin/python benchmarks/coverage.py --skip-tfmot --rows conv1d_text
    .venv/bin/python benchmarks/run_all.py --report-only         # BENCHMARKS.md
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import coverage_cells as cc  # noqa: E402
from coverage_models import ROWS, take  # noqa: E402

CELLS = cc.TFACCEL_CELLS
OUT = os.path.join(common.RESULTS_DIR, "coverage.json")
ROW_TIMEOUT = 2400  # per row and side; big rows on a loaded 2-core machine need it


def _feed(model, x):
    """Calibration / verification data as tfaccel takes it: a dict by input
    name for a multi-input model."""
    if isinstance(x, (list, tuple)):
        return {t.name.split(":")[0]: a for t, a in zip(model.inputs, x)}
    return x


class TfaccelRow(cc.RowSide):
    """The tfaccel side of one row (runs in the child process)."""

    def __init__(self, row, args, workdir: str):
        import keras

        import tfaccel

        super().__init__(keras, row, args, workdir)
        self.tfaccel = tfaccel
        self._wrapped: dict = {}

    def cells(self) -> dict:
        return {"prune": self.prune, "prune_2_4": lambda: self.prune("2:4"),
                "channels": self.channels, "keras_roundtrip": self.keras_roundtrip,
                "qat_int8": self.qat_int8, "ptq_int8": self.ptq_int8}

    def _schedule(self):
        return self.tfaccel.schedules.ConstantSparsity(0.5, begin_step=0, frequency=1)

    def _pruned(self, structure: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruned = self.tfaccel.prune(self.model, self._schedule(), structure=structure)
            self.compile(pruned)
            cc.fit_steps(pruned, self.data, cc.PRUNE_STEPS)
            plain = self.tfaccel.strip_pruning(pruned)
        said = sorted({str(w.message).splitlines()[0][:200] for w in caught
                       if "tfaccel" in type(w.message).__name__.lower()
                       or "tfaccel" in (w.filename or "")})
        self._wrapped[structure] = pruned  # the round trip saves this one
        return pruned, plain, said

    def prune(self, structure="unstructured") -> dict:
        _, plain, said = self._pruned(structure)
        sparsity, dense = cc.weights_left_dense(
            (w.path, self.k.ops.convert_to_numpy(w)) for w in plain.weights)
        cell = {"sparsity": round(sparsity, 4), "left_dense": dense, "warnings": said,
                "summary": f"{sparsity:.0%} of kernels zero"}
        return cc.left_dense(cell, dense, said, structure)

    def channels(self) -> dict:
        pruned, plain, said = self._pruned("channels")
        wrapped = len(self.tfaccel.pruning.pruning_wrappers(pruned))
        before, after = int(self.model.count_params()), int(plain.count_params())
        plain.predict(take(self.data["x_test"], 4), verbose=0)
        cell = {"params_before": before, "params_after": after, "wrapped_layers": wrapped,
                "warnings": said, "summary": f"{before:,} -> {after:,} params "
                f"({after / before - 1:+.0%}, {wrapped} layers)"}
        if after >= before:
            # Nothing removed: a limit when tfaccel said which layers and
            # why (recurrent layers, channels that reach an output), else
            # silent partial coverage.
            cell["status"] = "limit" if said else "partial"
        return cell

    def keras_roundtrip(self) -> dict:
        x = take(self.data["x_test"], 16)
        variants = {"float": lambda: self.model,
                    "pruned": lambda: (self._wrapped.get("unstructured")
                                       or self._pruned("unstructured")[0]),
                    "qat": lambda: self._wrapped.get("qat") or self.tfaccel.quantize(
                        self.model, _feed(self.model, take(self.data["x"], cc.N_CALIBRATION)))}
        parts, first_error = {}, None
        for name, make in variants.items():
            try:
                m = make()
            except Exception as e:  # noqa: BLE001 - its own column reports it
                parts[name] = "not built: " + cc.error_line(e)
                continue
            try:
                path = os.path.join(self.workdir, f"{name}.keras")
                m.save(path)
                back = self.k.models.load_model(path)
                a = self.k.tree.flatten(m.predict(x, verbose=0))
                b = self.k.tree.flatten(back.predict(x, verbose=0))
                diff = max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))
                if not diff <= 1e-5:
                    raise AssertionError(f"predictions differ after load: {diff:.3g}")
                parts[name] = "ok"
            except Exception as e:  # noqa: BLE001 - each variant is reported
                parts[name] = cc.error_line(e)
                first_error = first_error or f"{name}: {parts[name]}"
        shown = {k: v if v in ("ok",) or v.startswith("not built") else "FAIL"
                 for k, v in parts.items()}
        cell = {"parts": parts, "summary": ", ".join(
            f"{k} {v.split(':')[0]}" for k, v in shown.items())}
        if first_error:
            cell.update(status="fail", error=first_error)
        return cell

    def _export(self, model, path: str, **kwargs) -> dict:
        x_test = self.data["x_test"]
        report = self.tfaccel.export_tflite(
            model, path, verification_data=_feed(model, x_test), **kwargs)
        expected = [np.asarray(o) for o in self.k.tree.flatten(
            model.predict(x_test, verbose=0))]
        inputs = x_test if isinstance(x_test, list) else [x_test]
        got = cc.tflite_outputs(path, inputs, [t.name.split(":")[0] for t in model.inputs],
                                [e.shape[1:] for e in expected])
        facts, p = cc.op_facts(path), cc.parity(expected, got)
        known = {"path", "quantization", "bytes", "gzip_bytes", "sparsity",
                 "tensor_sparsity", "ops", "int8_coverage", "inputs", "outputs",
                 "agreement", "max_abs_error", "mean_abs_error", "num_samples",
                 "conversion_seconds", "notes"}
        d = report.to_dict()
        extra = {k: v for k, v in d.items() if k not in known}
        return {**facts, "parity": p, "report_int8_coverage": d.get("int8_coverage"),
                "report_extra": extra, "report_notes": d.get("notes"),
                "conversion_s": d.get("conversion_seconds"),
                "summary": cc.export_summary(facts, p)}

    def qat_int8(self) -> dict:
        calib = _feed(self.model, take(self.data["x"], cc.N_CALIBRATION))
        qat = self.compile(self.tfaccel.quantize(self.model, calib), common.QAT_LR)
        loss = cc.fit_steps(qat, self.data, self.args.qat_steps)
        self._wrapped["qat"] = qat  # the round trip (last) saves the trained one
        cell = {"qat_loss": loss, "qat_test_accuracy": cc.accuracy(qat, self.data)}
        self.note(**cell)
        try:
            cell.update(self._export(qat, os.path.join(self.workdir, "qat.tflite")))
        except Exception as e:
            if not all(map(_finite, loss)):
                raise RuntimeError(f"QAT fine-tune loss {loss} (not finite), then export: "
                                   f"{cc.error_line(e)}") from e
            raise
        return cc.grade(cell, self.row.kind, parity_goal=True)

    def ptq_int8(self) -> dict:
        rep = _feed(self.model, take(self.data["x"], cc.N_CALIBRATION))
        cell = self._export(self.model, os.path.join(self.workdir, "ptq.tflite"),
                            quantization="int8", representative_data=rep)
        return cc.grade(cell, self.row.kind, parity_goal=False)


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def child(argv) -> None:
    cc.child_main(argv, __doc__, "tfaccel", TfaccelRow, CELLS)


def main(argv=None) -> dict:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="", help=f"comma-separated subset of "
                        f"{list(ROWS)} (default: every row); results merge per row")
    parser.add_argument("--skip-tfmot", action="store_true",
                        help="run the tfaccel side only (tfmot cells kept from the JSON)")
    parser.add_argument("--timeout", type=int, default=ROW_TIMEOUT,
                        help="seconds allowed per row and side")
    parser.add_argument("--out", default=os.path.relpath(OUT, common.ROOT),
                        help="the JSON to merge the rows into")
    cc.add_recipe_args(parser)
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r] or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows must be among {list(ROWS)}. Received: {unknown}")
    log = common.Clock("coverage")
    out = os.path.join(common.ROOT, args.out)
    env_info = common.env_info()
    fields = {"benchmark": "coverage", "command": common.command_line(),
              "env": env_info, "recipe": recipe(args)}
    sides = "tfaccel side" if args.skip_tfmot else "both sides"
    run = (f"{fields['command']} ({env_info['time_utc']}, commit "
           f"{env_info['git_commit']}, {sides})")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    here = os.path.dirname(os.path.abspath(__file__))
    result = _merge(out, fields, run, {})
    for name in rows:
        entry = dict(result["rows"].get(name) or {})
        entry.update({"kind": ROWS[name].kind, "description": ROWS[name].description,
                      "recipe": fields["recipe"], "time_utc": common.env_info()["time_utc"],
                      "loadavg": [round(v, 2) for v in os.getloadavg()]})
        log(f"{name}: tfaccel")
        entry["tfaccel"] = cc.run_row(os.path.join(here, "coverage.py"), name, CELLS,
                                      args.timeout, cc.recipe_args(args), env)
        if not args.skip_tfmot:
            log(f"{name}: tfmot")
            entry["tfmot"] = cc.run_row(
                os.path.join(here, "peer_tfmot_coverage.py"), name, cc.TFMOT_CELLS,
                args.timeout, cc.recipe_args(args), {**env, "TF_USE_LEGACY_KERAS": "1"})
        log(f"{name}: " + ", ".join(f"{c} {v['status']}" for c, v in
                                     entry["tfaccel"]["cells"].items()))
        # After every row: an interrupted run keeps its rows.
        result = _merge(out, fields, run, {name: entry})
    result["elapsed_s"] = log.elapsed()
    common.emit(result, out)
    return result


def _merge(out: str, fields: dict, run: str, rows: dict) -> dict:
    """Merges `rows` into the JSON at `out` as it is now, and writes it.

    The file is re-read at every write, so rows (and hand-written notes)
    that another run or an editor stored meanwhile are kept; `runs` lists
    each command that contributed rows.
    """
    import json

    try:
        with open(out) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {}
    result.update(fields)
    result.pop("loadavg_end", None)
    merged = {**result.get("rows", {}), **rows}
    result["rows"] = {n: merged[n] for n in [*ROWS, *merged] if n in merged}
    if rows and run not in result.setdefault("runs", []):
        result["runs"].append(run)
    common.emit(result, out)
    return result


def recipe(args) -> dict:
    return {
        "data": f"sklearn load_digits (benchmarks/common.load_digits_split), first "
                f"{args.train} training digits, {args.test} held-out digits for parity",
        "float": f"Adam {common.LR}, ~{args.float_steps} steps of batch {cc.BATCH} "
                 "from weights=None (the row's 'trained weights')",
        "pruning": f"ConstantSparsity(0.5, begin_step=0, frequency=1), {cc.PRUNE_STEPS} "
                   "steps, then strip_pruning",
        "qat": f"quantize(calibration {cc.N_CALIBRATION} samples), Adam {common.QAT_LR}, "
               f"~{args.qat_steps} steps, export_tflite (float I/O)",
        "ptq": f"export_tflite(quantization='int8', {cc.N_CALIBRATION} representative "
               "samples)",
        "parity": f"on the {args.test} held-out digits, int8 file vs the Keras model it "
                  f"came from: top-1 agreement >= {cc.MIN_AGREEMENT:.0%} (the file's "
                  "top-1 is one of the Keras model's top-1 classes: an exact tie in "
                  "a QAT model's int8-valued output is not a disagreement) and MAE <= "
                  f"{cc.MAX_MAE_OVER_STD:.0%} of the Keras output's std",
    }


if __name__ == "__main__":
    if "--child" in sys.argv:
        child(sys.argv[1:])
    else:
        main(sys.argv[1:])
