"""`make demo`: prune, quantize, distill and export a digits CNN, offline.

Equivalent to the `tfaccel demo` command; see `tfaccel/demo.py`.
"""

from tfaccel.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
