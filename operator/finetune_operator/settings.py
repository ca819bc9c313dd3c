"""Operator settings: command-line flags, each defaulting to a `FINETUNE_*` environment variable."""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api import DNS_LABEL
from finetune_trainer.config import TRAINER_METRICS_PORT

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-dev/finetune-trainer:0.1.0"


@dataclass(frozen=True)
class Settings:
    """What the operator needs to know beyond the resources themselves."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Default trainer image (a resource's `spec.image` overrides it)."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of trainer containers."""
    default_cpu: str = "4"
    """CPU request/limit of trainer pods whose spec sets none."""
    default_memory: str = "16Gi"
    """Memory request/limit of trainer pods whose spec sets none."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Node selector added to every trainer pod that asks for GPUs (merged under the resource's own); CPU-only
    pods (`resources.gpus: 0`) get the resource's own only."""
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    """Tolerations added to every trainer pod that asks for GPUs."""
    default_queue_name: str | None = None
    """Kueue LocalQueue of trainer Jobs whose resource names none (`spec.queueName`); None: not queued."""
    poll_interval: float = 10.0
    """Seconds between polls of a running trainer's metrics."""
    resync_interval: float = 300.0
    """Seconds after which an unfinished resource is reconciled even if nothing changed (a safety net)."""
    pod_start_deadline: float = 600.0
    """Seconds a trainer pod may stay unable to start (CreateContainerConfigError, an image pull error, a
    missing or unbound PVC) before its resource fails with the pod's reason."""
    workers: int = 8
    """Concurrent reconciles (each a thread making blocking API calls)."""
    metrics_port: int = 9090
    """Port of the operator's own /metrics (0 disables it)."""
    health_port: int = 8081
    """Port of the operator's /healthz liveness endpoint (0 disables it)."""
    trainer_metrics_port: int = TRAINER_METRICS_PORT
    """Port trainer pods serve their metrics on (the contract's, unless an image serves another)."""
    bind_address: str = "0.0.0.0"
    """Address the metrics and health endpoints listen on (the pod IP in a cluster)."""
    trainer_command: tuple[str, ...] = ("finetune-trainer",)
    """Command that starts the trainer inside the trainer image."""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FINETUNE_{name}", default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune-operator", description="Run the finetune.dev operator.")
    d = Settings()
    p.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        help="namespace to watch (repeatable); default: all (env FINETUNE_NAMESPACES, comma-separated)",
    )
    p.add_argument("--trainer-image", default=_env("TRAINER_IMAGE", d.trainer_image))
    p.add_argument(
        "--image-pull-policy",
        default=_env("IMAGE_PULL_POLICY", d.image_pull_policy),
        choices=["Always", "IfNotPresent", "Never"],
    )
    p.add_argument("--default-cpu", default=_env("DEFAULT_CPU", d.default_cpu))
    p.add_argument("--default-memory", default=_env("DEFAULT_MEMORY", d.default_memory))
    p.add_argument("--node-selector", default=_env("NODE_SELECTOR", "{}"), help="JSON object")
    p.add_argument("--tolerations", default=_env("TOLERATIONS", "[]"), help="JSON list")
    p.add_argument(
        "--default-queue-name",
        default=_env("DEFAULT_QUEUE_NAME", ""),
        help="Kueue LocalQueue of trainer Jobs whose resource sets no spec.queueName (default: none)",
    )
    p.add_argument("--poll-interval", type=float, default=float(_env("POLL_INTERVAL", str(d.poll_interval))))
    p.add_argument(
        "--resync-interval",
        type=float,
        default=float(_env("RESYNC_INTERVAL", str(d.resync_interval))),
        help="seconds before an unchanged, unfinished resource is reconciled again",
    )
    p.add_argument(
        "--pod-start-deadline",
        type=float,
        default=float(_env("POD_START_DEADLINE", str(d.pod_start_deadline))),
        help="seconds a trainer pod may stay unable to start before its resource fails",
    )
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", str(d.workers))))
    p.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", str(d.metrics_port))))
    p.add_argument("--health-port", type=int, default=int(_env("HEALTH_PORT", str(d.health_port))))
    p.add_argument(
        "--trainer-metrics-port",
        type=int,
        default=int(_env("TRAINER_METRICS_PORT", str(d.trainer_metrics_port))),
    )
    p.add_argument(
        "--bind-address",
        default=os.environ.get("POD_IP") or d.bind_address,
        help="address of the metrics and health endpoints (default: $POD_IP, else 0.0.0.0)",
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; a bad JSON value is a usage error naming the flag."""
    namespaces = args.namespaces or [n for n in _env("NAMESPACES", "").split(",") if n.strip()]
    parsed: dict[str, Any] = {}
    for flag, raw, kind in (
        ("--node-selector", args.node_selector, dict),
        ("--tolerations", args.tolerations, list),
    ):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{flag}: not valid JSON ({e}); expected a JSON {kind.__name__}") from e
        if not isinstance(value, kind):
            raise SystemExit(f"{flag}: expected a JSON {kind.__name__}, got {type(value).__name__}")
        parsed[flag] = value
    if args.poll_interval <= 0:
        raise SystemExit("--poll-interval: must be a positive number of seconds")
    if args.resync_interval <= 0:
        raise SystemExit("--resync-interval: must be a positive number of seconds")
    if args.pod_start_deadline <= 0:
        raise SystemExit("--pod-start-deadline: must be a positive number of seconds")
    if args.workers < 1:
        raise SystemExit("--workers: must be at least 1")
    queue = args.default_queue_name.strip() or None
    if queue is not None and not re.fullmatch(DNS_LABEL, queue):
        raise SystemExit(
            f"--default-queue-name: {queue!r} is not a LocalQueue name (a DNS label: at most 63 of a-z 0-9 "
            "and -, alphanumeric at both ends)"
        )
    return Settings(
        namespaces=tuple(n.strip() for n in namespaces),
        trainer_image=args.trainer_image,
        image_pull_policy=args.image_pull_policy,
        default_cpu=args.default_cpu,
        default_memory=args.default_memory,
        node_selector=parsed["--node-selector"],
        tolerations=parsed["--tolerations"],
        default_queue_name=queue,
        poll_interval=args.poll_interval,
        resync_interval=args.resync_interval,
        pod_start_deadline=args.pod_start_deadline,
        workers=args.workers,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        trainer_metrics_port=args.trainer_metrics_port,
        bind_address=args.bind_address,
    )
