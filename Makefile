# mtlib: the two commands of the README, and a few helpers.
#   make demo          create .venv if missing (core + notebooks), run every notebook headless
#   make test          same bootstrap plus the test extras, then make lint (ruff check + ruff
#                      format --check), pytest (mtlib) + nbval (every
#                      notebook), then the newest-stack check (make newest-stack)
#   make newest-stack  a fresh venv with the newest numpy / transformers / huggingface_hub /
#                      Pillow: installing mtlib must downgrade nothing and its core tests pass
#   make lock          re-resolve requirements/ci-lock.txt (CI's exact versions; users are not
#                      bound by it: pyproject.toml holds lower bounds only)
# Idempotent: an environment is rebuilt only when pyproject.toml or the lock changes.
# Needs only python3 and make (pip comes with the venv).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
LOCK   := requirements/ci-lock.txt
DEMO_STAMP := $(VENV)/.mtlib-demo
TEST_STAMP := $(VENV)/.mtlib-test
# CPU machines get the CPU build of torch, pinned, so no multi-GB CUDA build is pulled.
CPU_TORCH ?= torch==2.13.0
# The official code (reference tests) imports torchvision's Python transforms only; each
# torchvision wheel pins one exact torch, so it goes in without its dependencies, and into a
# folder of its own that only the reference fixture puts on sys.path (tests/official_ref.py):
# next to the CPU torch its C++ ops do not load, and transformers, finding it installed, would
# then fail to import Wav2Vec2Model in every notebook kernel.
TORCHVISION ?= torchvision==0.28.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: demo test test-fast lab env newest-stack lock clean-venv lint
.DEFAULT_GOAL := demo

$(VENV)/.torch:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
ifneq ($(HAS_GPU),yes)
	$(PIP) "$(CPU_TORCH)"
endif
	@touch $@

$(DEMO_STAMP): pyproject.toml $(LOCK) $(VENV)/.torch
	$(PIP) -c $(LOCK) -e ".[notebooks]"
	$(PY) -m ipykernel install --sys-prefix --name mtlib --display-name "mtlib (.venv)" >/dev/null
	@touch $@

$(TEST_STAMP): $(DEMO_STAMP)
	$(PIP) -c $(LOCK) -e ".[notebooks,s3,reference,dev]"
	-$(PY) -m pip uninstall -y -q torchvision 2>/dev/null
	$(PIP) --no-deps --upgrade --target $(VENV)/reference-site "$(TORCHVISION)"
	@touch $@

env: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m mtlib run --config configs/tiny.yaml

test: $(TEST_STAMP)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider
	$(MAKE) --no-print-directory newest-stack

# the edit loop: the quick modules without their golden and slow tests (tests/conftest.py marks `fast`)
test-fast: $(TEST_STAMP)
	$(PY) -m pytest -m fast -q -p no:cacheprovider tests/test_spec.py tests/test_layers.py tests/test_config.py tests/test_plan_cli.py tests/test_pipeline_loop.py tests/test_sampling.py tests/test_audio.py tests/test_image.py tests/test_video.py

newest-stack: $(TEST_STAMP)
	$(PY) tools/newest_stack.py --python $(PYTHON)

lock: $(TEST_STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra notebooks --extra s3 \
	  --extra reference --extra lab -c requirements/ci-pins.txt --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) \
	  --no-emit-package torch --no-emit-package mtlib -o $(LOCK)

# make lab: JupyterLab on localhost over the notebooks (views of mtlib.widgets, docs/interactive.md).
# LAB_ARGS passes options through, e.g. LAB_ARGS="--port=8899 --no-browser". As root (containers)
# Jupyter refuses to start without --allow-root: added then.
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(DEMO_STAMP)
	$(PIP) -c $(LOCK) -e ".[lab]"
	$(VENV)/bin/jupyter lab --notebook-dir=. $(LAB_ROOT) $(LAB_ARGS)

# ruff check (lint rules) and ruff format --check (the code's layout), the same as CI's
lint: $(TEST_STAMP)
	$(PY) -m ruff check mtlib tests notebooks benchmarks tools
	$(PY) -m ruff format --check mtlib tests benchmarks tools

clean-venv:
	rm -rf $(VENV) .venv-newest
