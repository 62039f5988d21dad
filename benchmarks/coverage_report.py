"""The coverage matrix section of BENCHMARKS.md, from `results/coverage.json`.

Imported by `run_all.py`; imports no Keras.
"""

from __future__ import annotations

from coverage_cells import MAX_MAE_OVER_STD, MIN_AGREEMENT
from coverage_models import ROWS
from coverage_tflite import MAX_TOP_CLASS_SHARE

# A float fine-tune under this held-out accuracy did not learn (10 classes).
UNTRAINED_ACCURACY = 0.2

COMMAND = ".venv/bin/python benchmarks/coverage.py"
COLUMNS = [("tfaccel", "prune", "prune"), ("tfaccel", "prune_2_4", "2:4"),
           ("tfaccel", "channels", "channels (params)"),
           ("tfaccel", "qat_int8", "QAT -> int8"), ("tfaccel", "ptq_int8", "PTQ int8"),
           ("tfaccel", "keras_roundtrip", ".keras round trip"),
           ("tfmot", "prune", "tfmot prune"), ("tfmot", "prune_2_4", "tfmot 2:4"),
           ("tfmot", "qat_int8", "tfmot QAT -> int8")]
# The columns both libraries have, for "tfaccel passes what tfmot passes".
SHARED = ("prune", "prune_2_4", "qat_int8")
PASSING = ("pass", "limit", "refused")


def _short(cell: dict, column: str) -> str:
    if column == "channels" and "params_before" in cell:
        return f"{_m(cell['params_before'])} -> {_m(cell['params_after'])}"
    if column in ("prune", "prune_2_4") and "sparsity" in cell:
        dense = cell.get("left_dense") or []
        return f"{cell['sparsity']:.0%}" + (f", {len(dense)} dense" if dense else "")
    if column in ("qat_int8", "ptq_int8") and "int8_coverage" in cell:
        cov = cell["int8_coverage"]
        parts = [f"int8 {cov:.0%}" if cov is not None else "no compute op"]
        floats = sum((cell.get("float_ops") or {}).values())
        if floats:
            parts.append(f"{floats} float ops")
        p = cell.get("parity") or {}
        if p.get("agreement") is not None:
            parts.append(f"agree {p['agreement']:.0%}")
        return ", ".join(parts)
    return ""


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _cell(cell: dict | None, column: str, notes: list[str], label: str) -> str:
    if not cell:
        return "-"
    status = cell.get("status", "?")
    text = status if status in PASSING else f"**{status}**"
    short = _short(cell, column)
    if short:
        text += f" {short}"
    why = cell.get("error") or "; ".join(cell.get("problems") or [])
    if status not in ("pass",) and why:
        notes.append(f"{label}: {why}")
        text += f" [{len(notes)}]"
    return text


def render_coverage(d: dict) -> list[str]:
    out = ["## Coverage matrix", ""]
    rows = (d or {}).get("rows") or {}
    if not rows:
        return out + [f"Not run: `{COMMAND}` (minutes; `--rows A,B` for some rows).", ""]
    out += [
        "Every keras.applications family (`weights=None`, smallest input, default "
        "1000-class softmax head) and keras.io-style models, briefly trained on the "
        "digits, through each tfaccel feature, beside tfmot 0.8.1 on the same "
        "architecture built with tf_keras (its own process). A cell passes; is "
        "`refused` (tfaccel raised up front, naming the layer and what to do) or a "
        "`limit` (layers skipped with a warning); `partial` (works, with float ops, "
        "missed parity on a keras.io row, or layers silently left out); or **fails** "
        "with the error a user sees. The notes under the table give each error's "
        "first line. **crash** is a process killed inside the cell (the rest of the "
        "row ran in a new process); 2:4 leaving a stem conv dense with a warning is "
        "the designed behaviour and passes.",
        "",
        f"Full run: `{COMMAND}`; some rows: `{COMMAND} --rows MobileNet,two_io` "
        "(results merge per row into `benchmarks/results/coverage.json`); "
        "`--skip-tfmot` runs the tfaccel side only. Recipe: "
        + "; ".join(f"**{k}**: {v}" for k, v in (d.get("recipe") or {}).items()) + ".",
        "",
    ]
    notes: list[str] = []
    table = []
    for name in [n for n in ROWS if n in rows]:
        r = rows[name]
        params = ((r.get("tfaccel") or {}).get("setup") or {}).get("params")
        line = [f"{name}" + (f" ({_m(params)})" if params else "")]
        for side, column, title in COLUMNS:
            cell = ((r.get(side) or {}).get("cells") or {}).get(column)
            line.append(_cell(cell, column, notes, f"{name} / {title}"))
        line.append(" / ".join(_seconds(r.get(s)) for s in ("tfaccel", "tfmot")))
        table.append(line)
    out += _table(["row"] + [t for _, _, t in COLUMNS] + ["wall (CPU) s, tfaccel / tfmot"],
                  table)
    if notes:
        out += ["Notes:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)] + [""]
    out += _parity(rows) + _behind_tfmot(rows) + _recipes(rows, d) + _timing(rows)
    if d.get("note"):
        out += [d["note"], ""]
    return out


def _recipes(rows: dict, d: dict) -> list[str]:
    """Rows measured with another float fine-tune than the header's recipe."""
    current = (d.get("recipe") or {}).get("float")
    other: dict[str, list[str]] = {}
    for name, r in rows.items():
        used = (r.get("recipe") or {}).get("float", "not recorded (before per-row recipes)")
        if used != current:
            other.setdefault(used, []).append(name)
    return [f"Measured with float fine-tune \"{k}\": {', '.join(v)}." for k, v in
            other.items()] + ([""] if other else [])


def _parity(rows: dict) -> list[str]:
    table = []
    untrained = []
    for name in [n for n in ROWS if n in rows and ROWS[n].kind == "applications"]:
        line = [name]
        for side in ("tfaccel", "tfmot"):
            s = rows[name].get(side) or {}
            cell = (s.get("cells") or {}).get("qat_int8") or {}
            p = cell.get("parity") or {}
            acc = (s.get("setup") or {}).get("float_test_accuracy")
            agreement = _pct(p.get("agreement"))
            share = p.get("top_class_share")
            if share is not None and share >= MAX_TOP_CLASS_SHARE:
                # The QAT model collapsed (or never learned): one class.
                agreement += f" (one class for {share:.0%})"
            elif acc is not None and acc < UNTRAINED_ACCURACY and p.get("agreement") is not None:
                agreement += " (no evidence)"
                untrained.append(f"{name} ({'tfaccel' if side == 'tfaccel' else 'tfmot'}: "
                                 f"float {acc:.1%})")
            line += [_pct(acc), _pct(cell.get("qat_test_accuracy")), agreement,
                     _pct(p.get("mae_over_std"), 2)]
        table.append(line)
    if not table:
        return []
    lines = [f"Parity of the QAT int8 file with its QAT Keras model on trained weights "
             f"(keras.applications rows; goal: agreement >= {MIN_AGREEMENT:.0%} and MAE "
             f"<= {MAX_MAE_OVER_STD:.0%} of the output std; accuracies on held-out digits "
             "after the short fine-tunes):", ""] + _table(
        ["row", "float acc", "QAT acc", "agreement", "MAE/std", "tfmot float acc",
         "tfmot QAT acc", "tfmot agreement", "tfmot MAE/std"], table)
    short = [line[0] for line in table
             if line[3] not in ("", "-") and "no evidence" not in line[3]
             and _below(rows[line[0]], MIN_AGREEMENT)]
    if short:
        lines += ["Under the agreement goal: " + ", ".join(short) + ". On MobileNet and "
                  "EfficientNetB0, `compare_layers` ran each layer alone on the file's "
                  "own inputs: every layer is within one int8 step of the file (30 and "
                  "208 layers), while end to end those steps grow to tens of steps deep "
                  "in the network and flip the near-ties; see docs/quantization.md, "
                  "\"Where an int8 file parts from its QAT model\".", ""]
    if untrained:
        lines += [f"No evidence of parity where the float fine-tune stayed under "
                  f"{UNTRAINED_ACCURACY:.0%} on 10 digit classes (chance 10%): a model "
                  "that did not learn gives about one class, and agreeing with it proves "
                  "nothing. Its row needs a recipe that trains it: "
                  + ", ".join(untrained) + ".", ""]
    return lines


def _below(row: dict, goal: float) -> bool:
    cell = ((row.get("tfaccel") or {}).get("cells") or {}).get("qat_int8") or {}
    agreement = (cell.get("parity") or {}).get("agreement")
    return agreement is not None and agreement < goal


def _behind_tfmot(rows: dict) -> list[str]:
    behind = []
    for name in [n for n in ROWS if n in rows and ROWS[n].kind == "applications"]:
        for column in SHARED:
            mine = ((rows[name].get("tfaccel") or {}).get("cells") or {}).get(column)
            theirs = ((rows[name].get("tfmot") or {}).get("cells") or {}).get(column)
            if theirs and theirs.get("status") == "pass" and (
                    not mine or mine.get("status") != "pass"):
                behind.append(f"{name} {column}")
    if not behind:
        return ["On every keras.applications row run, tfaccel passes each column that "
                "tfmot passes.", ""]
    return ["tfmot passes and tfaccel does not: " + ", ".join(behind) + ".", ""]


def _seconds(side: dict | None) -> str:
    if not side:
        return "-"
    cpu = side.get("cpu_s")
    return f"{side.get('wall_s', 0):.0f}" + (f" ({cpu:.0f})" if cpu is not None else "")


def _timing(rows: dict) -> list[str]:
    sides = [r.get(s) or {} for r in rows.values() for s in ("tfaccel", "tfmot")]
    wall = sum(s.get("wall_s", 0) for s in sides)
    cpu = sum(s.get("cpu_s", 0) for s in sides)
    times = sorted({r.get("time_utc", "") for r in rows.values()})
    loads = [r["loadavg"][0] for r in rows.values() if r.get("loadavg")]
    return [f"{len(rows)} of {len(ROWS)} rows recorded, measured {times[0]} to "
            f"{times[-1]}: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU (child "
            f"processes) on this 2-core machine, shared with other jobs (1-min load "
            f"average at the rows' start {min(loads, default=0):.1f}-"
            f"{max(loads, default=0):.1f}).", ""]


def _pct(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]
