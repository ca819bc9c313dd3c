"""PersistentVolumeClaims for the runner's node: which claims a pod may use, and a local provisioner.

Like the scheduler's VolumeBinding plugin, a pod binds only when every claim it names exists and is Bound;
otherwise it stays Pending with ``PodScheduled=False/Unschedulable`` and the scheduler's words
(``persistentvolumeclaim "x" not found``, ``pod has unbound immediate PersistentVolumeClaims``).

Claims of the runner's StorageClass (``local-runner``, the cluster default, so a claim without a class gets
it) are provisioned: the runner creates a PersistentVolume pre-bound to the claim (``hostPath`` = the
claim's local folder, see ``podspec.pvc_folder``) and kube-controller-manager's volume binder binds them.
A claim of any other class stays Pending, as it would on a cluster without that class's provisioner.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from . import podspec

log = logging.getLogger(__name__)

STORAGE_CLASS = "local-runner"
PROVISIONER = "finetune.dev/local-runner"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"

Claims = dict[tuple[str, str], dict[str, Any]]  # (namespace, name) -> the PVC


def claim_problems(pod: dict[str, Any], claims: Claims) -> list[str]:
    """The scheduler's reasons a pod's claims keep it off every node (empty: all exist and are Bound)."""
    namespace = pod["metadata"]["namespace"]
    problems: list[str] = []
    unbound = False
    for volume in pod["spec"].get("volumes") or []:
        source = volume.get("persistentVolumeClaim")
        if source is None:
            continue
        claim = claims.get((namespace, source["claimName"]))
        if claim is None:
            problems.append(f'persistentvolumeclaim "{source["claimName"]}" not found')
        elif (claim.get("status") or {}).get("phase") != "Bound":
            unbound = True
    if unbound:
        problems.append("pod has unbound immediate PersistentVolumeClaims")
    return problems


def claims_message(problems: list[str]) -> str:
    """As kube-scheduler words a PreFilter failure: ``0/1 nodes are available: <reason>.``"""
    return f"0/1 nodes are available: {', '.join(problems)}."


class Provisioner:
    """Registers the ``local-runner`` StorageClass and pre-binds a PersistentVolume to each of its claims."""

    def __init__(self, api_client: client.ApiClient, root: Path) -> None:
        self.core = client.CoreV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.root = root
        self._provisioned: set[str] = set()  # claim uids

    def register(self) -> None:
        """Create the StorageClass (the cluster's default) unless it exists."""
        body = {
            "metadata": {"name": STORAGE_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Retain",
            "volumeBindingMode": "Immediate",
        }
        try:
            self.storage.create_storage_class(body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def list_claims(self) -> Claims:
        resp = self.core.list_persistent_volume_claim_for_all_namespaces(
            _preload_content=False, _request_timeout=30
        )
        items = json.loads(resp.data)["items"]
        return {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in items}

    def provision(self, claims: Claims) -> None:
        """A PersistentVolume pre-bound to each pending claim of the runner's class."""
        for (namespace, name), claim in claims.items():
            meta, spec = claim["metadata"], claim["spec"]
            pending = (claim.get("status") or {}).get("phase", "Pending") == "Pending"
            if (
                not pending
                or spec.get("storageClassName") != STORAGE_CLASS
                or spec.get("volumeName")
                or meta["uid"] in self._provisioned
            ):
                continue
            folder = podspec.pvc_folder(self.root, namespace, name)
            folder.mkdir(parents=True, exist_ok=True)
            size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            volume = {
                "metadata": {"name": f"pvc-{meta['uid']}"},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "storageClassName": STORAGE_CLASS,
                    "persistentVolumeReclaimPolicy": "Retain",
                    "volumeMode": spec.get("volumeMode") or "Filesystem",
                    "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": namespace,
                        "name": name,
                        "uid": meta["uid"],
                    },
                },
            }
            with contextlib.suppress(ApiException):
                self.core.create_persistent_volume(volume)
            self._provisioned.add(meta["uid"])
            log.info("provisioned %s for claim %s/%s", volume["metadata"]["name"], namespace, name)
