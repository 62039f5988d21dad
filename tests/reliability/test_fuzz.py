"""Bounded fuzzing of `.tflite` reading: seeded byte flips and word
overwrites of a small valid int8 file, each inspected and benchmarked in
a child process (the code paths of `tfaccel inspect` and `tfaccel bench`).
Every file ends as `ok` or is refused with an error (the CLI's exit 3);
no file kills the process with a signal."""

import os
import subprocess
import sys

import numpy as np

from tests.reliability._cli_helpers import small_int8_tflite

# Little-endian words that break offsets, lengths, indices, dimensions,
# float scales (inf, NaN, -inf bit patterns) and zero points.
_WORDS = [0, 1, 0xFFFFFFFF, 2**31 - 1, 2**31, 0x10000, 255, 128,
          0x7F800000, 0x7FC00000, 0xFF800000]
_FILES = 300


def _mutants(data, count, seed=0):
    rng = np.random.default_rng(seed)
    for k in range(count):
        mutant = bytearray(data)
        if k % 2 == 0:  # flip 1-4 random bytes
            for _ in range(int(rng.integers(1, 5))):
                mutant[int(rng.integers(0, len(mutant)))] = int(rng.integers(0, 256))
        else:  # overwrite one aligned 32-bit field with a nasty value
            pos = int(rng.integers(0, len(mutant) // 4)) * 4
            word = _WORDS[int(rng.integers(0, len(_WORDS)))]
            mutant[pos : pos + 4] = word.to_bytes(4, "little")
        yield bytes(mutant)


def test_mutated_files_never_crash_inspect_or_bench(tmp_path):
    base = small_int8_tflite(str(tmp_path / "base.tflite"))
    with open(base, "rb") as f:
        data = f.read()
    paths = []
    for i, mutant in enumerate(_mutants(data, _FILES)):
        path = tmp_path / f"m{i:03d}.tflite"
        path.write_bytes(mutant)
        paths.append(str(path))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reliability._cli_helpers", *paths],
        capture_output=True, text=True, env=env, timeout=600,
    )
    started = [line.split()[1] for line in proc.stdout.splitlines()
               if line.startswith("start ")]
    outcomes = [line.split()[2] for line in proc.stdout.splitlines()
                if line.startswith("done ")]
    assert proc.returncode == 0, (
        f"the driver died (status {proc.returncode}) on {started[-1:]}: "
        f"{proc.stderr[-2000:]}"
    )
    assert len(outcomes) == _FILES
    counts = {name: outcomes.count(name) for name in ("ok", "invalid", "refused")}
    assert sum(counts.values()) == _FILES
    # The fuzzing reaches the interpreter, and the validator rejects most
    # corruptions before it does.
    assert counts["ok"] >= 20 and counts["invalid"] >= _FILES // 3, counts
