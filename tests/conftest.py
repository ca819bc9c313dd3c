"""Shared fixtures: the local Kubernetes control plane + pod runner (see docs/localcluster.md)."""

import os

# Reconcile unfinished resources every second (default 5 s): kopf fixes timer intervals when the handlers
# module is imported, which happens after this file is loaded.
os.environ.setdefault("FINETUNE_RECONCILE_INTERVAL", "1")

pytest_plugins = ["finetune_operator.localcluster.pytest_plugin"]
