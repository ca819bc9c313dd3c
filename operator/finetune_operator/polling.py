"""Live progress of running trainers: their Prometheus metrics, polled at most once per poll interval.

The series names are the contract's (`finetune_trainer.config.TRAINER_GAUGES`), which the trainer serves;
a sample is `{field: value}` (`step`, `total_steps`, `learning_rate`, `loss`, …), read by
`planning.status.progress_from_sample`.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from finetune_operator.children import ChildState
from finetune_trainer.config import TRAINER_GAUGES, trainer_series

log = logging.getLogger("finetune_operator")

SERIES = {trainer_series(field): field for field in TRAINER_GAUGES}
"""Series name -> sample field."""

Sample = dict[str, float]


def parse_trainer_metrics(text: str) -> Sample:
    """The trainer's progress gauges, by field name, from its Prometheus text exposition."""
    sample: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in SERIES:
                sample[SERIES[s.name]] = float(s.value)
    return sample


class TrainerPoller:
    """The latest sample of every running child, keyed by (namespace, Job). Thread-safe: reconciles of
    different resources poll from different worker threads."""

    def __init__(self, port: int, interval: float, timeout: float = 2.0) -> None:
        self.port, self.interval, self.timeout = port, interval, timeout
        self._samples: dict[tuple[str, str], tuple[float, Sample]] = {}
        self._lock = threading.Lock()

    def poll(self, namespace: str, children: Mapping[str, ChildState]) -> dict[str, Sample]:
        """Latest samples of `children` by Job name: a running child's pod is asked at most once per
        interval (a failed poll keeps the last sample); finished children are forgotten."""
        now = time.monotonic()
        for child in children.values():
            key = (namespace, child.name)
            if child.phase != "Running" or not child.pod_ip:
                if child.phase in ("Succeeded", "Failed"):
                    with self._lock:
                        self._samples.pop(key, None)
                continue
            with self._lock:
                polled_at, last = self._samples.get(key, (0.0, {}))
            if now - polled_at < self.interval * 0.9:
                continue
            sample = self._fetch(child.pod_ip) or last
            with self._lock:
                self._samples[key] = (now, sample)
        with self._lock:
            return {
                name: self._samples[(namespace, name)][1]
                for name in children
                if (namespace, name) in self._samples
            }

    def forget(self, namespace: str, jobs: list[str]) -> None:
        with self._lock:
            for job in jobs:
                self._samples.pop((namespace, job), None)

    def _fetch(self, pod_ip: str) -> Sample | None:
        url = f"http://{pod_ip}:{self.port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return parse_trainer_metrics(response.read().decode())
        except (OSError, ValueError) as e:
            log.debug("polling %s failed: %s", url, e)
            return None
