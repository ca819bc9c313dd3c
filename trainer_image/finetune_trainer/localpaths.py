"""Paths inside the config that this process sees elsewhere.

A runner that executes a container's command as a local process (the project's local pod runner) cannot
mount volumes: it gives each mount a local folder and says so in ``FINETUNE_LOCAL_MOUNTS`` (JSON: the
container's mount path -> the local folder). Paths in command-line arguments are rewritten by the runner;
paths inside the config file (``model.name``, ``dataset.files``, ...) are mapped here. In a real pod the
variable is unset and nothing changes; a path that exists as it is is never mapped (a host folder the
runner's process can read directly, e.g. under ``/tmp``, which is also a pod mount).
"""

from __future__ import annotations

import json
import os

from finetune_trainer.config import TrainerConfig

ENV = "FINETUNE_LOCAL_MOUNTS"


def mounts_from_env() -> dict[str, str]:
    """Container mount path -> local folder from ``FINETUNE_LOCAL_MOUNTS`` (empty: unset or unreadable)."""
    try:
        data = json.loads(os.environ.get(ENV) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def local_path(path: str, mounts: dict[str, str]) -> str:
    """``path`` with the longest mount path it lies under replaced by that mount's local folder."""
    for mount in sorted(mounts, key=len, reverse=True):
        root = mount.rstrip("/") or "/"
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return mounts[mount] + path[len(root) :]
    return path


def map_config_paths(cfg: TrainerConfig, mounts: dict[str, str] | None = None) -> TrainerConfig:
    """The config with its model and data paths mapped to local folders (unchanged without mounts)."""
    mounts = mounts_from_env() if mounts is None else mounts
    if not mounts:
        return cfg

    def one(p: str | None) -> str | None:
        return local_path(p, mounts) if p and p.startswith("/") and not os.path.exists(p) else p

    def many(ps: list[str] | None) -> list[str] | None:
        return [one(p) or p for p in ps] if ps is not None else None

    dataset = cfg.dataset.model_copy(
        update={
            "name": one(cfg.dataset.name),
            "files": many(cfg.dataset.files),
            "validation_files": many(cfg.dataset.validation_files),
        }
    )
    model = cfg.model.model_copy(update={"name": one(cfg.model.name)})
    return cfg.model_copy(update={"model": model, "dataset": dataset})
