# modelyard: the two commands.
#   make serve   create .venv, install, start modelyard on 127.0.0.1:8080 with the examples served
#   make test    install what the tests need, start PostgreSQL and Redis if they are down, run the suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
, := ,

.PHONY: serve test test-fast lint typecheck services install install-dev clean docs image image-gpu

serve: $(VENV)/.stamp-serve
	$(call step,"starting modelyard serve --examples (its curl lines follow once the examples answer)")
	$(BIN)/modelyard serve --examples

test: $(VENV)/.stamp-dev services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.stamp-dev services
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy

# the documentation site into site/ (mkdocs.yml; the CLI and settings pages are generated from the code)
docs: $(VENV)/.stamp-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

services:
	bash scripts/services.sh

# the container images, with docker or podman, from a wheelhouse built here (docs/containers.md);
# each prints the tag it built: modelyard/modelyard:<version>[-gpu]. BASE_IMAGE=local builds on a
# Debian base made here (the default when python:3.11-slim cannot be pulled).
image:
	@bash scripts/image.sh

image-gpu:
	@bash scripts/image.sh --gpu

# Each step says what it does, and pip shows its own progress (PIP_FLAGS=-q hushes it).
PIP_FLAGS ?=
step = @printf '\n==> %s\n' $(1)

$(VENV)/bin/python:
	$(call step,"creating the virtualenv $(VENV) ($(PYTHON) -m venv)")
	$(PYTHON) -m venv $(VENV)
	$(call step,"upgrading pip in $(VENV)")
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip

# xgboost-cpu replaced xgboost (whose Linux wheel pulls 469 MB of NCCL); both own the same files,
# so a virtualenv made before the switch drops the CUDA build before installing
define drop_cuda_xgboost
	@if $(BIN)/pip show -q xgboost >/dev/null 2>&1 && ! $(BIN)/pip show -q xgboost-cpu >/dev/null 2>&1; then \
	  printf '\n==> replacing xgboost (CUDA build) with xgboost-cpu\n'; \
	  $(BIN)/pip uninstall -y -q xgboost nvidia-nccl-cu12; fi
endef

# --no-compile: byte-compiling every installed module took most of the install on a busy 2-core
# machine (76 s of 89); Python compiles (and caches) what it imports, on first use
$(VENV)/.stamp-serve: pyproject.toml | $(VENV)/bin/python
	$(drop_cuda_xgboost)
	$(call step,"installing modelyard and the extras the examples need: .[all] (xgboost-cpu$(,) lightgbm$(,) onnxruntime$(,) ...)")
	$(BIN)/pip install --no-compile $(PIP_FLAGS) -e '.[all]'
	@touch $@

# torch is an optional extra; the pinned CPU build (2.13.0) keeps CI off the multi-GB CUDA wheels
$(VENV)/.stamp-dev: pyproject.toml | $(VENV)/bin/python
	$(drop_cuda_xgboost)
	$(call step,"installing torch 2.13.0 (CPU build) for the tests")
	$(BIN)/pip install $(PIP_FLAGS) 'torch==2.13.0'
	$(call step,"installing modelyard with the test extras: .[dev]")
	$(BIN)/pip install $(PIP_FLAGS) -e '.[dev]'
	@touch $@ $(VENV)/.stamp-serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
