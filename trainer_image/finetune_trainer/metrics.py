"""Prometheus metrics of one trainer process: what the operator polls for live progress.

Gauges on a private ``CollectorRegistry`` (no process/platform collectors, nothing global), served on
``--metrics-address`` (default: env ``POD_IP``, else ``0.0.0.0``) and ``--metrics-port`` (default
``TRAINER_METRICS_PORT``; 0 turns the server off). The series names, the phases and the port are the
contract's (``finetune_trainer.config``), which the operator reads too; only the help texts live here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server

from finetune_trainer.config import (
    TRAINER_GAUGES,
    TRAINER_METRICS_PORT,
    TRAINER_PHASE_GAUGE,
    TRAINER_PHASES,
    trainer_series,
)
from finetune_trainer.exitcodes import ConfigError

DEFAULT_PORT = TRAINER_METRICS_PORT
PHASES = TRAINER_PHASES

HELP = {
    "step": "Optimizer steps completed.",
    "total_steps": "Optimizer steps planned for this run.",
    "learning_rate": "Learning rate of the latest optimizer step.",
    "loss": "Training loss of the latest logged step.",
    "smoothed_loss": "Bias-corrected EMA of the training (range test) loss.",
    "eval_loss": "Latest validation loss.",
    "eval_step": "Optimizer step of the latest validation loss.",
    "samples_per_second": "Training examples processed per second.",
    "tokens_per_second": "Training tokens processed per second (causal LM).",
    "epoch": "Epochs completed (fractional).",
}
"""Help text of each gauge in ``TRAINER_GAUGES`` (a gauge without one fails at start-up)."""


def default_address() -> str:
    """The bind address: ``POD_IP`` when the pod sets it (downward API), else every interface."""
    return os.environ.get("POD_IP") or "0.0.0.0"


@dataclass
class TrainerMetrics:
    """The trainer's gauges by field name. ``command`` labels every series (``range-test``, ``train``,
    ``trial``)."""

    registry: CollectorRegistry
    gauges: dict[str, Gauge]
    phase: Gauge
    command: str
    server: Any = field(default=None)

    @classmethod
    def create(cls, command: str) -> TrainerMetrics:
        registry = CollectorRegistry(auto_describe=True)
        gauges = {
            name: Gauge(trainer_series(name), HELP[name], ("command",), registry=registry)
            for name in TRAINER_GAUGES
        }
        phase = Gauge(
            trainer_series(TRAINER_PHASE_GAUGE),
            "1 for the trainer's current phase, 0 for the others.",
            ("command", "phase"),
            registry=registry,
        )
        return cls(registry=registry, gauges=gauges, phase=phase, command=command)

    def serve(self, port: int = DEFAULT_PORT, address: str | None = None) -> None:
        """Start the HTTP server in a daemon thread (``port`` 0: no server)."""
        if not port:
            return
        addr = address or default_address()
        try:
            self.server = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                "--metrics-port",
                f"cannot listen on {addr}:{port} ({exc.strerror or exc})",
                "choose a free port, or 0 to turn metrics off",
            ) from exc

    def stop(self) -> None:
        if self.server is not None:
            server, _thread = self.server
            server.shutdown()
            self.server = None

    def set(self, **values: float | None) -> None:
        """Set gauges by field name (``None`` values are skipped)."""
        for name, value in values.items():
            if value is not None:
                self.gauges[name].labels(self.command).set(float(value))

    def set_phase(self, phase: str) -> None:
        for p in PHASES:
            self.phase.labels(self.command, p).set(1.0 if p == phase else 0.0)

    def exposition(self) -> bytes:
        """The text exposition (what a scrape returns)."""
        return generate_latest(self.registry)
