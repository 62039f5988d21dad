"""The tfmot column of the coverage matrix: one row, tf_keras, its own process.

tensorflow-model-optimization 0.8.1 works on `tf_keras` models only and sets
`TF_USE_LEGACY_KERAS=1` for its process, so `coverage.py` runs this script as
a child per row and never imports tfaccel here. The row's model is built
with `tf_keras` from the same builder, trained on the same digits with the
same steps, then: `prune_low_magnitude` (unstructured, and 2:4 with
`sparsity_m_by_n`), and `quantize_model` -> short QAT fine-tune -> the TF
converter with `Optimize.DEFAULT` (float I/O, as tfaccel exports).

Usage (normally started by `coverage.py`):

    .venv/bin/python benchmarks/peer_tfmot_coverage.py --child MobileNet --partial s.json
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import coverage_cells as cc  # noqa: E402

CELLS = cc.TFMOT_CELLS


class TfmotRow(cc.RowSide):
    def __init__(self, row, args, workdir: str):
        import tensorflow_model_optimization as tfmot
        import tf_keras

        super().__init__(tf_keras, row, args, workdir)
        self.tfmot = tfmot

    def cells(self) -> dict:
        return {"prune": self.prune, "prune_2_4": lambda: self.prune((2, 4)),
                "qat_int8": self.qat_int8}

    def _copy(self):
        # tfmot wraps the ORIGINAL layer objects: work on an independent copy.
        copy = self.k.models.clone_model(self.model)
        copy.set_weights(self.model.get_weights())
        return copy

    def prune(self, m_by_n=None) -> dict:
        sparsity = self.tfmot.sparsity.keras
        kwargs = {"sparsity_m_by_n": m_by_n} if m_by_n else {
            "pruning_schedule": sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1)}
        pruned = self.compile(sparsity.prune_low_magnitude(self._copy(), **kwargs))
        cc.fit_steps(pruned, self.data, cc.PRUNE_STEPS, [sparsity.UpdatePruningStep()])
        plain = sparsity.strip_pruning(pruned)
        frac, dense = cc.weights_left_dense((w.name, w.numpy()) for w in plain.weights)
        cell = {"sparsity": round(frac, 4), "left_dense": dense,
                "summary": f"{frac:.0%} of kernels zero"}
        return cc.left_dense(cell, cell["left_dense"], [],
                             "2:4" if m_by_n else "unstructured")

    def qat_int8(self) -> dict:
        qat = self.compile(self.tfmot.quantization.keras.quantize_model(self._copy()),
                           common.QAT_LR)
        loss = cc.fit_steps(qat, self.data, self.args.qat_steps)
        cell = {"qat_loss": loss, "qat_test_accuracy": cc.accuracy(qat, self.data)}
        self.note(**cell)
        path = common.write_bytes(os.path.join(self.workdir, "qat.tflite"),
                                  common.convert_keras(qat, "qat", int8_io=False))
        x_test = self.data["x_test"]
        expected = qat.predict(x_test, verbose=0)
        expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
        inputs = x_test if isinstance(x_test, list) else [x_test]
        got = cc.tflite_outputs(path, inputs, [t.name.split(":")[0] for t in qat.inputs],
                                [e.shape[1:] for e in expected])
        facts, p = cc.op_facts(path), cc.parity(expected, got)
        cell.update(facts, parity=p, summary=cc.export_summary(facts, p))
        return cc.grade(cell, self.row.kind, parity_goal=True)


def child(argv) -> None:
    cc.child_main(argv, __doc__, "tfmot", TfmotRow, CELLS)


if __name__ == "__main__":
    child(sys.argv[1:])
