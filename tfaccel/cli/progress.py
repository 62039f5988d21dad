"""A plain-text progress bar for calibration."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO


class ProgressBar:
    """A plain-text progress bar on a stream (stderr by default).

    On a terminal it redraws one line; in a log file it prints a line every
    10%, so CI logs stay readable.
    """

    def __init__(
        self, total: int, label: str = "calibrating", stream: TextIO | None = None
    ):
        self.total = max(1, int(total))
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count = min(self.total, self.count + n)
        fraction = self.count / self.total
        if self._tty:
            self._draw(fraction, end="\r")
        else:
            decile = int(fraction * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self._draw(fraction, end="\n")

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, fraction: float, end: str) -> None:
        width = 30
        filled = int(round(fraction * width))
        elapsed = time.perf_counter() - self._t0
        self.stream.write(
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.count}/{self.total} samples {elapsed:5.1f}s{end}"
        )
        self.stream.flush()


def calibration_dataset(
    data: Any, stream: TextIO | None = None, names: list[str] | None = None
) -> Callable[[], Iterator[Any]]:
    """A TFLite `representative_dataset` that draws a progress bar.

    The converter calls it once during calibration and pulls one sample per
    step, so the bar advances with the calibration itself.

    Args:
        data: calibration samples `(N, ...)`, already of the input dtype; or
            a list with one such array per model input.
        stream: where the bar is drawn (default: stderr).
        names: the model's input names, for a multi-input model (its
            samples are yielded as `{name: array}`, as `export_tflite` does).

    Returns:
        A callable returning a generator of `[sample]` batches of size 1.
    """
    arrays = data if isinstance(data, list) else [data]

    def representative_dataset() -> Iterator[Any]:
        bar = ProgressBar(len(arrays[0]), stream=stream)
        try:
            for i in range(len(arrays[0])):
                sample = [x[i : i + 1] for x in arrays]
                yield sample if len(sample) == 1 else dict(zip(names or [], sample))
                bar.update()
        finally:
            bar.close()

    return representative_dataset
