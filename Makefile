# dustjax: every target depends on `setup`, so any of them works as the first command typed on a
# fresh machine. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REGION ?= SR
N ?= 10000
SEED ?= 0
DATA ?= data/$(REGION)
MODEL ?= vnet
CONFIG ?=
WORKDIR ?=
CATALOG ?=
PYTEST_ARGS ?=

.PHONY: help setup test test-slow lint format data preview train evaluate gp apply bench clean \
	min-versions

help:
	@echo "make setup                  create .venv and install dustjax with its test tools"
	@echo "make test                   run the fast test tier (what CI runs)"
	@echo "make lint                   ruff check + format check"
	@echo "make data REGION=SR N=10000 simulate a TFRecord dataset into data/REGION"
	@echo "make train REGION=LR        make the data if missing, then train the region's V-net"
	@echo "make train MODEL=unet       train the POLARIS U-Net (CONFIG= picks another config)"
	@echo "make gp CONFIG=gp_test      fit the latent log-density GP"
	@echo "make apply REGION=SR         3D map from a demo catalogue with the model make train made"
	@echo "make apply REGION=SR CATALOG=stars.fits MODEL=workdirs/vnet_sr   your catalogue -> 3D map"
	@echo "make min-versions           the tests on the oldest supported versions (constraints-min.txt)"

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,tfrecord]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

data: setup
	$(PY) -m dustjax.cli.make_dataset --region=$(REGION) --num=$(N) --seed=$(SEED) --out=$(DATA)

preview: setup
	$(PY) -m dustjax.cli.preview --data=$(DATA) --out=$(DATA)/preview.png

train: setup
	$(PY) -m dustjax.cli.train --region=$(REGION) --model=$(MODEL) \
	  $(if $(CONFIG),--config=$(CONFIG)) \
	  $(if $(WORKDIR),--workdir=$(WORKDIR)) --data_dir=$(DATA) --make_data_if_missing

evaluate: setup
	$(PY) -m dustjax.cli.evaluate --workdir=$(WORKDIR)

gp: setup
	$(PY) -m dustjax.cli.fit_gp --config=$(or $(CONFIG),gp_test) \
	  $(if $(WORKDIR),--workdir=$(WORKDIR))

# MODEL= a training workdir; without it (MODEL is then the family `vnet`) apply takes the one
# `make train REGION=...` made. CATALOG= a star catalogue; without it a demo one is simulated.
apply: setup
	$(PY) -m dustjax.cli.apply --region=$(REGION) --catalog=$(or $(CATALOG),demo) \
	  $(if $(filter-out vnet,$(MODEL)),--model=$(MODEL)) $(if $(WORKDIR),--workdir=$(WORKDIR))

bench: setup
	$(PY) -m benchmarks.simulate

# The declared lower bounds (constraints-min.txt) in a venv of their own, on a test subset
# (docs/install.md; ~15 min on 2 cores, not part of CI).
MIN_TESTS ?= tests/training/test_engine.py tests/test_gp_fit.py tests/test_gp_svgp.py \
	tests/test_los.py tests/models
min-versions:
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install -q -c constraints-min.txt -r constraints-min.txt \
	  'pytest>=8'
	.venv-min/bin/python -m pip install -q --no-deps -e .
	JAX_PLATFORMS=cpu .venv-min/bin/python -m pytest -q -p no:cacheprovider $(MIN_TESTS)

clean:
	rm -rf $(VENV) .venv-min .pytest_cache .ruff_cache
