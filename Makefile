# mcpm: `make help` lists the targets.
PYTHON ?= python3
PROMPT ?= The people of the United States
MODEL ?= default
BUNDLE ?= dist/host-bundle
# system packages: gcc links host kernels; clang checks that the C runtime also builds with it
APT_PACKAGES ?= gcc clang

.PHONY: help setup demo test test-all lint bench train-default

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## install mcpm and its dependencies (apt-get when root and packages are missing, then pip)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "please install: $$missing (e.g. sudo apt-get install $$missing)"; fi; \
	fi
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"

demo:  ## main job on the shipped default model: export a host bundle (q4g32), run it: text and tokens/s
	mcpm-export $(MODEL) --target host -o $(BUNDLE)
	mcpm generate $(BUNDLE) -p "$(PROMPT)" -n 48

test:  ## run the test suite (pytest's "no tests collected" counts as a failure)
	$(PYTHON) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

test-all:  ## the test suite including tests marked slow
	$(PYTHON) -m pytest -q -m "slow or not slow"

lint:  ## ruff and mypy
	$(PYTHON) -m ruff check mcpm export quantize runtime_bindings tests
	$(PYTHON) -m mypy mcpm export quantize runtime_bindings/python

bench:  ## llama-bench style numbers of the exported host bundle (C runtime) and the PyTorch reference, as JSON
	mcpm-export $(MODEL) --target host -o $(BUNDLE)
	mcpm bench $(BUNDLE) -p 128 -n 64 -t 2 -r 5 --json
	mcpm generate $(MODEL) --reference -p "$(PROMPT)" -n 64 --json

train-default:  ## retrain the shipped default model from its corpus (~35 min on 2 cores; needs npm)
	$(PYTHON) -m mcpm.export.train_default_model --out export/default_model
