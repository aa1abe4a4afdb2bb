# mtlib: the two commands of the README, and a few helpers.
#   make demo   create .venv if missing, run every notebook headless on the tiny config
#   make test   same bootstrap, then pytest (mtlib) + nbval (every notebook)
# Both are idempotent: the environment is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mtlib-installed
# CPU machines get the CPU build of torch, pinned, so no multi-GB CUDA build is pulled.
CPU_TORCH ?= torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: demo test lab env clean-venv lint
.DEFAULT_GOAL := demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
ifneq ($(HAS_GPU),yes)
	$(PY) -m pip install -q --disable-pip-version-check "$(CPU_TORCH)"
endif
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name mtlib --display-name "mtlib (.venv)" >/dev/null
	@touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m mtlib run --config configs/tiny.yaml

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

# make lab: JupyterLab on localhost over the notebooks (views of mtlib.widgets, docs/interactive.md).
# LAB_ARGS passes options through, e.g. LAB_ARGS="--port=8899 --no-browser". As root (containers)
# Jupyter refuses to start without --allow-root: added then.
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,lab]"
	$(VENV)/bin/jupyter lab --notebook-dir=. $(LAB_ROOT) $(LAB_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check mtlib tests notebooks benchmarks

clean-venv:
	rm -rf $(VENV)
