# mcpm: `make help` lists the targets.
PYTHON ?= python3
PROMPT ?= The people of the United States
MODEL ?= default
BUNDLE ?= dist/host-bundle
ANDROID_OUT ?= dist/android

.PHONY: help setup demo test test-all lint bench train-default

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## install mcpm and its dependencies: system packages (tools/setup-system.sh, as root), then pip
	bash tools/setup-system.sh
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"
