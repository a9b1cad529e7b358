# prefect-raypool: the commands the README documents.
#   make up     local Kubernetes (built from source) + KubeRay, left running
#   make down   stop what `make up` started
#   make test   everything: set-up, lint, type checks and the whole test suite
#   make bench  side-by-side benchmarks with ratios

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# Where `make up` keeps its state (kubeconfig, logs, processes); `make demo`/`down` read it.
DEV_STATE ?= .dev

# Deterministic runs: no usage reporting, no prompts.
export RAY_USAGE_STATS_ENABLED := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: all venv binaries images lint test test-unit up down demo bench clean

all: test

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing prefect-raypool[dev,operator]"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,operator]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

binaries: venv
	@echo "==> Kubernetes test-bed binaries (cached in ~/.cache/prefect-raypool; a cold build takes many minutes)"
	$(PY) -m testbed binaries

images: binaries
	@echo "==> the images pools and the operator run, and what a real node needs (cached by content)"
	$(PY) -m testbed images

lint: venv
	@echo "==> ruff and mypy"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest -m unit -q $(PYTEST_ARGS)

test: images lint
	@echo "==> the whole test suite (starts and stops its own control plane, Prefect server and Ray)"
	tests/isolated.sh $(VENV)/bin/pytest -ra --durations=25 $(PYTEST_ARGS)

up: images
	$(PY) -m testbed up --state-dir $(DEV_STATE)

demo: venv
	$(PY) -m testbed demo --state-dir $(DEV_STATE)

down:
	@if [ -x $(PY) ]; then $(PY) -m testbed down --state-dir $(DEV_STATE); else echo "nothing to stop"; fi

bench: images
	@echo "==> prefect-ray 0.6.0, a bench-only dependency (never a dependency of the project)"
	$(PY) -m pip install -q --no-deps prefect-ray==0.6.0
	@echo "==> task runners side by side: ours, prefect-ray, Prefect's thread pool, raw Ray"
	tests/isolated.sh $(PY) -m bench.runner_bench
	@echo "==> operator latency beside KubeRay's own, 1 and 100 pools"
	tests/isolated.sh $(PY) -m bench.operator_latency --counts 1,100
	@echo "==> operator failover: two replicas, the leader SIGKILLed or SIGTERMed (chart timings)"
	tests/isolated.sh $(PY) -m bench.operator_failover --rounds 3
	@echo "==> operator under load: 500 pools in 20 namespaces, 5,000 unrelated Deployments"
	tests/isolated.sh $(PY) -m bench.operator_load --pools 500 --namespaces 20 --unrelated 5000 --compare-unfiltered --timeout 600 --steady 60
	@echo "==> Ephemeral pools: flow run scheduled to its RayJob created (kuberay worker)"
	tests/isolated.sh $(PY) -m bench.kuberay_latency --runs 10 --poll 1
	@echo "==> Ephemeral pools on a real node: scheduled to first task running, beside a warm pool"
	tests/isolated.sh $(PY) -m bench.ephemeral_real --runs 3 --count 4

clean: down
	rm -rf .dev $(VENV)
