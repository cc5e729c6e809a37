# mcpm: `make help` lists the targets.
PYTHON ?= python3
PROMPT ?= The people of the United States
MODEL ?= default

.PHONY: help setup demo test test-all lint bench train-default

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## install mcpm and its dependencies (pip; system packages as later stages need them)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"

demo:  ## main job on the shipped default model: check it for export, then generate text with tokens/s
	-mcpm-export $(MODEL) --target android -o dist
	mcpm generate $(MODEL) --reference -p "$(PROMPT)" -n 48

test:  ## run the test suite (pytest's "no tests collected" counts as a failure)
	$(PYTHON) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

test-all:  ## the test suite including tests marked slow
	$(PYTHON) -m pytest -q -m "slow or not slow"

lint:  ## ruff and mypy
	$(PYTHON) -m ruff check mcpm export quantize runtime_bindings tests
	$(PYTHON) -m mypy mcpm export quantize runtime_bindings/python

bench:  ## PyTorch-reference speed on the default model, as JSON (the C runtime's bench arrives later)
	mcpm generate $(MODEL) --reference -p "$(PROMPT)" -n 64 --json

train-default:  ## retrain the shipped default model from its corpus (~35 min on 2 cores; needs npm)
	$(PYTHON) -m mcpm.export.train_default_model --out export/default_model
