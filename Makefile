# One command sets everything up, one runs the tests (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	$(BIN)/python -m pip check
	$(BIN)/al --version
	@scripts/ensure-chromium.sh

test: lint
	$(BIN)/python -m pytest

# The quick loop: unit tests only (no Label Studio server, no shared data or weights).
test-fast:
	$(BIN)/python -m pytest -m "not integration and not slow" -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
