"""Shared fixtures: the local Kubernetes control plane + pod runner (see docs/localcluster.md)."""

pytest_plugins = ["finetune_localcluster.pytest_plugin"]
