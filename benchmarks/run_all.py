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

PY = ".venv/bin/python"
BENCHES = {
    "peer_tfmot": "benchmarks/peer_tfmot.py",
    "pruning": "benchmarks/pruning.py",
    "qat": "benchmarks/qat.py",
}
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
        "(git-ignored); the \"reproduce\" column gives the command that measures it on its",
        "own. tfaccel runs on Keras 3; the tfmot peer (tensorflow-model-optimization",
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
        ("MobileNetV2 pruned 80% + int8 gzip / dense float32 gzip", "<= 0.09x",
         get(pru, "mobilenet.pruned_int8_gzip_vs_dense_float32_gzip"), "<=", 0.09, "x",
         get(peer, "mobilenet.pruned_int8_gzip_vs_dense_float32_gzip"), "",
         _cmd("pruning", "mobilenet")),
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
    lines += _errors_section({"peer_tfmot": peer, "pruning": pru, "qat": qat})
    lines += ["## Commands", ""]
    for name, d in (("peer_tfmot", peer), ("pruning", pru), ("qat", qat)):
        cmd = d.get("command") or f"{PY} {BENCHES[name]} --out benchmarks/results/{name}.json"
        lines.append(f"- `{name}`: `{cmd}` ({fmt(d.get('elapsed_s'), 's')} "
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
    ]
    out += ["File size / gzip size. Reproduce: " + _cmd("qat", "mobilenet") + ", "
            + _cmd("pruning", "mobilenet") + ", " + _cmd("peer_tfmot", "mobilenet") + ".",
            ""]
    out += _table(["file", "tfaccel", "tfmot"], rows)
    out += _table(
        ["figure", "tfaccel", "tfmot"],
        [["pruned kernel sparsity", fmt(get(pru, "mobilenet.pruned_sparsity"), "pct"),
          fmt(get(peer, "mobilenet.pruned_sparsity"), "pct")],
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
    parser.add_argument("--sections", help="passed on to every benchmark "
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
        extra = ["--seeds", "0", "--repeats", "5"] if args.quick else []
        if args.sections:
            extra += ["--sections", args.sections]
        runs = [run_one(n, extra, args.timeout, args.results_dir) for n in names]
    with open(args.report, "w") as f:
        f.write(render(runs, args.results_dir))
    print(f"[run_all] wrote {args.report}", flush=True)
    failed = [r for r in runs if r["returncode"] != 0]
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
