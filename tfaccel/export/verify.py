"""Verification of a converted file against its Keras model.

The file is run on the same samples as the Keras model and the outputs are
compared: top-1 agreement on classification-like outputs (last dimension >
1; `top1_agreement`: a sample agrees when the file's top-1 is one of the
Keras model's top-1 classes, so an exact tie in the Keras output -- common
when a QAT model's logits are int8 -- is not a disagreement) and absolute error of the dequantized outputs. A NaN or inf output on
either side is never "no error": it fails verification whatever the
tolerance (garbage must not pass). Without a user `min_agreement`, an
agreement under `DEFAULT_MIN_AGREEMENT` warns and is noted in the report
(an int8 file calibrated on the wrong scale agrees on ~16%).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfaccel._warnings import TfaccelWarning
from tfaccel.data import model_input
from tfaccel.export.report import ExportReport
from tfaccel.export.run import FileRunner, from_file_dtype, to_file_dtype

__all__ = ["DEFAULT_MIN_AGREEMENT", "VerificationError", "verify"]

# Below this top-1 agreement an export without `min_agreement` warns.
DEFAULT_MIN_AGREEMENT = 0.9


class VerificationError(RuntimeError):
    """The exported file does not match the Keras model within `tolerance`.

    Also raised, whatever the tolerance, when the file or the Keras model
    outputs NaN or inf on the verification samples. The file was not written
    to `path`; `report` holds the figures measured on the rejected file.
    """

    def __init__(self, message: str, report: ExportReport):
        super().__init__(message)
        self.report = report


def _keras_outputs(model, inputs: list[np.ndarray], batch: int = 256) -> dict:
    """Keras outputs keyed like the TFLite signature outputs."""
    import keras

    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs[0]), batch):
        x = [a[start : start + batch] for a in inputs]
        out = model(model_input(model, x), training=False)
        if isinstance(out, Mapping):
            named = {str(k): v for k, v in out.items()}
        else:
            flat = keras.tree.flatten(out)
            named = {f"output_{i}": v for i, v in enumerate(flat)}
        for key, value in named.items():
            chunks.setdefault(key, []).append(keras.ops.convert_to_numpy(value))
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def _tflite_outputs(
    file: str, model, inputs: list[np.ndarray], keys: list[str], batch: int = 256
) -> dict:
    """Run the file on `inputs`, outputs dequantized and keyed like `keys`."""
    runner = FileRunner(file)
    in_details, out_details = runner.input_details, runner.output_details
    in_names = [t.name for t in model.inputs]
    if set(in_names) != set(in_details):
        in_names = list(in_details)  # same order as the Keras inputs
    out_names = keys if set(keys) == set(out_details) else list(out_details)
    feed = {name: to_file_dtype(a, in_details[name]) for name, a in zip(in_names, inputs)}
    result = runner(feed, batch)
    return {
        key: from_file_dtype(result[name], out_details[name])
        for key, name in zip(keys, out_names)
    }


def _nonfinite(outputs: dict, side: str) -> list[str]:
    found = []
    for key, value in outputs.items():
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            found.append(f"{side} output '{key}' has {bad} NaN/inf value(s)")
    return found


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of samples whose `candidate` top-1 is a top-1 of `reference`.

    Ties count only on the reference side (the Keras model): where its
    largest value is shared by several classes, the candidate may pick any
    of them. A tie in the candidate is not excused, so a constant (garbage)
    file still disagrees with a reference that is not constant. Both arrays
    have the class on the last axis.
    """
    reference = np.asarray(reference, np.float32)
    candidate = np.asarray(candidate).reshape(reference.shape)
    flat = reference.reshape(-1, reference.shape[-1])
    picked = np.argmax(candidate.reshape(flat.shape), -1)
    chosen = np.take_along_axis(flat, picked[:, None], -1)[:, 0]
    return float(np.mean(chosen == flat.max(-1)))


def _compare(expected: dict, got: dict) -> dict[str, Any]:
    agreements, max_err, abs_sum, count = [], 0.0, 0.0, 0
    for key, want in expected.items():
        have = got[key].reshape(want.shape)
        want = want.astype(np.float32)
        # A NaN on one side is an infinite error (`max` would skip it).
        diff = np.nan_to_num(np.abs(have - want), nan=np.inf)
        max_err = max(max_err, float(diff.max()) if diff.size else 0.0)
        abs_sum += float(diff.sum())
        count += diff.size
        if want.ndim >= 2 and want.shape[-1] > 1:
            agreements.append(top1_agreement(want, have))
    return {
        "agreement": min(agreements) if agreements else None,
        "max_abs_error": max_err,
        "mean_abs_error": abs_sum / count if count else 0.0,
    }


def _tolerance_failures(report: ExportReport, tolerance: dict) -> list[str]:
    failures = []
    if "min_agreement" in tolerance:
        if report.agreement is None:
            failures.append(
                "min_agreement was set but no output is classification-like "
                "(last dimension > 1)"
            )
        elif report.agreement < tolerance["min_agreement"]:
            failures.append(
                f"top-1 agreement {report.agreement:.4f} < min_agreement "
                f"{tolerance['min_agreement']}"
            )
    if "max_error" in tolerance and report.max_abs_error > tolerance["max_error"]:
        failures.append(
            f"max abs error {report.max_abs_error:.4g} > max_error "
            f"{tolerance['max_error']}"
        )
    return failures


#: Fewer `representative_data` samples than this are named in the
#: low-agreement warning: the activation ranges of a post-training int8
#: file come from them (a keras.io-style digits classifier agreed 87.5%
#: with its file from 32 samples, 96% from 256).
FEW_CALIBRATION_SAMPLES = 100


def low_agreement_message(agreement: float, calibration_samples: int | None) -> str:
    """The warning for a file that agrees on under `DEFAULT_MIN_AGREEMENT`."""
    causes = "check the calibration data's scale and preprocessing"
    if calibration_samples is not None and calibration_samples < FEW_CALIBRATION_SAMPLES:
        causes += (
            f", and its size: representative_data held {calibration_samples} "
            "samples, a few hundred give steadier activation ranges"
        )
    return (
        f"The TFLite file agrees with the Keras model on only {agreement:.1%} "
        f"of top-1 predictions (under {DEFAULT_MIN_AGREEMENT:.0%}; {causes}). "
        "Pass tolerance={'min_agreement': ...} to make this an error."
    )


def verify(
    file: str,
    model,
    inputs: list[np.ndarray],
    report: ExportReport,
    tolerance: dict,
    path: str,
    calibration_samples: int | None = None,
) -> None:
    """Run `file` and `model` on `inputs`; fill `report`'s parity figures.

    Args:
        file: the converted file (the temporary file, before it is renamed).
        model: the Keras model it was converted from.
        inputs: one array per model input.
        report: filled with `agreement`, errors and `num_samples`; a note
            is added for a rejection or a low agreement.
        tolerance: the user's checked tolerance (may be empty).
        path: the target path, for messages.
        calibration_samples: how many `representative_data` samples a
            post-training int8 conversion was calibrated on (None: not
            calibrated), named in the low-agreement warning when few.

    Raises:
        VerificationError: non-finite outputs, or `tolerance` not met.
    """
    expected = _keras_outputs(model, inputs)
    got = _tflite_outputs(file, model, inputs, list(expected))
    for key, value in _compare(expected, got).items():
        setattr(report, key, value)
    report.num_samples = len(inputs[0])
    failures = _nonfinite(expected, "the Keras model's") + _nonfinite(
        got, "the file's"
    )
    failures += _tolerance_failures(report, tolerance)
    if failures:
        report.notes.append("Rejected, not written: " + "; ".join(failures) + ".")
        raise VerificationError(
            f"The TFLite export does not meet the tolerance {tolerance!r}: "
            + "; ".join(failures)
            + f" (on {report.num_samples} samples; NaN/inf outputs always "
            f"fail). Nothing was written to {path!r}.",
            report,
        )
    if (
        "min_agreement" not in tolerance
        and report.agreement is not None
        and report.agreement < DEFAULT_MIN_AGREEMENT
    ):
        message = low_agreement_message(report.agreement, calibration_samples)
        report.notes.append(message)
        warnings.warn(message, TfaccelWarning, stacklevel=3)
