"""`python -m tfaccel.cli`."""

from tfaccel.cli import main

# Guarded: the spawned children of `tfaccel.cli.contained` import this
# module as `__mp_main__` and must not run the command again.
if __name__ == "__main__":
    raise SystemExit(main())
