# Entry points (see README): `make demo` runs the whole chain; `make test` is CI's full lane (ruff check, ruff format
# --check, mypy, the whole test suite); `make test-fast` is the developer loop (the suite without the tests marked
# slow or distributed).
# Both create .venv on first use. On a CPU-only machine torch is pinned to the local CPU wheel first;
# GPU users override TORCH_SPEC (e.g. `make demo TORCH_SPEC=torch`) or pre-install their CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-fast typecheck install install-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.torch: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/dcase demo --out $(DEMO_OUT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check dcase tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# pytest's exit code 5 (no test collected) fails the recipe like any non-zero status.
test: $(VENV)/.installed-dev
	$(BIN)/ruff check dcase tests benchmarks
	$(BIN)/ruff format --check dcase tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --timeout 900 tests

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q --timeout 300 -m "not slow and not distributed" tests

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .mypy_cache
