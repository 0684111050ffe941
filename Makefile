# One command sets everything up, one runs the tests (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU=1 adds JAX's CUDA build and makes JAX this venv's Keras backend (README, "On a GPU").
GPU ?= 0
JAX_GPU ?= jax[cuda12]

.PHONY: setup test test-fast lint

setup:
ifeq ($(GPU),1)
	@scripts/setup-gpu.sh check
endif
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev,ray,onnx]'
	$(BIN)/python -m pip check
	$(BIN)/al --version
ifeq ($(GPU),1)
	@scripts/setup-gpu.sh install $(VENV) '$(JAX_GPU)'
endif
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
