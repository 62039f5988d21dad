# Each target does its own set-up on a fresh machine: it creates .venv and
# installs the package with what that target needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
# pytest processes for `make test` (CI has 2 cores); TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2

.PHONY: demo test bench lint docs clean

# TensorFlow's wheel is ~570 MB: pip resumes an interrupted download, and
# the whole install is tried again (3 times in all) before it gives up.
$(VENV)/.installed-%: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	for attempt in 1 2 3; do \
	  $(PY) -m pip install -q --resume-retries 20 -e ".[$*]" && break; \
	  test $$attempt -lt 3 || exit 1; \
	  echo "pip install failed (attempt $$attempt of 3); retrying in 30 s"; sleep 30; \
	done
	touch $@

demo: $(VENV)/.installed-bench
	$(PY) examples/demo.py

test: $(VENV)/.installed-test
	$(PY) -m ruff check tfaccel tfaccel_command.py tests benchmarks examples docs
	$(PY) -m pytest -q --doctest-modules tfaccel
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run_all.py

docs: $(VENV)/.installed-test
	$(PY) docs/gen_api.py

lint: $(VENV)/.installed-test
	$(PY) -m ruff check tfaccel tfaccel_command.py tests benchmarks examples docs

clean:
	rm -rf $(VENV) build *.egg-info saved_models/*.tflite saved_models/*.keras
