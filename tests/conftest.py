"""Shared fixtures: the local Kubernetes control plane + pod runner (see docs/localcluster.md)."""

pytest_plugins = ["finetune_operator.localcluster.pytest_plugin"]
