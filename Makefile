# milr: `make figures` regenerates every figure from the cached results; `make test` runs the
# tests. Both create the virtual environment (.venv) on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch by default. On a GPU machine: make TORCH_SPEC='torch' venv
TORCH_SPEC ?= torch==2.13.0
PRESET ?= quick
BUILD := build
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter
export MPLBACKEND := Agg
export SOURCE_DATE_EPOCH := 0

.PHONY: venv figures test data bench lab strip clean help

help:
	@echo "make figures   regenerate every figure in figures/ from the cache in data/"
	@echo "make test      run the test suite"
	@echo "make data      recompute the cached results (PRESET=quick|paper)"
	@echo "make bench     run the benchmarks in benchmarks/"
	@echo "make lab       start JupyterLab in the project environment (opens notebooks/00_index)"
	@echo "make strip     remove outputs and volatile metadata from notebooks/*.ipynb (before git add)"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (milr)" >/dev/null
	touch $@

figures: venv
	@mkdir -p $(BUILD)/notebooks figures
	@set -e; for nb in $(NOTEBOOKS); do \
	  echo "papermill $$nb"; \
	  MILR_PROGRESS=text $(PY) -m papermill --kernel python3 --cwd notebooks --no-progress-bar --log-level ERROR \
	    $$nb $(BUILD)/notebooks/$$(basename $$nb) >/dev/null; \
	done
	@ls -1 figures

test: venv
	$(PY) -m pytest -q

data: venv
	$(PY) -m milr data --preset $(PRESET)

bench: venv
	@set -e; for b in $(sort $(wildcard benchmarks/bench_*.py)); do \
	  echo "== $$b"; $(PY) $$b; done

# Served from the repository root (not notebooks/), so that the notebooks' links to
# ../figures/ and ../data/ resolve; --allow-root only when run as root (containers, CI).
lab: venv
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. \
	  --LabApp.default_url=/lab/tree/notebooks/00_index.ipynb \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

strip: venv
	$(PY) tools/strip_notebooks.py

clean:
	rm -rf $(BUILD) .pytest_cache
