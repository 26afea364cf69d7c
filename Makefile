# The two set-up commands: `make demo` (the library end to end, no server needed) and
# `make test` (lint, types and the test suite against a local Redis). Each creates the
# virtualenv in .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck pytest bench services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python example_projects/demo.py

test: $(STAMP) services lint typecheck pytest

services:
	@bash .ci/ensure-services

lint: $(STAMP)
	$(BIN)/ruff check segment_mw tests example_projects benchmarks
	$(BIN)/ruff format --check segment_mw tests example_projects benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) services
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
