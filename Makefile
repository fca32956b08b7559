# image-cloner: every target does its own set-up, so `make demo` and `make test`
# work on a fresh machine. Built things live in git-ignored folders:
#   .tools/    the pinned uv used to build the virtualenv
#   .venv/     the project's virtualenv (from uv.lock)
#   .stamps/   markers for one-off system set-up (Debian packages)
#   .testbed/  Go-built test bed binaries (control plane, registries, witnesses), kubeconfig,
#              logs, state

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
UV := .tools/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
DEBS := docker-registry skopeo apache2-utils openssl ca-certificates

.PHONY: help setup debs venv lock lint unit integration e2e test demo demo-keep demo-down bench bench-scale \
        testbed cluster-up cluster-down clean

help:
	@echo "make demo          the controller end to end on local registries and the test bed"
	@echo "make demo-keep     the same, left running to explore (make demo-down stops it)"
	@echo "make test          lint + unit + integration + e2e tests (does all set-up)"
	@echo "make bench         copy benchmarks side by side with skopeo, crane and regctl"
	@echo "make bench-scale   the controller on 1000 Deployments of the test bed (SCALE_ARGS=...)"
	@echo "make cluster-up    start the local Kubernetes test bed (.testbed/kubeconfig)"
	@echo "make cluster-down  stop it and remove its state"

# --- set-up -----------------------------------------------------------------

.stamps/debs: Makefile
	@mkdir -p .stamps
	@if ! dpkg -s $(DEBS) >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(DEBS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; \
	fi
	@touch $@

$(UV):
	python3 -m venv .tools/uv
	.tools/uv/bin/pip install -q uv==$(UV_VERSION)

# --locked: a uv.lock that no longer matches pyproject.toml is an error, never silently redone.
# --compile-bytecode: the libraries as pip and the container image install them, so that no
# run compiles them from source again (PYTHONDONTWRITEBYTECODE, set on some CI machines,
# would otherwise make every `image-cloner` process do it: ~0.1 s of CPU each).
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --quiet --compile-bytecode
	@touch $@

debs: .stamps/debs
venv: $(VENV)/.synced
setup: debs venv

lock: | $(UV)
	$(UV) lock

# --- Kubernetes test bed (issue: testbed) ------------------------------------

testbed:
	testbed/build.sh

cluster-up: venv testbed
	testbed/cluster.sh up

cluster-down:
	testbed/cluster.sh down

# --- checks -----------------------------------------------------------------

lint: venv
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv testbed
	$(VENV)/bin/pytest -q tests/unit

# The registry compatibility tests run distribution 3, ggcr, crane and regctl from the test bed.
integration: setup testbed
	$(VENV)/bin/pytest -q tests/integration

e2e: setup testbed
	$(VENV)/bin/pytest -q tests/e2e

test: setup testbed lint
	$(VENV)/bin/pytest -q tests

# --- the product, shown ------------------------------------------------------

demo: setup testbed
	scripts/demo.sh

demo-keep: setup testbed
	scripts/demo.sh --keep

demo-down: venv
	scripts/demo.sh --down

bench: setup testbed
	$(PY) bench/copy_bench.py

# e.g. make bench-scale SCALE_ARGS="--workloads 3000 --idle 600 --json scale.json"
SCALE_ARGS ?=
bench-scale: setup testbed
	$(PY) bench/scale_bench.py $(SCALE_ARGS)

clean:
	rm -rf .venv .tools .stamps .testbed .mypy_cache .ruff_cache .pytest_cache
