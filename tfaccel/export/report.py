"""`ExportReport`: what a TFLite file holds and how well it matches Keras."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass
class ExportReport:
    """Facts about a TFLite file, and its parity with the Keras model.

    `export_tflite` returns one for the file it wrote (structure, parity
    figures, conversion time); `inspect_tflite` returns one for any `.tflite`
    file (structure only: the parity fields stay `None`).

    Example:

    >>> report = ExportReport(path="m.tflite", quantization="int8",
    ...                       bytes=16000, gzip_bytes=13000,
    ...                       ops={"CONV_2D": {"int8": 2}})
    >>> report.to_dict()["ops"]
    {'CONV_2D': {'int8': 2}}

    Attributes:
        path: where the file lies (`None` for in-memory bytes).
        quantization: `"float32"`, `"float16"`, `"dynamic"` or `"int8"`; for
            `inspect_tflite`, inferred from the file (`"mixed"` when unclear).
        bytes: file size.
        gzip_bytes: size after gzip (level 9): shows what sparsity saves.
        sparsity: fraction of zero weights over the constant weight tensors
            of conv / fully-connected / depthwise / embedding / matmul ops
            (a quantized weight is zero when it equals its zero point);
            `None` when the file has no such tensor.
        tensor_sparsity: the same fraction per weight tensor name.
        ops: op counts by type and by dtype, e.g. `{"CONV_2D": {"int8": 2}}`.
            The dtype is the op's activation dtype; `"float32/int8"` marks a
            hybrid op (float activations, int8 weights: dynamic range).
        int8_coverage: fraction of compute ops (conv, depthwise, fully
            connected, transpose conv, batch matmul) running on int8/uint8
            activations; `None` without compute ops.
        inputs: `{"name", "shape", "dtype"}` per model input of the file.
        outputs: the same per output.
        agreement: top-1 agreement of the file with the Keras model over
            classification-like outputs (last dimension > 1), the lowest over
            outputs; `None` when not verified or no such output.
        max_abs_error: largest absolute difference between the file's
            (dequantized) outputs and the Keras outputs.
        mean_abs_error: the mean absolute difference.
        num_samples: samples the verification ran on (0: not verified).
        conversion_seconds: time spent in the TFLite converter.
        notes: what export decided on the way (student exported, pruning
            wrappers stripped, verification skipped, ...).
        float_ops: for a file with an integer body, every op between the
            input's QUANTIZE and the output's DEQUANTIZE that is not integer,
            in execution order: `{"op", "dtype", "layer", "tensor",
            "int8_kernel"}`, where `layer` is the Keras layer it came from
            (None if its tensor names do not say) and `int8_kernel` is False
            for an op TFLite has no int8 kernel for
            (`tfaccel.export.islands.NO_INT8_KERNEL`); the others are float
            islands. `[]`: the whole body is integer. `None`: the file has
            no integer body (float32, float16, dynamic range).
    """

    path: str | None
    quantization: str
    bytes: int
    gzip_bytes: int
    sparsity: float | None = None
    tensor_sparsity: dict[str, float] = dataclasses.field(default_factory=dict)
    ops: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    int8_coverage: float | None = None
    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    outputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    agreement: float | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    num_samples: int = 0
    conversion_seconds: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    float_ops: list[dict[str, Any]] | None = None

    @property
    def float_islands(self) -> list[dict[str, Any]]:
        """The `float_ops` TFLite could run in int8 (it has a kernel)."""
        return [op for op in self.float_ops or [] if op["int8_kernel"]]

    def float_op_groups(self) -> list[tuple[str, str, str | None, bool, int]]:
        """`float_ops` grouped: `(op, dtype, layer, int8_kernel, count)`."""
        counts: dict[tuple, int] = {}
        for op in self.float_ops or []:
            key = (op["op"], op["dtype"], op["layer"], op["int8_kernel"])
            counts[key] = counts.get(key, 0) + 1
        return [(*key, n) for key, n in counts.items()]

    @property
    def verified(self) -> bool:
        """Whether the file was run and compared with the Keras model."""
        return self.num_samples > 0

    @property
    def op_counts(self) -> dict[str, int]:
        """Op counts by type, all dtypes together."""
        return {op: sum(by_dtype.values()) for op, by_dtype in self.ops.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def _summary_rows(self) -> list[tuple[str, str]]:
        rows = [
            ("path", str(self.path)),
            ("quantization", self.quantization),
            ("size", _bytes(self.bytes)),
            ("gzip size", _bytes(self.gzip_bytes)),
        ]
        if self.sparsity is not None:
            rows.append(("zero weights", f"{self.sparsity:.2%}"))
        if self.int8_coverage is not None:
            rows.append(("int8 coverage", f"{self.int8_coverage:.0%} of compute ops"))
        if self.float_ops is not None:
            rows.append(("float ops", self._float_summary()))
        for key, entries in (("inputs", self.inputs), ("outputs", self.outputs)):
            if entries:
                rows.append((key, _tensors(entries)))
        if self.verified:
            if self.agreement is not None:
                rows.append(("top-1 agreement", f"{self.agreement:.2%}"))
            rows.append(("max abs error", f"{self.max_abs_error:.3g}"))
            rows.append(("mean abs error", f"{self.mean_abs_error:.3g}"))
            rows.append(("verified on", f"{self.num_samples} samples"))
        elif self.conversion_seconds is not None:
            rows.append(("verified", "no"))  # an export that skipped verification
        if self.conversion_seconds is not None:
            rows.append(("conversion", f"{self.conversion_seconds:.2f} s"))
        return rows

    def _float_summary(self) -> str:
        if not self.float_ops:
            return "none between QUANTIZE and DEQUANTIZE (integer body)"
        islands = len(self.float_islands)
        without = len(self.float_ops) - islands
        return (
            f"{len(self.float_ops)} in the integer body: {islands} float "
            f"island op(s), {without} with no int8 TFLite kernel"
        )

    def _float_lines(self) -> list[str]:
        return [
            f"{op}[{dtype}] x{n} in layer {layer!r}: "
            + ("float island (TFLite has an int8 kernel)" if kernel
               else "no int8 TFLite kernel")
            for op, dtype, layer, kernel, n in self.float_op_groups()
        ]

    def _op_rows(self) -> list[tuple[str, str, int]]:
        return [
            (op, dtype, count)
            for op, by_dtype in sorted(self.ops.items())
            for dtype, count in sorted(by_dtype.items())
        ]

    def to_markdown(self) -> str:
        """The report as Markdown tables (summary, ops, notes)."""
        lines = ["| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in self._summary_rows()]
        lines += ["", "| op | dtype | count |", "|---|---|---|"]
        lines += [f"| {op} | {dtype} | {n} |" for op, dtype, n in self._op_rows()]
        if self.float_ops:
            lines += ["", "Float ops in the integer body:", ""]
            lines += [f"- {line}" for line in self._float_lines()]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        """The one text rendering (used by `print(report)`, `tfaccel export`
        and `tfaccel inspect`): summary, ops, zero weights per tensor, float
        ops of the integer body by op and layer, notes."""
        rows = self._summary_rows()
        ops = ", ".join(f"{op}[{dtype}] x{n}" for op, dtype, n in self._op_rows())
        rows.append(("ops", ops))
        width = max(len(key) for key, _ in rows)
        lines = ["ExportReport"]
        lines += [f"  {key:<{width}}  {value}" for key, value in rows]
        if self.tensor_sparsity:
            lines.append("  zero weights per tensor")
            name_width = max(len(name) for name in self.tensor_sparsity)
            lines += [
                f"    {name:<{name_width}}  {value:.2%}"
                for name, value in self.tensor_sparsity.items()
            ]
        if self.float_ops:
            lines.append("  float ops in the integer body")
            lines += [f"    {line}" for line in self._float_lines()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _bytes(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n:,} bytes ({n / (1024 * 1024):.2f} MB)"
    if n >= 1024:
        return f"{n:,} bytes ({n / 1024:.1f} KB)"
    return f"{n:,} bytes"


def _tensors(entries: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{e.get('name')} {e.get('dtype')}{list(e.get('shape', []))}" for e in entries
    )
