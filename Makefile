# mcpm: `make help` lists the targets.
PYTHON ?= python3
PROMPT ?= The people of the United States
MODEL ?= default
BUNDLE ?= dist/host-bundle
ANDROID_OUT ?= dist/android

.PHONY: help setup demo c-example test test-all lint bench bench-peer bench-arm bench-contention fuzz train-default

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup:  ## install mcpm and its dependencies: system packages (tools/setup-system.sh, as root), then pip
	bash tools/setup-system.sh
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"

demo:  ## main job on the shipped default model: signed Android APK, then a host bundle run: text and tokens/s
	mcpm-export $(MODEL) --target android -o $(ANDROID_OUT)
	mcpm-export $(MODEL) --target host -o $(BUNDLE)
	mcpm generate $(BUNDLE) -p "$(PROMPT)" -n 48

c-example:  ## the C runtime's own build (CMake: libmcpm for the host bundle) and examples/c/chat.c on one message
	mcpm-export $(MODEL) --target host -o $(BUNDLE)
	cmake -S runtime_bindings/c -B build/c -DMCPM_BUNDLE=$(BUNDLE)
	cmake --build build/c -j
	echo "$(PROMPT)" | ./build/c/mcpm-chat $(BUNDLE) 48

test:  ## run the test suite (pytest's "no tests collected" counts as a failure)
	$(PYTHON) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "error: no tests were collected"; exit 1; fi; exit $$rc

test-all:  ## the test suite including tests marked slow
	$(PYTHON) -m pytest -q -m "slow or not slow"

lint:  ## ruff and mypy
	$(PYTHON) -m ruff check mcpm export quantize runtime_bindings benchmarks tests
	$(PYTHON) -m mypy mcpm export quantize runtime_bindings/python benchmarks

bench:  ## llama-bench style numbers of the exported host bundle (C runtime) and the PyTorch reference, as JSON
	mcpm-export $(MODEL) --target host -o $(BUNDLE)
	mcpm bench $(BUNDLE) -p 128 -n 64 -t 2 -r 5 --json
	mcpm generate $(MODEL) --reference -p "$(PROMPT)" -n 64 --json

bench-peer:  ## mcpm vs llama.cpp on a random MiniCPM-2B-shaped checkpoint (builds the peer once, minutes)
	$(PYTHON) -m benchmarks.peer $(PEER_ARGS)

bench-arm:  ## ARM cost model: llvm-mca cycles of mcpm's ARM kernel sets vs llama.cpp's, per core model (minutes)
	$(PYTHON) -m benchmarks.arm_cost $(ARM_ARGS)

bench-contention:  ## decode tok/s at -t 1 and -t 2 with another process busy on a core (target: t2 >= 0.8 x t1)
	$(PYTHON) -m benchmarks.contention

fuzz:  ## libFuzzer over the C bundle loader (plan.json + mcpm-config.json, ASan/UBSan) for FUZZ_SECONDS (300)
	$(PYTHON) -m tests.fuzz --seconds $(or $(FUZZ_SECONDS),300)

train-default:  ## retrain the shipped default model from its corpus (~35 min on 2 cores; needs npm)
	$(PYTHON) -m mcpm.export.train_default_model --out export/default_model
