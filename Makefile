# cmohub — the two commands a newcomer runs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
PYTEST_WORKERS ?= 2
export GX_ANALYTICS_ENABLED := false

.PHONY: venv demo test lint typecheck unit bench constraints airflow clean

# The virtual environment, installed exactly from constraints.txt (uv, pinned, for speed).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

## demo: install, then run the main job on the embedded default and say where the outputs are
demo: venv
	$(BIN)/cmohub demo

## test: lint, type-check and the whole test suite
test: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --timeout=900

## lint: ruff (lint and format), mypy strict on src/
lint: venv
	$(BIN)/ruff check src tests benchmarks dags plugins
	$(BIN)/ruff format --check src tests benchmarks dags plugins
	$(BIN)/mypy

## bench: performance measured side by side, reported as ratios
bench: venv
	$(BIN)/python -m benchmarks

## constraints: re-resolve every pin from pyproject.toml (commit the result)
constraints: venv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --quiet -o constraints.txt

## airflow: the Airflow UI (standalone) with the hub's DAGs and the sandbox connections
airflow: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cmohub airflow standalone

clean:
	rm -rf $(VENV) .cmohub .mypy_cache .ruff_cache .pytest_cache
