# One entry point for developers and CI. Every target creates/refreshes the environment first
# (scripts/ensure-env: a cached venv outside the clone, keyed by pyproject.toml).
SHELL := /bin/bash
VENV := $(shell scripts/ensure-env)
ifeq ($(VENV),)
$(error scripts/ensure-env failed: see the messages above)
endif
PY := $(VENV)/bin/python

.PHONY: test lint unit demo crds cluster-bins

## test: lint, generated-file drift, layering, then every test (unit, integration on a real API server, e2e)
test: lint
	$(PY) -m finetune_localcluster install
	$(PY) -m pytest -q

## lint: ruff, import layering, generated files up to date
lint:
	$(VENV)/bin/ruff check .
	cd $(CURDIR) && $(VENV)/bin/lint-imports
	$(PY) -m finetune_tooling.crdgen --check

## unit: the fast layer only
unit:
	$(PY) -m pytest -q tests/unit

## demo: local control plane + pod runner + operator; applies an LRSweep and an auto FineTuneJob on a tiny model
##       (KEEP=1: keep the cluster up at the end to try the `kubectl finetune` commands it prints)
demo:
	$(PY) -m finetune_tooling.demo $(if $(KEEP),--keep)

## crds: regenerate crds/, the chart's copy and docs/api.md from the pydantic models
crds:
	$(PY) -m finetune_tooling.crdgen

## cluster-bins: build (once) and cache kube-apiserver, kube-controller-manager, etcd, kubectl, helm, Kueue
cluster-bins:
	$(PY) -m finetune_localcluster install
