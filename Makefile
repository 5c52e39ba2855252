# modelyard: the two commands.
#   make serve   create .venv, install, start modelyard on 127.0.0.1:8080 with the examples served
#   make test    install what the tests need, start PostgreSQL and Redis if they are down, run the suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: serve test test-fast lint typecheck services install install-dev clean

serve: $(VENV)/.stamp-serve
	$(BIN)/modelyard serve --examples

test: $(VENV)/.stamp-dev services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.stamp-dev services
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

services:
	bash scripts/services.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

$(VENV)/.stamp-serve: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[all]'
	touch $@

# torch is an optional extra; the pinned CPU build (2.13.0) keeps CI off the multi-GB CUDA wheels
$(VENV)/.stamp-dev: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.stamp-serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
