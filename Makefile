# sd-serving — `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Local Ray: no token-auth prompt, no usage reporting.
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
# pip notes every unused local index path; keep the output readable.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: help install serve test test-unit test-integration lint format export-model clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the service, test and lint tools (torch 2.13.0 CPU here)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | $(PIP_QUIET)
	$(BIN)/python -c "import serving, torch, ray, diffusers"
	touch $@

serve: install ## start the service on the embedded model at http://127.0.0.1:8000 (Ctrl-C stops it)
	$(BIN)/sd-serving serve

test: install ## run every test: unit (no Ray) then integration (the real Serve app)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install ## only the fast tests that need no Ray
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install ## only the tests against the running Serve app
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check serving tests
	$(BIN)/ruff format --check serving tests
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix serving tests
	$(BIN)/ruff format serving tests

export-model: install ## write the embedded model as a diffusers directory: make export-model DIR=out/model
	$(BIN)/sd-serving export-model $(or $(DIR),out/embedded-model)

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
