"""A fast subset of the coverage matrix (benchmarks/coverage.py), in process.

The whole matrix (21 models x 9 columns, minutes) is a benchmark; here two
keras.io-style rows run the cells that pass today with tiny fine-tunes, and
the harness is checked on a child that crashes inside a cell.
"""

import argparse
import importlib.util
import json
import os
import sys
import textwrap

import pytest

_BENCH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")


@pytest.fixture(scope="module")
def coverage():
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location(
        "benchmarks_coverage", os.path.join(_BENCH, "coverage.py"))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        # coverage.py puts benchmarks/ first on sys.path (as every benchmark
        # does); its name must not shadow the `coverage` package afterwards.
        sys.path[:] = saved
    return module


def _row(coverage, name, tmp_path):
    args = argparse.Namespace(train=64, test=32, float_steps=8, qat_steps=2)
    side = coverage.TfaccelRow(coverage.ROWS[name], args, str(tmp_path))
    side.setup()
    return side


@pytest.mark.parametrize("name, cells", [
    ("nested_sequential", ("prune", "prune_2_4", "channels", "qat_int8")),
    ("two_io", ("qat_int8",)),
])
def test_keras_io_rows_pass(coverage, tmp_path, name, cells):
    side = _row(coverage, name, tmp_path)
    run = {"prune": side.prune, "prune_2_4": lambda: side.prune("2:4"),
           "channels": side.channels, "qat_int8": side.qat_int8}
    runner = coverage.cc.CellRunner(str(tmp_path / "state.json"), name, "tfaccel")
    for cell_name in cells:
        cell = runner.run(cell_name, run[cell_name])
        assert cell["status"] == "pass", (cell_name, cell)
        if cell_name == "qat_int8":
            assert cell["int8_coverage"] == 1.0 and not cell["float_ops"], cell
            assert cell["parity"]["agreement"] >= coverage.cc.MIN_AGREEMENT, cell
        if cell_name == "channels":
            assert cell["params_after"] < cell["params_before"], cell
        if cell_name == "prune_2_4":
            # The 1-channel stem conv cannot take 2:4: left dense, with a warning.
            assert cell["left_dense"] == ["conv2d"] and cell["warnings"], cell


_FAKE_ROW = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {bench!r})
    import coverage_cells as cc
    args = cc.child_parser("fake", ["a", "b", "c"]).parse_args(sys.argv[1:])
    runner = cc.CellRunner(args.partial, args.child, "fake")
    runner.setup(lambda: None)
    cells = {{"a": lambda: {{"summary": "fine"}},
             "b": lambda: (runner.note(qat_loss=[2.3, "nan"]),
                           os.kill(os.getpid(), signal.SIGSEGV)),
             "c": lambda: 1 / 0}}
    for name in args.cells.split(","):
        runner.run(name, cells[name])
""")


def test_a_crash_is_a_recorded_cell_and_the_row_goes_on(coverage, tmp_path):
    script = tmp_path / "fake_row.py"
    script.write_text(_FAKE_ROW.format(bench=_BENCH))
    result = coverage.cc.run_row(str(script), "fake", ["a", "b", "c"], timeout=60)
    cells = result["cells"]
    assert cells["a"]["status"] == "pass" and cells["a"]["summary"] == "fine"
    assert cells["b"]["status"] == "crash"
    assert "SIGSEGV" in cells["b"]["error"]
    # What the cell noted before dying is kept (a NaN loss before a crash).
    assert cells["b"]["qat_loss"] == [2.3, "nan"]
    # The cell after the crash ran in a second process and failed on its own.
    assert result["launches"] == 2
    assert cells["c"]["status"] == "fail"
    assert cells["c"]["error"].startswith("ZeroDivisionError: division by zero")


def test_a_row_merges_into_the_file_as_it_is_when_written(coverage, tmp_path):
    # Two row runs into one JSON, or a hand-written note added while a row
    # ran: each write re-reads the file and replaces only its own rows.
    out = str(tmp_path / "coverage.json")
    fields = {"benchmark": "coverage", "command": "first"}
    coverage._merge(out, fields, "run one", {"MobileNet": {"tfaccel": 1}})
    with open(out) as f:
        edited = json.load(f)
    edited["note"] = "written by hand meanwhile"
    edited["rows"]["ResNet50"] = {"tfaccel": 2}
    with open(out, "w") as f:
        json.dump(edited, f)
    result = coverage._merge(out, {**fields, "command": "second"}, "run two",
                             {"MobileNet": {"tfaccel": 3}})
    with open(out) as f:
        assert json.load(f) == result
    assert result["note"] == "written by hand meanwhile"
    assert result["rows"] == {"MobileNet": {"tfaccel": 3}, "ResNet50": {"tfaccel": 2}}
    assert list(result["rows"]) == ["MobileNet", "ResNet50"]  # the matrix's order
    assert result["runs"] == ["run one", "run two"] and result["command"] == "second"
