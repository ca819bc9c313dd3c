"""The default scheduler for the runner's one node: which pending pods bind to it.

A pod with no ``nodeName`` and the default scheduler binds when its requests fit the node's allocatable
minus what its running pods request, and its ``nodeSelector`` matches (``podspec.fit_problems``); the
others get ``PodScheduled=False/Unschedulable`` with the scheduler's message, once per distinct message. A
pod whose PersistentVolumeClaims are missing or unbound never binds (``podvolumes.claim_problems``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import podspec
from .podnode import RunnerConfig
from .podstatus import SMP, TERMINAL, unschedulable_status
from .podvolumes import Claims, claim_problems, claims_message

log = logging.getLogger(__name__)


class Scheduler:
    """Binds the pods that fit; ``on_bound`` is called after each binding (the runner starts it sooner)."""

    def __init__(self, core: client.CoreV1Api, config: RunnerConfig, on_bound: Callable[[], None]) -> None:
        self.core = core
        self.config = config
        self._on_bound = on_bound
        self._reported: dict[str, str] = {}  # pod uid -> the unschedulable message last written
        self._claims: Claims = {}

    def schedule(
        self, pods: list[dict[str, Any]], mine: list[dict[str, Any]], claims: Claims | None = None
    ) -> None:
        """Bind unbound ``pods`` in order while they fit beside the node's unfinished pods (``mine``) and
        their ``claims`` (namespace, name -> PVC) exist and are Bound."""
        self._claims = claims or {}
        used: dict[str, Any] = {}
        active = 0
        for pod in mine:
            if pod.get("status", {}).get("phase") not in TERMINAL:
                active += 1
                for name, qty in podspec.pod_requests(pod).items():
                    used[name] = used.get(name, 0) + qty
        for pod in pods:
            if not pod["spec"].get("nodeName") and self._bind_if_fits(pod, used, active):
                active += 1
                for name, qty in podspec.pod_requests(pod).items():
                    used[name] = used.get(name, 0) + qty

    def _bind_if_fits(self, pod: dict[str, Any], used: dict[str, Any], active: int) -> bool:
        meta, spec = pod["metadata"], pod["spec"]
        if (
            meta.get("deletionTimestamp")
            or spec.get("schedulerName", "default-scheduler") != "default-scheduler"
        ):
            return False
        claim_issues = claim_problems(pod, self._claims)
        problems = podspec.fit_problems(pod, self.config.capacity(), used, self.config.node_labels(), active)
        uid = meta["uid"]
        if claim_issues or problems:
            message = (
                claims_message(claim_issues) if claim_issues else podspec.unschedulable_message(problems)
            )
            if self._reported.get(uid) != message:
                self._reported[uid] = message
                with contextlib.suppress(ApiException):
                    self.core.patch_namespaced_pod_status(
                        meta["name"],
                        meta["namespace"],
                        {"status": unschedulable_status(message)},
                        _content_type=SMP,
                    )
                log.info("pod %s/%s unschedulable: %s", meta["namespace"], meta["name"], message)
            return False
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
        }
        try:
            self.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], binding, _preload_content=False
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        self._reported.pop(uid, None)
        log.info("bound pod %s/%s to %s", meta["namespace"], meta["name"], self.config.node_name)
        self._on_bound()
        return True
