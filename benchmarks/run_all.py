"""Runs every benchmark, each in its own process, and regenerates BENCHMARKS.md.

Each benchmark writes `benchmarks/results/<name>.json` (its stderr goes to
`benchmarks/results/<name>.log`). The tfmot peer runs with
`TF_USE_LEGACY_KERAS=1`; the tfaccel benchmarks run with it unset, so the
two stacks never share a process. `BENCHMARKS.md` at the repository root is
then written from whatever JSON files exist: figures that failed or were not
run show as "n/a" with the reason.

Usage:

    .venv/bin/python benchmarks/run_all.py                 # everything (make bench)
    .venv/bin/python benchmarks/run_all.py --only qat      # one benchmark, then the report
    .venv/bin/python benchmarks/run_all.py --report-only   # rewrite BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import coverage_report  # noqa: E402
import distillation  # noqa: E402
import one_fit  # noqa: E402
import peer_keras_quantize  # noqa: E402
import qat_from_scratch  # noqa: E402
import qat_sweep  # noqa: E402
import transformers as transformers_bench  # noqa: E402  (benchmarks/transformers.py)

PY = ".venv/bin/python"
BENCHES = {
    "peer_tfmot": "benchmarks/peer_tfmot.py",
    "pruning": "benchmarks/pruning.py",
    "qat": "benchmarks/qat.py",
    "channels": "benchmarks/channels.py",
    "distillation_cache": "benchmarks/distillation_cache.py",
    "distillation": "benchmarks/distillation.py",
    "distribute": "benchmarks/distribute.py",
    "peer_keras_quantize": "benchmarks/peer_keras_quantize.py",
    "pruning_callback": "benchmarks/pruning_callback.py",
    "clustering": "benchmarks/clustering.py",
    "transformers": "benchmarks/transformers.py",
    "one_fit": "benchmarks/one_fit.py",
    "coverage": "benchmarks/coverage.py",
    "qat_from_scratch": "benchmarks/qat_from_scratch.py",
    "qat_sweep": "benchmarks/qat_sweep.py",
}
# Benchmarks that take `--sections digits,overhead,mobilenet`.
SECTIONED = ("peer_tfmot", "pruning", "qat")
# Arguments of a smoke run (`--quick`), per benchmark.
QUICK = {
    "peer_tfmot": ["--seeds", "0", "--repeats", "5"],
    "pruning": ["--seeds", "0", "--repeats", "5"],
    "qat": ["--seeds", "0", "--repeats", "5"],
    "channels": ["--seeds", "1", "--runs", "3", "--epochs", "5", "--finetune-epochs", "3"],
    "distillation_cache": ["--epochs", "1", "--repeat", "3"],
    "distillation": ["--seeds", "0"],
    "distribute": ["--repeats", "3", "--batches", "256"],
    "peer_keras_quantize": ["--seeds", "0"],
    "pruning_callback": ["--seeds", "0", "--repeats", "5"],
    "clustering": ["--seeds", "0", "--repeats", "3"],
    "transformers": ["--seeds", "0"],
    "one_fit": ["--seeds", "0"],
    "coverage": ["--rows", "nested_sequential,two_io"],
    "qat_from_scratch": ["--seeds", "0", "--scales", "1"],
    "qat_sweep": ["--quick"],
}
# Benchmarks that need more than --timeout (seconds): the coverage matrix runs
# 21 rows, each in its own processes; the QAT sweep 50 processes.
MIN_TIMEOUT = {"coverage": 8 * 3600, "qat_sweep": 6 * 3600}
REPORT = os.path.join(common.ROOT, "BENCHMARKS.md")


def run_one(name: str, extra: list[str], timeout: int,
            results_dir: str = common.RESULTS_DIR) -> dict:
    script = BENCHES[name]
    out = os.path.join(results_dir, f"{name}.json")
    log_path = os.path.join(results_dir, f"{name}.log")
    os.makedirs(results_dir, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if name != "peer_tfmot":
        env.pop("TF_USE_LEGACY_KERAS", None)
    # Relative paths (cwd is the repo root) so the command recorded in the
    # JSON is the one to type.
    cmd = [sys.executable, script, "--out", os.path.relpath(out, common.ROOT), *extra]
    print(f"[run_all] {name}: {' '.join([PY, *cmd[1:]])}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=common.ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=log, timeout=timeout, check=False)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = round(time.perf_counter() - t0, 1)
    print(f"[run_all] {name}: exit {rc} after {wall}s (log: "
          f"{os.path.relpath(log_path, common.ROOT)})", flush=True)
    return {"name": name, "returncode": rc, "wall_s": wall}


# --------------------------------------------------------------------------
# Report.


def _load(name: str, results_dir: str = common.RESULTS_DIR) -> dict:
    path = os.path.join(results_dir, f"{name}.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def get(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _error(d: dict, section: str) -> str | None:
    if not d:
        return "not run"
    sec = d.get(section)
    if sec is None:
        return "not run"
    if isinstance(sec, dict) and "error" in sec:
        return sec["error"].splitlines()[0][:120]
    return None


def fmt(value, kind: str = "") -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "pts":
        return f"{value:+.2f} pts"
    if kind == "x":
        return f"{value:.3f}x"
    if kind == "kb":
        return f"{value / 1024:,.1f} KiB"
    if kind == "s":
        return f"{value:.2f} s"
    if kind == "ms":
        return f"{value:.2f} ms"
    return str(value)


def _cmd(name: str, section: str) -> str:
    return f"`{PY} {BENCHES[name]} --sections {section}`"


def _met(value, op: str, target: float) -> str:
    if value is None:
        return "n/a"
    ok = value <= target if op == "<=" else value >= target
    return "yes" if ok else "**no**"


def _speedup(d: dict, threads: int) -> float | None:
    lat = get(d, "mobilenet.latency_ms")
    if not lat:
        return None
    # Min latencies: the steadier figure on a loaded machine.
    f = get(lat, f"float32@{threads}.min_ms")
    q = get(lat, f"qat_int8@{threads}.min_ms")
    return round(f / q, 3) if f and q else None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _value_or_error(d: dict, section: str, key: str, kind: str) -> str:
    err = _error(d, section)
    if err:
        return f"n/a ({err})"
    return fmt(get(d, f"{section}.{key}"), kind)


def render(runs: list[dict] | None = None, results_dir: str = common.RESULTS_DIR) -> str:
    peer, pru, qat = (_load(n, results_dir) for n in ("peer_tfmot", "pruning", "qat"))
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python benchmarks/run_all.py`); do not edit",
        "by hand. Every figure below comes from the JSON in `benchmarks/results/`",
        "(committed, with the logs); the \"reproduce\" column gives the command that",
        "measures it on its own. tfaccel runs on Keras 3; the tfmot peer (tensorflow-model-optimization",
        "0.8.1) runs on `tf_keras` in its own process, on the same architecture, data",
        "and recipe. Figures are reported as measured, whichever way they point.",
        "",
    ]
    env = (pru or qat or peer).get("env", {})
    if env:
        versions = env.get("versions", {})
        lines += [
            "## Environment",
            "",
            f"- CPU: {env.get('cpu')}, {env.get('cores')} cores "
            f"({env.get('affinity_cores')} usable); {env.get('platform')}",
            f"- Python {env.get('python')}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
            f"- Working tree at commit {env.get('git_commit')} (uncommitted changes "
            f"possible); measured {env.get('time_utc')} (each run records its own env "
            "in its JSON).",
            "- The machine is shared with other jobs: timing ratios are medians of "
            "interleaved rounds, which cancels slow drifts but not all noise. Load "
            "average (1/5/15 min) at start -> end of each run: "
            + "; ".join(f"{n} {get(d, 'env.loadavg') or 'n/a'} -> "
                        f"{d.get('loadavg_end') or 'n/a'}"
                        for n, d in (("tfmot", peer), ("pruning", pru), ("qat", qat)) if d)
            + ".",
            "",
        ]
    recipe = (pru or qat or peer).get("recipe", {})
    if recipe:
        lines += ["## Recipe (both sides)", ""]
        lines += [f"- **{k}**: {v}" for k, v in recipe.items()]
        lines += [""]

    s1, s2 = _speedup(qat, 1), _speedup(qat, 2)
    p1, p2 = _speedup(peer, 1), _speedup(peer, 2)
    goals = [
        ("Pruned 80% digits accuracy minus dense (mean of 3 seeds)", ">= -1.00 pts",
         get(pru, "digits.mean.pruned_minus_dense_points"), ">=", -1.0, "pts",
         get(peer, "digits.mean.pruned_minus_dense_points"), "-1.26 pts",
         _cmd("pruning", "digits")),
        ("Pruned float32 TFLite gzip / dense float32 gzip (digits)", "<= 0.35x",
         get(pru, "digits.mean.pruned_gzip_ratio"), "<=", 0.35, "x",
         get(peer, "digits.mean.pruned_gzip_ratio"), "", _cmd("pruning", "digits")),
        ("Train-step time, pruned / unpruned (median ratio)", "<= 1.05x",
         get(pru, "overhead.ratio.pruned"), "<=", 1.05, "x",
         get(peer, "overhead.ratio.pruned"), "1.05x", _cmd("pruning", "overhead")),
        ("Train-step time, QAT / float (median ratio)", "<= 1.19x",
         get(qat, "overhead.ratio.qat"), "<=", 1.19, "x",
         get(peer, "overhead.ratio.qat"), "1.19x", _cmd("qat", "overhead")),
        ("Digits int8 TFLite accuracy minus float Keras (mean of 3 seeds)", ">= -0.20 pts",
         get(qat, "digits.mean.qat_int8_minus_float_points"), ">=", -0.2, "pts",
         get(peer, "digits.mean.qat_int8_minus_float_points"), "", _cmd("qat", "digits")),
        ("Digits top-1 agreement, int8 TFLite vs QAT Keras (mean of 3 seeds)", ">= 99%",
         get(qat, "digits.mean.qat_int8_agreement_vs_qat_keras"), ">=", 0.99, "pct",
         get(peer, "digits.mean.qat_int8_agreement_vs_qat_keras"), "",
         _cmd("qat", "digits")),
        ("MobileNetV2 QAT int8 file / converter PTQ int8 file", "<= 1.01x",
         get(qat, "mobilenet.qat_int8_vs_ptq_int8_bytes"), "<=", 1.01, "x",
         get(peer, "mobilenet.qat_int8_vs_ptq_int8_bytes"), "", _cmd("qat", "mobilenet")),
        ("MobileNetV2 pruned 80% + int8 gzip / dense float32 gzip; every layer 80% "
         "(allocation='uniform', tfmot's way)", "<= 0.09x",
         get(pru, "mobilenet.pruned_int8_gzip_vs_dense_float32_gzip"), "<=", 0.09, "x",
         get(peer, "mobilenet.pruned_int8_gzip_vs_dense_float32_gzip"), "",
         _cmd("pruning", "mobilenet")),
        ("MobileNetV2 pruned 80% + int8 gzip / dense float32 gzip; 80% of all kernel "
         "weights shared by size (allocation='erk'), QAT int8", "<= 0.09x",
         get(pru, "mobilenet.erk_pruned_qat_int8_gzip_vs_dense_float32_gzip"), "<=", 0.09,
         "x", None, "", _cmd("pruning", "mobilenet")),
        ("MobileNetV2 export time, QAT int8 / float32", "<= 1.5x",
         get(qat, "mobilenet.qat_export_ratio"), "<=", 1.5, "x",
         get(peer, "mobilenet.qat_convert_ratio"), "", _cmd("qat", "mobilenet")),
        ("MobileNetV2 speed-up, QAT int8 vs float32 latency (min), 1 thread", "reported",
         s1, None, None, "x", p1, "", _cmd("qat", "mobilenet")),
        ("MobileNetV2 speed-up, QAT int8 vs float32 latency (min), 2 threads", "reported",
         s2, None, None, "x", p2, "", _cmd("qat", "mobilenet")),
    ]
    def n_seeds(d, what):
        seeds = get(d, "digits.seeds")
        return f" (n={len(seeds)})" if seeds and "mean of 3 seeds" in what else ""

    sources = {"pruning.py": pru, "qat.py": qat}
    rows = []
    for what, target, mine, op, thr, kind, theirs, quoted, cmd in goals:
        met = _met(mine, op, thr) if op else "-"
        mine_d = next((d for k, d in sources.items() if k in cmd), {})
        rows.append([what, target, fmt(mine, kind) + n_seeds(mine_d, what), met,
                     fmt(theirs, kind) + n_seeds(peer, what), quoted or "-", cmd])
    lines += ["## Goals: goal / measured / tfmot peer", ""]
    lines += _table(["figure", "goal", "tfaccel", "met", "tfmot 0.8.1 (measured here)",
                     "issue's tfmot figure", "reproduce"], rows)
    lines += [
        "\"n/a\" means the figure is missing from the JSON: see the section below for "
        "the error, and `benchmarks/results/<name>.log`.",
        "",
    ]
    lines += _digits_section(pru, qat, peer)
    lines += _overhead_section(pru, qat, peer)
    lines += _mobilenet_section(pru, qat, peer)
    more = {n: _load(n, results_dir)
            for n in ("channels", "distillation_cache", "distillation", "distribute",
                      "peer_keras_quantize", "pruning_callback", "clustering",
                      "transformers", "one_fit", "coverage",
                      "qat_from_scratch", "qat_sweep")}
    lines += _more_goals_section(more["channels"], more["distillation_cache"])
    lines += _channels_section(more["channels"])
    lines += _distillation_cache_section(more["distillation_cache"])
    lines += _distillation_section(more["distillation"])
    lines += distillation.render_few_labels(more["distillation"])
    lines += _distribute_section(more["distribute"])
    lines += peer_keras_quantize.render_keras_quantize(more["peer_keras_quantize"])
    lines += _pruning_callback_section(more["pruning_callback"])
    lines += _clustering_section(more["clustering"])
    lines += transformers_bench.render_transformers(more["transformers"])
    lines += one_fit.render_one_fit(more["one_fit"])
    lines += coverage_report.render_coverage(more["coverage"])
    lines += qat_from_scratch.render_qat_from_scratch(more["qat_from_scratch"])
    lines += qat_sweep.render_qat_sweep(more["qat_sweep"])
    lines += _errors_section({"peer_tfmot": peer, "pruning": pru, "qat": qat, **more})
    lines += ["## Commands", ""]
    for name, d in (("peer_tfmot", peer), ("pruning", pru), ("qat", qat), *more.items()):
        cmd = d.get("command") or f"{PY} {BENCHES[name]} --out benchmarks/results/{name}.json"
        elapsed = d.get("elapsed_s", d.get("seconds"))
        lines.append(f"- `{name}`: `{cmd}` ({fmt(elapsed, 's')} "
                     f"at {get(d, 'env.time_utc') or 'n/a'})")
    if runs:
        lines += ["", "Last `run_all.py` run: " + ", ".join(
            f"{r['name']} exit {r['returncode']} in {r['wall_s']} s" for r in runs)]
    lines.append("")
    return "\n".join(lines)


def _digits_section(pru: dict, qat: dict, peer: dict) -> list[str]:
    out = ["## Digits CNN, per seed", ""]
    rows = []
    for label, d in (("tfaccel", pru), ("tfmot", peer)):
        err = _error(d, "digits")
        if err:
            rows.append([label, "-", f"n/a ({err})", "", "", "", "", ""])
            continue
        for r in get(d, "digits.seeds") or []:
            rows.append([label, r["seed"], fmt(r.get("dense_acc"), "pct"),
                         fmt(r.get("pruned_acc"), "pct"),
                         fmt(r.get("pruned_minus_dense_points"), "pts"),
                         fmt(r.get("pruned_sparsity"), "pct"),
                         f"{fmt(get(r, 'dense_float32.gzip_bytes'), 'kb')} -> "
                         f"{fmt(get(r, 'pruned_float32.gzip_bytes'), 'kb')}",
                         fmt(r.get("pruned_gzip_ratio"), "x")])
    out += ["Pruning (PolynomialDecay 0 -> 80%, 10-epoch fine-tune). Reproduce: "
            + _cmd("pruning", "digits") + " and " + _cmd("peer_tfmot", "digits") + ".", ""]
    out += _table(["library", "seed", "dense acc", "pruned acc", "delta", "kernel sparsity",
                   "float32 TFLite gzip dense -> pruned", "gzip ratio"], rows)
    rows = []
    for r in ([] if _error(pru, "digits") else get(pru, "digits.seeds") or []):
        if "erk_pruned_acc" in r:
            per = r.get("erk_tfaccel_sparsity") or {}
            rows.append([r["seed"], fmt(r.get("pruned_acc"), "pct"),
                         fmt(r.get("erk_pruned_acc"), "pct"),
                         fmt(r.get("erk_minus_dense_points"), "pts"),
                         ", ".join(f"{k.split('/')[0]} {v:.1%}" for k, v in per.items()),
                         fmt(r.get("erk_pruned_gzip_ratio"), "x")])
    if rows:
        out += ["The same fine-tune with `prune(..., allocation=\"erk\")`: 80% of all "
                "kernel weights, shared by layer size (Erd\u0151s-R\u00e9nyi-Kernel).", ""]
        out += _table(["seed", "uniform acc", "erk acc", "erk delta vs dense",
                       "erk sparsity by layer", "gzip ratio"], rows)
    rows = []
    for label, d in (("tfaccel", qat), ("tfmot", peer)):
        err = _error(d, "digits")
        if err:
            rows.append([label, "-", f"n/a ({err})", "", "", "", "", "", ""])
            continue
        for r in get(d, "digits.seeds") or []:
            rows.append([label, r["seed"], fmt(r.get("dense_acc"), "pct"),
                         fmt(r.get("qat_keras_acc"), "pct"),
                         fmt(r.get("qat_int8_tflite_acc"), "pct"),
                         fmt(r.get("qat_int8_agreement_vs_qat_keras"), "pct"),
                         fmt(get(r, "qat_int8.bytes"), "kb"),
                         fmt(r.get("ptq_int8_tflite_acc"), "pct"),
                         fmt(get(r, "ptq_int8.bytes"), "kb")])
    out += ["QAT (3-epoch fine-tune from the dense model, int8 export without "
            "representative data) and the converter's PTQ full int8 of the dense model. "
            "Reproduce: " + _cmd("qat", "digits") + " and "
            + _cmd("peer_tfmot", "digits") + ".", ""]
    out += _table(["library", "seed", "float acc", "QAT Keras acc", "int8 TFLite acc",
                   "int8 vs QAT agreement", "int8 file", "PTQ int8 acc", "PTQ int8 file"],
                  rows)
    return out


def _overhead_section(pru: dict, qat: dict, peer: dict) -> list[str]:
    out = ["## Train-step overhead (digits CNN, batch 32)", ""]
    rows = []
    for label, d, key, cmd in (
        ("tfaccel prune", pru, "pruned", _cmd("pruning", "overhead")),
        ("tfaccel QAT", qat, "qat", _cmd("qat", "overhead")),
        ("tfmot prune", peer, "pruned", _cmd("peer_tfmot", "overhead")),
        ("tfmot QAT", peer, "qat", _cmd("peer_tfmot", "overhead")),
    ):
        err = _error(d, "overhead")
        if err:
            rows.append([label, f"n/a ({err})", "", "", "", "", cmd])
            continue
        med = get(d, "overhead.median_step_s") or {}
        iqr = get(d, f"overhead.ratio_iqr.{key}")
        rows.append([label, fmt(get(d, f"overhead.ratio.{key}"), "x"),
                     f"{iqr[0]:.3f}-{iqr[1]:.3f}" if iqr else "n/a",
                     fmt(med.get("float") and med["float"] * 1e3, "ms"),
                     fmt(med.get(key) and med[key] * 1e3, "ms"),
                     f"{get(d, 'overhead.repeats')} x {get(d, 'overhead.steps_per_round')}",
                     cmd])
    out += _table(["setup", "median ratio", "IQR of round ratios", "float step",
                   "optimized step", "rounds x steps", "reproduce"], rows)
    out += [f"Method: {common.OVERHEAD_HOW}.", ""]
    return out


def _mobilenet_section(pru: dict, qat: dict, peer: dict) -> list[str]:
    shape = get(qat, "mobilenet.input_shape") or get(peer, "mobilenet.input_shape") \
        or list(common.MOBILENET_INPUT)
    out = [f"## MobileNetV2 (alpha 1.0, input {tuple(shape)}, weights=None)", "",
           "96x96 keeps the whole topology and all 3.5M parameters (file sizes depend on "
           "parameters, not on the input size) while keeping latency runs short; each "
           "conversion still takes tens of seconds on 2 cores. Untrained weights (random "
           "init plus one BN pass): sizes, conversion time and latency only. Export/convert "
           "times are the best of 1-2 timed runs after a warm-up conversion; tfaccel's include "
           "`export_tflite`'s own inspection of the file, tfmot's are the bare converter.",
           ""]

    def size(d, section, key):
        err = _error(d, section)
        if err:
            return f"n/a ({err})"
        v = get(d, f"{section}.{key}")
        if not v:
            e = get(d, f"{section}.{key}_error")
            return f"n/a ({e[:80]})" if e else "n/a"
        return f"{fmt(v.get('bytes'), 'kb')} / {fmt(v.get('gzip_bytes'), 'kb')}"

    rows = [
        ["float32", size(qat, "mobilenet", "float32"), size(peer, "mobilenet", "float32")],
        ["converter PTQ int8 (representative data)", size(qat, "mobilenet", "ptq_int8"),
         size(peer, "mobilenet", "ptq_int8")],
        ["QAT int8", size(qat, "mobilenet", "qat_int8"), size(peer, "mobilenet", "qat_int8")],
        ["pruned 80% float32", size(pru, "mobilenet", "pruned_float32"),
         size(peer, "mobilenet", "pruned_float32")],
        ["pruned 80% + converter PTQ int8", size(pru, "mobilenet", "pruned_ptq_int8"),
         size(peer, "mobilenet", "pruned_ptq_int8")],
        ["pruned 80% + tfaccel QAT int8 export", size(pru, "mobilenet", "pruned_qat_int8"),
         "-"],
        ["pruned 80% allocation='erk' + tfaccel QAT int8 export",
         size(pru, "mobilenet", "erk_pruned_qat_int8"), "-"],
    ]
    out += ["File size / gzip size. Reproduce: " + _cmd("qat", "mobilenet") + ", "
            + _cmd("pruning", "mobilenet") + ", " + _cmd("peer_tfmot", "mobilenet") + ".",
            ""]
    out += _table(["file", "tfaccel", "tfmot"], rows)
    uni = get(pru, "mobilenet.pruned_qat_int8.breakdown")
    erk = get(pru, "mobilenet.erk_pruned_qat_int8.breakdown")
    if uni and erk:
        out += [
            "Where the pruned int8 gzip bytes go (read from the files' flatbuffers, "
            "`breakdown` in `benchmarks/results/pruning.json`). Uniform 80%: kernels "
            f"{fmt(uni['int8_constants_gzip_bytes'], 'kb')} "
            f"({uni['int8_gzip_bits_per_weight']} bits per weight, zeroth-order entropy "
            f"{uni['int8_entropy_bits_per_weight']}), float32 scales of weights and biases "
            f"{fmt(uni['scales_gzip_bytes'], 'kb')}, int32 biases "
            f"{fmt(uni['int32_constants_gzip_bytes'], 'kb')}. With random-init "
            "(glorot-uniform) weights the surviving 20% of each channel sit at the top of "
            f"its range (|q| >= {uni['int8_nonzero_abs_min']}), and gzip spends about a bit "
            "on each zero that is not in a long run. `allocation='erk'` keeps 80% of all "
            "kernel weights pruned but unevenly: the large kernels get sparser, with long "
            "zero runs that gzip codes in far less than a bit per zero, and the small ones "
            "(depthwise included) stay dense. Its kernels gzip to "
            f"{fmt(erk['int8_constants_gzip_bytes'], 'kb')} "
            f"({erk['int8_gzip_bits_per_weight']} bits per weight, although their "
            f"zeroth-order entropy is higher: {erk['int8_entropy_bits_per_weight']}). Its "
            "accuracy cost is measured on digits above, not on this untrained MobileNetV2.",
            "",
        ]
    out += _table(
        ["figure", "tfaccel", "tfmot"],
        [["pruned kernel sparsity", fmt(get(pru, "mobilenet.pruned_sparsity"), "pct"),
          fmt(get(peer, "mobilenet.pruned_sparsity"), "pct")],
         ["pruned kernel sparsity, allocation='erk' (kernels pruned / left dense)",
          f"{fmt(get(pru, 'mobilenet.erk_pruned_sparsity'), 'pct')} "
          f"({get(pru, 'mobilenet.erk_pruned_weights')} / "
          f"{get(pru, 'mobilenet.erk_dense_weights')})", "-"],
         ["float32 export / convert time", fmt(get(qat, "mobilenet.float32_export_s"), "s"),
          fmt(get(peer, "mobilenet.float32_convert_s"), "s")],
         ["QAT int8 export / convert time", fmt(get(qat, "mobilenet.qat_export_s"), "s"),
          fmt(get(peer, "mobilenet.qat_convert_s"), "s")],
         ["PTQ int8 convert time (converter)", fmt(get(qat, "mobilenet.ptq_convert_s"), "s"),
          fmt(get(peer, "mobilenet.ptq_convert_s"), "s")],
         ["QAT int8 ops", _ops(get(qat, "mobilenet.qat_int8_ops")),
          _ops(get(peer, "mobilenet.qat_int8_ops"))]])
    rows = []
    for variant in ("float32", "ptq_int8", "qat_int8"):
        for t in (1, 2):
            key = f"mobilenet.latency_ms.{variant}@{t}"

            def lat(d, key=key):
                med, low = get(d, f"{key}.median_ms"), get(d, f"{key}.min_ms")
                return f"{fmt(med, 'ms')} ({fmt(low, 'ms')})" if med else "n/a"

            rows.append([variant, t, lat(qat), lat(peer)])
    out += ["Single-image latency, median (min) of 30 invokes after 5 warm-up ones "
            "(ai_edge_litert, XNNPACK). On a loaded shared machine the min is the "
            "steadier figure. Reproduce: " + _cmd("qat", "mobilenet") + ".", ""]
    out += _table(["file", "threads", "tfaccel files", "tfmot files"], rows)
    return out


def _run_cmd(name: str, args: str = "") -> str:
    return f"`{PY} {BENCHES[name]}{' ' + args if args else ''}`"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:,.4g}" if value % 1 else f"{value:,.0f}"


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def _channels_speedup(d: dict, threads: int, kind: str = "int8") -> float | None:
    suffix = "1thread" if threads == 1 else f"{threads}threads"
    return _ratio(get(d, f"mobilenet_v2.dense.{kind}_ms_{suffix}"),
                  get(d, f"mobilenet_v2.shrunk.{kind}_ms_{suffix}"))


def _more_goals_section(ch: dict, cache: dict) -> list[str]:
    gap = get(ch, "digits_cnn.mean_gap_points")
    n = len(get(ch, "digits_cnn.runs") or [])
    size = get(ch, "mobilenet_v2.input")
    mob = f"MobileNetV2 {size[0]}x{size[1]}" if size else "MobileNetV2"
    goals = [
        (f"{mob}, 50% channels shrunk: int8 latency speed-up vs dense, 1 thread",
         ">= 1.60x", _channels_speedup(ch, 1), ">=", 1.6, "x", _run_cmd("channels")),
        (f"{mob}, 50% channels shrunk: int8 latency speed-up vs dense, 2 threads",
         ">= 1.60x", _channels_speedup(ch, 2), ">=", 1.6, "x", _run_cmd("channels")),
        (f"Digits CNN, 50% channels: accuracy drop vs dense (mean of {n or 'n/a'} seeds)",
         "<= 1.00 pts", gap, "<=", 1.0, "ptsabs", _run_cmd("channels")),
        (f"Digits CNN, 50% channels: int8 TFLite accuracy drop vs dense int8 (mean of "
         f"{n or 'n/a'} seeds)", "<= 1.00 pts", get(ch, "digits_cnn.mean_int8_gap_points"),
         "<=", 1.0, "ptsabs", _run_cmd("channels")),
        ("Distillation cache: teacher / student multiply-adds", ">= 10x",
         get(cache, "macs_ratio"), ">=", 10.0, "x", _run_cmd("distillation_cache")),
        ("Distillation cache: epoch time speed-up, cached / live teacher", "reported",
         get(cache, "speedup"), None, None, "x", _run_cmd("distillation_cache")),
    ]
    rows = []
    for what, target, value, op, thr, kind, cmd in goals:
        shown = f"{value:.2f} pts" if kind == "ptsabs" and value is not None \
            else fmt(value, "x" if kind == "ptsabs" else kind)
        rows.append([what, target, shown, _met(value, op, thr) if op else "-", cmd])
    out = ["## Goals: channel pruning and distillation cache", ""]
    out += _table(["figure", "goal", "tfaccel", "met", "reproduce"], rows)
    return out


def _channels_section(d: dict) -> list[str]:
    out = ["## Channel pruning (`prune_channels` + `shrink`)", ""]
    if not d:
        return out + ["n/a (not run): " + _run_cmd("channels"), ""]
    m = d.get("mobilenet_v2") or {}
    dense, small = m.get("dense") or {}, m.get("shrunk") or {}
    size = m.get("input")
    out += [f"MobileNetV2 alpha 1.0, input {tuple(size) if size else 'n/a'}, "
            "weights=None: 50% of the output channels of every layer `prune_channels` "
            f"selects by default ({m.get('pruned_layers')} layers, "
            f"{m.get('masked_channels')} channels masked) removed by `shrink` (max |masked "
            f"- shrunk| output difference {m.get('max_abs_diff_masked_vs_shrunk')}). "
            "Latency: median invoke time, ai_edge_litert with XNNPACK, the four files "
            "interleaved (10 invokes each per round). int8 = converter full-int8 PTQ on "
            "random calibration data (timing only). Reproduce: "
            + _run_cmd("channels") + ".", ""]
    rows = []
    for key, label, kind in (("params", "parameters", ""), ("macs", "conv/dense MACs", ""),
                             ("tflite_float_bytes", "float32 file", "kb"),
                             ("tflite_int8_bytes", "int8 file", "kb"),
                             ("float_ms_1thread", "float32 latency, 1 thread", "ms"),
                             ("float_ms_2threads", "float32 latency, 2 threads", "ms"),
                             ("int8_ms_1thread", "int8 latency, 1 thread", "ms"),
                             ("int8_ms_2threads", "int8 latency, 2 threads", "ms")):
        a, b = dense.get(key), small.get(key)
        if kind:
            a_s, b_s = fmt(a, kind), fmt(b, kind)
        else:
            a_s = f"{a:,}" if a is not None else "n/a"
            b_s = f"{b:,}" if b is not None else "n/a"
        rows.append([label, a_s, b_s, fmt(_ratio(b, a), "x")])
    out += _table(["figure", "dense", "50% channels shrunk", "shrunk / dense"], rows)
    dg = d.get("digits_cnn") or {}
    rows = [[r.get("seed"), fmt(r.get("dense_acc"), "pct"), fmt(r.get("shrunk_acc"), "pct"),
             fmt(r.get("dense_int8_acc"), "pct"), fmt(r.get("shrunk_int8_acc"), "pct"),
             f"{r.get('dense_params'):,} -> {r.get('shrunk_params'):,}"]
            for r in dg.get("runs") or []]
    out += [f"Digits CNN (tests/tiny_models.make_cnn), dense {dg.get('epochs')} epochs at "
            f"Adam 3e-3, then 50% of channels pruned with a {dg.get('finetune_epochs')}-epoch "
            "fine-tune from the dense weights and shrunk. Mean drop "
            f"{dg.get('mean_gap_points')} pts float, {dg.get('mean_int8_gap_points')} pts "
            f"int8 ({dg.get('int8')}). Reproduce: " + _run_cmd("channels") + ".", ""]
    out += _table(["seed", "dense acc", "shrunk acc", "dense int8 acc", "shrunk int8 acc",
                   "params"], rows)
    return out


def _distillation_cache_section(d: dict) -> list[str]:
    out = ["## Distillation: teacher-output cache", ""]
    if not d:
        return out + ["n/a (not run): " + _run_cmd("distillation_cache"), ""]
    rows = [
        ["teacher / student multiply-adds per sample",
         f"{d.get('teacher_macs'):,} / {d.get('student_macs'):,} "
         f"({fmt(d.get('macs_ratio'), 'x')})"],
        ["teacher test accuracy", fmt(d.get("teacher_test_accuracy"), "pct")],
        ["samples per epoch", d.get("samples_per_epoch")],
        ["epoch time, live teacher", fmt(d.get("epoch_s_live_teacher"), "s")],
        ["epoch time, cached teacher", fmt(d.get("epoch_s_cached_teacher"), "s")],
        ["speed-up per epoch", fmt(d.get("speedup"), "x")],
        ["time in fit outside epochs, live / cached (the cache's one teacher pass)",
         f"{fmt(d.get('outside_epochs_s_live'), 's')} / "
         f"{fmt(d.get('outside_epochs_s_cached'), 's')}"],
    ]
    out += ["CNN teacher (32, 64 filters) distilling into a 32-unit MLP on digits tiled "
            "10x; mean epoch time after one warm-up epoch, live-teacher run then cached "
            "run (not interleaved). Reproduce: " + _run_cmd("distillation_cache") + ".", ""]
    out += _table(["figure", "measured"], rows)
    return out


def _distillation_section(d: dict) -> list[str]:
    out = ["## Distillation: distilled vs alone, int8, and the full pipeline", ""]
    err = _error(d, "digits")
    if err:
        return out + [f"n/a ({err}): " + _run_cmd("distillation"), ""]
    g = d["digits"]
    mean, std, sizes = g.get("mean", {}), g.get("stdev", {}), g.get("sizes", {})
    n = len(g.get("seeds") or [])
    rec = d.get("recipe", {})
    out += [f"Recipe: teacher {rec.get('teacher')}; student {rec.get('student')}; "
            f"{rec.get('distillation')}; int8: {rec.get('int8')}; pipeline: "
            f"{rec.get('pipeline')}. Teacher {g.get('teacher_params'):,} parameters, "
            f"student {g.get('student_params'):,}, pipeline student "
            f"{g.get('pipeline_student_params') or 0:,}. Mean (stdev) over {n} seeds; "
            f"distilled beat alone (float) on {g.get('distilled_beats_alone_seeds')} "
            "seeds. Reproduce: " + _run_cmd("distillation") + ".", ""]

    def ms(key, kind="pct"):
        return common.mean_sd(mean, std, key, kind)

    rows = [
        ["teacher float (Keras)", ms("teacher_acc"), "-"],
        ["student alone, float (Keras)", ms("alone_acc"), "-"],
        ["student distilled, float (Keras)", ms("distilled_acc"),
         ms("distilled_minus_alone_points", "pts") + " vs alone"],
        ["student alone, QAT int8 TFLite", ms("alone_int8_acc"), "-"],
        ["student distilled, distilled QAT int8 TFLite", ms("distilled_int8_acc"),
         ms("distilled_int8_minus_alone_int8_points", "pts") + " vs alone int8"],
        ["pipeline: distill + prune 80% (all layers) + QAT, int8 TFLite",
         ms("pipeline_int8_acc"),
         ms("pipeline_int8_minus_teacher_points", "pts") + " vs float teacher"],
        ["pipeline, pruned float before QAT (Keras)", ms("pipeline_pruned_float_acc"),
         "kernel sparsity " + fmt(mean.get("pipeline_kernel_sparsity"), "pct")],
        ["pipeline pruning only the Dense layer, int8 TFLite",
         ms("pipeline_dense_only_int8_acc"),
         ms("pipeline_dense_only_int8_minus_teacher_points", "pts")
         + " vs float teacher (kernel sparsity "
         + fmt(mean.get("pipeline_dense_only_kernel_sparsity"), "pct") + ")"],
    ]
    out += _table(["model", "test accuracy", "delta"], rows)

    def sz(key):
        v = sizes.get(key) or {}
        return [fmt(v.get("bytes"), "kb"), fmt(v.get("gzip_bytes"), "kb")]

    out += ["File sizes (mean over seeds; int8 files have int8 input/output):", ""]
    out += _table(["file", "bytes", "gzip -9"], [
        ["teacher float32", *sz("teacher_float32")],
        ["student float32 (distilled)", *sz("student_float32")],
        ["pipeline int8 (distilled, 80% pruned, QAT)", *sz("pipeline_int8")],
        ["pipeline int8, Dense-only pruning", *sz("pipeline_dense_only_int8")],
        ["pipeline int8 / teacher float32",
         fmt(sizes.get("pipeline_int8_bytes_vs_teacher_float32_bytes"), "x"),
         fmt(sizes.get("pipeline_int8_gzip_vs_teacher_float32_gzip"), "x")],
    ])
    rows = [[r["seed"], fmt(r["teacher_acc"], "pct"), fmt(r["alone_acc"], "pct"),
             fmt(r["distilled_acc"], "pct"), fmt(r["alone_int8_acc"], "pct"),
             fmt(r["distilled_int8_acc"], "pct"), fmt(r["pipeline_int8_acc"], "pct"),
             fmt(r.get("pipeline_dense_only_int8_acc"), "pct")]
            for r in g.get("seeds") or []]
    out += _table(["seed", "teacher", "alone", "distilled", "alone int8", "distilled int8",
                   "pipeline int8", "pipeline (Dense-only) int8"], rows)
    return out


def _distribute_section(d: dict) -> list[str]:
    out = ["## tf.distribute: MirroredStrategy on 2 logical CPUs", ""]
    if not d:
        return out + ["n/a (not run): " + _run_cmd("distribute"), ""]
    out += [f"**Caveat:** {d.get('caveat')}", ""]
    variants = d.get("variants") or {}
    out += ["Variants: " + "; ".join(f"**{k}**: {v}" for k, v in variants.items()) + ".",
            ""]
    err = _error(d, "sync")
    if err:
        out += [f"Synchronization: n/a ({err}).", ""]
    else:
        sync = d["sync"]["variants"]
        rows = []
        for name in ("plain", "pruned", "pruned_qat"):
            v = sync.get(name) or {}
            ps, add = v.get("per_step") or {}, v.get("added_vs_plain") or {}
            rows.append([
                name, _num(ps.get("cross_device_calls")),
                f"{_num(ps.get('batch_reduce_calls'))} / {_num(ps.get('reduce_calls'))} / "
                f"{_num(ps.get('broadcast_calls'))}",
                f"{_num(ps.get('values_reduced'))} ({_num(ps.get('floats_reduced'))} floats)",
                _num(v.get("in_train_step_calls")),
                "-" if not add else
                f"+{add.get('cross_device_calls'):g} calls, +{add.get('floats_reduced'):g} "
                "floats"])
        tf_extra = get(sync, "pruned.tfmot_style_extra_per_step") or {}
        rows.append(["tfmot's approach (pruned, computed)",
                     f"+{tf_extra.get('all_reduces')}", "-",
                     f"+{tf_extra.get('all_reduces')} ({tf_extra.get('floats', 0):,} floats)",
                     "-", f"+{tf_extra.get('all_reduces')} all-reduces, "
                     f"+{tf_extra.get('floats', 0):,} floats"])
        out += ["Cross-device calls per training step (global batch 32): "
                + d["sync"].get("how", "") + ". Reproduce: "
                + _run_cmd("distribute", "--sections sync") + ".", ""]
        out += _table(["model", "cross-device calls", "batch_reduce / reduce / broadcast",
                       "values reduced", "calls inside train_step", "added vs plain"],
                      rows)
        qat_calls = get(sync, "pruned_qat.calls") or []
        ranges = sum(1 for c in qat_calls if c["kind"] == "reduce" and c["in_train_step"])
        moments = [c["floats"] for c in qat_calls
                   if c["kind"] == "batch_reduce" and c["in_train_step"]][:-1]
        out += [f"In the pruned+QAT step, inside train_step: {ranges} scalar reduces "
                "(the `aggregation=\"mean\"` activation-range writes, min and max per "
                f"quantizer) and {len(moments)} batch all-reduces of {moments} floats (the "
                "batch moments of the folded Conv-BN layers), besides the gradient "
                "all-reduce. Pruning adds nothing: masks and the step counter are computed "
                "identically on every replica (`aggregation=\"none\"`).", ""]
    err = _error(d, "throughput")
    if err:
        out += [f"Throughput: n/a ({err}).", ""]
        return out
    t = d["throughput"]
    rows = []
    for b in t.get("batches") or []:
        med, r = b["median_samples_per_s"], b["ratios"]
        iqr = b.get("iqr_samples_per_s") or {}

        def cell(key, med=med, iqr=iqr):
            q = iqr.get(key)
            spread = f" ({q[0]:,.0f}-{q[1]:,.0f})" if q else ""
            return f"{med[key]:,.0f}{spread}"

        for name in ("plain", "pruned", "pruned_qat"):
            rows.append([b["global_batch"], name, cell(name + "@1device"),
                         cell(name + "@mirrored2"),
                         fmt(r.get(f"{name}_mirrored_over_1device"), "x"),
                         fmt(r.get(f"{name}_over_plain@1device"), "x") if name != "plain"
                         else "-",
                         fmt(r.get(f"{name}_over_plain@mirrored2"), "x") if name != "plain"
                         else "-"])
    out += ["Training throughput: " + t.get("how", "") + "; cells: median (interquartile range "
            "over rounds). Load average (1/5/15 min) during the run: "
            f"{get(d, 'env.loadavg')} -> {d.get('loadavg_end')} on "
            f"{get(d, 'env.cores')} cores: other jobs shared the machine, and epochs at "
            "batch 256 last a fraction of a second, so the spread is wide; compare "
            "ratios only where the ranges do not overlap. Reproduce: "
            + _run_cmd("distribute", "--sections throughput") + ".", ""]
    out += _table(["global batch", "model", "samples/s 1 device", "samples/s Mirrored 2",
                   "Mirrored / 1 device", "vs plain (1 device)", "vs plain (Mirrored)"],
                  rows)
    return out


def _pruning_callback_section(d: dict) -> list[str]:
    out = ["## Pruning callback vs `tfaccel.prune` (digits CNN, 80%)", ""]
    if not d:
        return out + ["Not run: `" + _run_cmd("pruning_callback") + "`.", ""]
    out += [f"`{d.get('command')}` (load average at the end "
            f"{d.get('loadavg_end') or 'n/a'}):", ""]
    out += [d.get("table_markdown", "").strip(), ""]
    return out


_CLUSTER_ROWS = [
    ("Digits CNN, 16 clusters: accuracy minus dense, mean of seeds (pts; goal >= -0.5)",
     "clustered_minus_dense_points", "pts"),
    ("... worst seed (pts)", "clustered_minus_dense_points_min", "pts"),
    ("Pruned 80% + 16 clusters + QAT int8 file: accuracy minus dense (pts; goal "
     "within 1)", "pcqat_minus_dense_points", "pts"),
    ("... kernel sparsity read from the file (goal 0.80)", "pcqat_kernel_sparsity", ""),
    ("... most distinct values in one kernel of the file (goal <= 16)",
     "pcqat_max_distinct_per_kernel", ""),
    ("... gzip / pruned + QAT int8 gzip (goal <= 0.6x)",
     "pcqat_gzip_vs_pruned_qat_gzip", "x"),
    ("... the same, kernel bytes alone (gzip -9)", "pcqat_kernel_gzip_ratio", "x"),
    ("... the same, kernel values under an ideal coder (zeroth-order entropy)",
     "pcqat_kernel_entropy_ratio", "x"),
    ("MobileNetV2 0.35 96px pruned + clustered + QAT int8 gzip / float32 gzip",
     "mobilenet_pcqat_gzip_vs_float32_gzip", "x"),
    ("... most distinct values in one kernel", "mobilenet_pcqat_max_distinct_per_kernel",
     ""),
    ("Clustering train step / plain step (digits CNN, median ratio)",
     "cluster_step_ratio", "x"),
    ("... interquartile range of the per-round ratios", "cluster_step_ratio_iqr", ""),
]


def _clustering_section(d: dict) -> list[str]:
    out = ["## Weight clustering, PCQAT (tfaccel vs tfmot 0.8.1, same weights)", ""]
    if not d:
        return out + ["Not run: `" + _run_cmd("clustering") + "`.", ""]
    mine, theirs = get(d, "summary.tfaccel") or {}, get(d, "summary.tfmot") or {}
    rows = [[what, fmt(mine.get(key), kind), fmt(theirs.get(key), kind)]
            for what, key, kind in _CLUSTER_ROWS]
    out += _table(["figure", "tfaccel", "tfmot"], rows)
    out += [f"`{d.get('command')}`; load average at the end "
            f"{d.get('loadavg_end') or 'n/a'}. Both sides start from the same "
            "weights, each in its own process; every file comes from the same "
            "converter call. tfmot's sparsity-preserving k-means++ crashes on "
            "kernels with too few nonzero weights, so its side leaves those layers "
            "out (listed in the JSON).", "",
            "The 0.6x gzip goal is out of reach of any file format that stores "
            "the int8 kernels, not only of these two libraries: clustering "
            "shrinks only the nonzero 20% of the weights (from about 6 bits of "
            "entropy each to at most 4, 16 values), while the 80% zeros cost the same in "
            "both files (gzip spends close to a bit on each; entropy 0.72 bit). "
            "The entropy row is the ratio an ideal coder of the kernel values "
            "would reach; the file's ratio is above it because the scales, "
            "biases and graph do not shrink at all.", ""]
    return out


def _ops(ops) -> str:
    if not ops:
        return "n/a"
    parts = []
    for k, v in sorted(ops.items()):
        if isinstance(v, dict):
            parts += [f"{k}/{dt}: {n}" for dt, n in sorted(v.items())]
        else:
            parts.append(f"{k}: {v}")
    return ", ".join(parts)


def _errors_section(results: dict[str, dict]) -> list[str]:
    rows = []
    for name, d in results.items():
        if not d:
            rows.append([name, "-", "no JSON (not run or crashed before output)"])
            continue
        for section, value in d.items():
            if isinstance(value, dict) and "error" in value:
                rows.append([name, section, value["error"].splitlines()[0][:200]])
            elif isinstance(value, dict):
                for k, v in value.items():
                    if k.endswith("_error"):
                        rows.append([name, f"{section}.{k}", str(v)[:200]])
    if not rows:
        return []
    return ["## Failures", ""] + _table(["benchmark", "section", "error"], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated subset of {list(BENCHES)}")
    parser.add_argument("--report-only", action="store_true",
                        help="only regenerate BENCHMARKS.md from existing JSON")
    parser.add_argument("--timeout", type=int, default=1200,
                        help="seconds allowed per benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="one seed and fewer timing rounds (a smoke run)")
    parser.add_argument("--sections", help="passed on to peer_tfmot, pruning and qat "
                        "(comma-separated subset of digits,overhead,mobilenet)")
    parser.add_argument("--results-dir", default=common.RESULTS_DIR,
                        help="where the JSON and logs go")
    parser.add_argument("--report", default=REPORT, help="the Markdown file to write")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHES)
    if unknown:
        parser.error(f"--only must be among {list(BENCHES)}. Received: {sorted(unknown)}")
    runs = []
    if not args.report_only:
        for n in names:
            extra = list(QUICK[n]) if args.quick else []
            if args.sections and n in SECTIONED:
                extra += ["--sections", args.sections]
            runs.append(run_one(n, extra, max(args.timeout, MIN_TIMEOUT.get(n, 0)),
                                args.results_dir))
    with open(args.report, "w") as f:
        f.write(render(runs, args.results_dir))
    print(f"[run_all] wrote {args.report}", flush=True)
    failed = [r for r in runs if r["returncode"] != 0]
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
