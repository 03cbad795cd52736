# One idempotent set-up, then the main job or the tests.
#   make run    set up, then `dvc repro` on the embedded default
#   make test   set up, lint (ruff), then the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Nothing phones home (the switches: liftplus/offline.env); Prefect keeps its state in the project.
include liftplus/offline.env
export $(shell sed -n 's/^\([A-Z_]*\)=.*/\1/p' liftplus/offline.env)
export PREFECT_HOME := $(CURDIR)/.prefect
export PATH := $(CURDIR)/$(BIN):$(PATH)

FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup run test test-fast lint lock bench dag plots exps
setup: $(STAMP) $(FASHION_MNIST) .dvc/config .dvc/plots/offline.html
	@dvc config core.analytics false && dvc config core.check_update false
	@dvc config --local plots.html_template plots/offline.html

# `dvc plots show` then renders without internet (vega inlined; see liftplus/plots.py).
.dvc/plots/offline.html: $(STAMP)
	$(BIN)/python -m liftplus.plots $@

$(FASHION_MNIST):
	@command -v apt-get >/dev/null || { echo "error: apt-get not found; install Debian's dataset-fashion-mnist by hand" >&2; exit 1; }
	(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist))

# requirements.lock pins every package CI tested; pyproject.toml's ranges must agree with it.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock -e '.[dev]'
	@touch $@

lock: $(STAMP)
	(sed -n '1,2p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable) > requirements.lock.new
	mv requirements.lock.new requirements.lock

.dvc/config:
	dvc init -q

run: setup
	dvc repro

test: setup lint
	$(BIN)/python -m pytest -q

# The fast lane: everything but the end-to-end, DDP, compile and bench-smoke tests.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m bench

dag: setup
	dvc dag

plots: setup
	dvc plots show -o plots

# Experiments side by side in 120 columns: test accuracies and the params that differ.
exps: setup
	dvc exp show --no-pager --only-changed --drop 'Created|fit\..*|val\..*|.*/.*'
