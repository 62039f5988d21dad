"""Entry point of the `tfaccel` shell command; imports no TensorFlow itself.

`import tfaccel` loads TensorFlow, and TF 2.21 logs its oneDNN, CUDA and
CPU-feature lines through absl before `absl::InitializeLog()`, which ignores
`TF_CPP_MIN_LOG_LEVEL`. Any module inside the `tfaccel` package imports the
package first, so the command starts here, outside it: it sends file
descriptor 2 to /dev/null while `tfaccel` (and TensorFlow) load, then runs
`tfaccel.cli.main`. Python errors still surface as exceptions.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

__all__ = ["main", "native_stderr_silenced"]


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null while TensorFlow or LiteRT load.

    Covers native (C++) writes that Python's `sys.stderr` never sees, such as
    LiteRT's "Created TensorFlow Lite XNNPACK delegate".
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `tfaccel` command (see `tfaccel.cli`)."""
    with native_stderr_silenced():
        from tfaccel.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
