"""Launch the `_worker` subprocesses with free ports and timeouts."""

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_ports(n):
    """`n` distinct free TCP ports on 127.0.0.1 (bind port 0, read, close)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def env(**extra):
    e = dict(os.environ)
    e.pop("TF_CONFIG", None)
    e["TF_CPP_MIN_LOG_LEVEL"] = "2"
    e["CUDA_VISIBLE_DEVICES"] = ""
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def spawn(args, log_path, **extra_env):
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller via proc
    return subprocess.Popen(
        [PYTHON, "-m", "tests.distribute._worker", *args],
        cwd=ROOT,
        env=env(**extra_env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_multiworker(out, workarounds, timeout=150):
    """Run 2 workers; return their exit codes (workers write into `out`)."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        procs.append(
            spawn(
                ["multiworker", str(out), str(index), workarounds],
                out / f"worker{index}.log",
                TF_CONFIG=json.dumps(tf_config),
            )
        )
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return codes


def logs(out):
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.log"))
    ) + "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.err"))
    )
