# milr: `make figures` regenerates every figure from the cached results; `make test` runs the
# tests. Both create the virtual environment (.venv) on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of PyTorch by default. On a GPU machine: make TORCH_SPEC='torch' venv
TORCH_SPEC ?= torch==2.13.0
PRESET ?= quick
# The clean filter of .gitattributes (the committed form is also what `make strip` writes)
NBSTRIPOUT = $(VENV)/bin/python -m nbstripout --keep-id --extra-keys "$(NB_EXTRA_KEYS)"
NB_EXTRA_KEYS := metadata.language_info.codemirror_mode metadata.language_info.file_extension \
  metadata.language_info.mimetype metadata.language_info.nbconvert_exporter \
  metadata.language_info.pygments_lexer metadata.language_info.version metadata.papermill \
  cell.metadata.papermill
BUILD := build
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter
export SOURCE_DATE_EPOCH := 0
# No matplotlib backend is forced: papermill's kernel uses the inline backend (headless), so the
# executed notebooks hold their figures.

# One rule per figure: figures/NAME.png and .pdf (and build/notebooks/NAME.ipynb, the executed
# notebook) depend on notebooks/NAME.ipynb, the milr/ sources and the cached records of the
# kinds the notebook reads, so an unchanged figure is not re-executed and `make -j2 figures`
# runs notebooks in parallel. The scorecard runs after the figures (order-only prerequisite).
FIGURE_NAMES := fig_eta_star_vs_dw fig_width_vs_depth fig_input_lr fig_threshold_budget \
                fig_late_lr fig_our_choices fig_sharpness_vs_dw fig_eta_star_vs_sharpness \
                theory_bounds fig_beyond_mlps
KINDS_fig_eta_star_vs_dw := eta_star sharpness
# files a notebook writes besides figures/NAME.png and .pdf
EXTRA_fig_eta_star_vs_dw := figures/fig_search_trials.png figures/fig_search_trials.pdf
EXTRA_scorecard := figures/scorecard.md
KINDS_fig_width_vs_depth := eta_star
KINDS_fig_input_lr := eta_star
KINDS_fig_threshold_budget := eta_star
KINDS_fig_our_choices := eta_star
# fig_our_choices also rewrites the README's column "effect on α (measured)" (milr.choices)
EXTRA_fig_our_choices := figures/our_choices.md
KINDS_fig_late_lr := eta_star late_lr sharpness
KINDS_fig_sharpness_vs_dw := sharpness sharpness_theory
KINDS_fig_eta_star_vs_sharpness := eta_star sharpness sharpness_theory
KINDS_theory_bounds := sharpness sharpness_theory
KINDS_scorecard := eta_star late_lr sharpness sharpness_theory
KINDS_fig_beyond_mlps := eta_star sharpness eta_star_custom sharpness_custom lr_finder
EXTRA_fig_beyond_mlps := figures/fig_lr_range_test.png figures/fig_lr_range_test.pdf
MILR_SRC := $(sort $(wildcard milr/*.py))
# every record file of the given kinds (file names are the store's business: any *.json)
records = $(foreach k,$(1),$(shell find data/results/$(k) -name '*.json' 2>/dev/null))
FIGURE_FILES := $(foreach f,$(FIGURE_NAMES),figures/$(f).png)
# ipykernel warns on every start that its local TCP sockets are unencrypted; drop that one line
# and keep everything else papermill and the kernel print on stderr.
QUIET_TCP := 2> >(grep -v --line-buffered 'Kernel is running over TCP without encryption' >&2)
PAPERMILL = MILR_PROGRESS=text $(PY) -m papermill --kernel python3 --cwd notebooks \
  --no-progress-bar --log-level ERROR

.PHONY: venv figures test data bench lab strip clean help print-filter

help:
	@echo "make figures   regenerate every figure in figures/ from the cache in data/"
	@echo "make test      run the test suite"
	@echo "make data      recompute the cached results (PRESET=quick|paper)"
	@echo "make bench     run the benchmarks in benchmarks/"
	@echo "make lab       start JupyterLab in the project environment (opens notebooks/00_index)"
	@echo "make strip     remove outputs and volatile metadata from notebooks/*.ipynb (before git add)"

# venv also registers the git filter named in .gitattributes (this clone's .git/config): a
# notebook saved with outputs in JupyterLab then reads as unchanged in `git status` and is
# committed stripped. Outside a git checkout there is nothing to register.
venv: $(VENV)/.installed
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '$(NBSTRIPOUT)' && \
	  git config filter.nbstripout.smudge cat; fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
	touch $@

EXECUTED := $(foreach f,$(FIGURE_NAMES) scorecard 00_index,$(BUILD)/notebooks/$(f).ipynb)

# the figures and the executed notebooks that hold them (a missing copy is re-executed)
figures: $(FIGURE_FILES) figures/scorecard.png $(EXECUTED)
	@ls -1 figures

define figure_rule
figures/$(1).png figures/$(1).pdf $(EXTRA_$(1)) $(BUILD)/notebooks/$(1).ipynb &: notebooks/$(1).ipynb $(MILR_SRC) \
    $(call records,$(KINDS_$(1))) | $(VENV)/.installed
	@mkdir -p $(BUILD)/notebooks figures
	@echo "papermill notebooks/$(1).ipynb"
	@$(PAPERMILL) notebooks/$(1).ipynb $(BUILD)/notebooks/$(1).ipynb >/dev/null $(QUIET_TCP)
endef
$(foreach f,$(FIGURE_NAMES),$(eval $(call figure_rule,$(f))))
$(eval $(call figure_rule,scorecard))
figures/scorecard.png figures/scorecard.pdf figures/scorecard.md: | $(FIGURE_FILES)

$(BUILD)/notebooks/00_index.ipynb: notebooks/00_index.ipynb $(FIGURE_FILES) figures/scorecard.png
	@mkdir -p $(BUILD)/notebooks
	@echo "papermill notebooks/00_index.ipynb"
	@$(PAPERMILL) notebooks/00_index.ipynb $@ >/dev/null $(QUIET_TCP)

test: venv
	$(PY) -m pytest -q

data: venv
	$(PY) -m milr data --preset $(PRESET)

bench: venv
	@set -e; for b in $(sort $(wildcard benchmarks/bench_*.py)); do \
	  echo "== $$b"; $(PY) $$b; done

# Served from the repository root (not notebooks/), so that the notebooks' links to
# ../figures/ and ../data/ resolve; --allow-root only when run as root (containers, CI).
# Notebooks under notebooks/ are saved without outputs (tools/strip_notebooks.py's
# pre_save_hook): run and save in Lab and `git status` stays clean.
lab: venv
	PYTHONPATH=tools$${PYTHONPATH:+:$$PYTHONPATH} $(VENV)/bin/jupyter lab --ServerApp.root_dir=. \
	  --ContentsManager.pre_save_hook=strip_notebooks.pre_save_hook \
	  --LabApp.default_url=/lab/tree/notebooks/00_index.ipynb \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

strip: venv
	$(PY) tools/strip_notebooks.py

clean:
	rm -rf $(BUILD) .pytest_cache

# the clean filter's command line (tests/test_notebooks_meta.py runs it as git would)
print-filter:
	@echo '$(NBSTRIPOUT)'
