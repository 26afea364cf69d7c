# The two set-up commands: `make demo` (the library end to end, no server needed) and
# `make test` (lint, types and the test suite against a local Redis, with the newest
# versions of everything and again with the oldest pyproject.toml accepts). Each creates
# the virtualenvs (.venv, and .tox/py311-oldest) and installs what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
OLDEST_STAMP := .tox/py311-oldest/.installed

.PHONY: demo test lint typecheck pytest pytest-oldest bench services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python example_projects/demo.py

test: $(STAMP) services lint typecheck pytest pytest-oldest

services:
	@bash .ci/ensure-services

lint: $(STAMP)
	$(BIN)/ruff check segment_mw tests example_projects benchmarks
	$(BIN)/ruff format --check segment_mw tests example_projects benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Rebuilt from scratch when the claimed versions change: tox alone would keep old pins.
$(OLDEST_STAMP): pyproject.toml tox.ini .ci/constraints-oldest.txt | $(STAMP)
	$(BIN)/tox -r -e py311-oldest --notest
	touch $(OLDEST_STAMP)

pytest-oldest: $(OLDEST_STAMP)
	$(BIN)/tox -e py311-oldest -- $(PYTEST_ARGS)

bench: $(STAMP) services
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .tox build *.egg-info .mypy_cache .ruff_cache
