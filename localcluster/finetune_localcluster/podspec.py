"""Pure rules of the local pod runner: resource fit, env resolution, and the mount-path substitution contract.

Everything here works on plain dicts (the pod as the API returns it, camelCase keys) so it is easy to test.

**Path substitution contract.** A local process cannot mount volumes, so the runner gives every volume a
local folder and rewrites *paths it can see*: in a container's ``command``, ``args``, ``env`` values and
``workingDir``, every occurrence of a ``volumeMounts[].mountPath`` (as a whole path component, so ``/data``
matches ``/data`` and ``/data/x`` and ``--out=/data/x`` but not ``/database``) is replaced by that volume's
local folder (plus ``subPath``), and the ``terminationMessagePath`` (default ``/dev/termination-log``) by a
per-container local file. The longest mount path wins. Paths hidden inside files (a config file that
names ``/data``) are *not* rewritten; such a program can read ``FINETUNE_LOCAL_MOUNTS`` (JSON: mountPath ->
local path, plus the termination message path) or ``FINETUNE_LOCAL_ROOT`` (the pod's local folder).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes.utils.quantity import parse_quantity

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096
GPU = "nvidia.com/gpu"

Pod = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------------
# Resources and scheduling


def _add(total: dict[str, Decimal], resources: Mapping[str, Any] | None) -> None:
    for name, qty in (resources or {}).items():
        total[name] = total.get(name, Decimal(0)) + parse_quantity(qty)


def pod_requests(pod: Pod) -> dict[str, Decimal]:
    """Effective requests: the sum over containers, or the largest init container if that is larger.

    A container that only sets limits is treated as requesting its limits (the API server defaults
    requests from limits the same way).
    """
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        _add(total, {**(resources.get("limits") or {}), **(resources.get("requests") or {})})
    for init in spec.get("initContainers") or []:
        resources = init.get("resources") or {}
        single: dict[str, Decimal] = {}
        _add(single, {**(resources.get("limits") or {}), **(resources.get("requests") or {})})
        for name, qty in single.items():
            total[name] = max(total.get(name, Decimal(0)), qty)
    _add(total, spec.get("overhead"))
    return total


def fit_problems(
    pod: Pod,
    allocatable: Mapping[str, Any],
    used: Mapping[str, Decimal],
    node_labels: Mapping[str, str],
    pods_on_node: int,
) -> list[str]:
    """Why ``pod`` does not fit on the node (an empty list means it fits).

    Checks ``nodeSelector`` and every requested resource against allocatable minus ``used``; a resource
    the node does not have (e.g. ``nvidia.com/gpu`` on a node without GPUs) counts as zero.
    """
    spec = pod.get("spec") or {}
    problems: list[str] = []
    selector = spec.get("nodeSelector") or {}
    if any(node_labels.get(k) != v for k, v in selector.items()):
        problems.append("node(s) didn't match Pod's node affinity/selector")
    if "pods" in allocatable and pods_on_node + 1 > parse_quantity(allocatable["pods"]):
        problems.append("Too many pods")
    for name, qty in sorted(pod_requests(pod).items()):
        if qty <= 0:
            continue
        capacity = parse_quantity(allocatable[name]) if name in allocatable else Decimal(0)
        if used.get(name, Decimal(0)) + qty > capacity:
            problems.append(f"Insufficient {name}")
    return problems


def unschedulable_message(problems: Iterable[str]) -> str:
    """The scheduler's wording: ``0/1 nodes are available: 1 Insufficient nvidia.com/gpu.``"""
    reasons = ", ".join(f"1 {p}" for p in problems)
    return f"0/1 nodes are available: {reasons}."


# ---------------------------------------------------------------------------------------------------
# Volumes and paths


@dataclass
class MountMap:
    """mountPath (as the container sees it) -> local path, for one container."""

    mounts: dict[str, str] = field(default_factory=dict)

    def add(self, container_path: str, local_path: str | Path) -> None:
        self.mounts[container_path.rstrip("/") or "/"] = str(local_path)

    def _pattern(self) -> re.Pattern[str] | None:
        if not self.mounts:
            return None
        alternatives = "|".join(re.escape(p) for p in sorted(self.mounts, key=len, reverse=True))
        # A mount path counts only as a whole path: not preceded by a path character, and followed by
        # '/', the end, or a character that cannot continue a path component.
        return re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])")

    def substitute(self, text: str) -> str:
        """Replace each container mount path in ``text`` with its local folder (longest match first)."""
        pattern = self._pattern()
        if pattern is None:
            return text
        return pattern.sub(lambda m: self.mounts[m.group(1)], text)

    def resolve(self, container_path: str) -> str | None:
        """The local path for an absolute container path, if it lies under a mount."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            if container_path == mount or container_path.startswith(mount.rstrip("/") + "/"):
                return self.mounts[mount] + container_path[len(mount) :]
        return None

    def as_json(self) -> str:
        return json.dumps(self.mounts, sort_keys=True)


def volume_kind(volume: Mapping[str, Any]) -> str:
    """The volume's source type (``emptyDir``, ``configMap``, ``persistentVolumeClaim``, ...)."""
    kinds = [k for k in volume if k != "name"]
    return kinds[0] if kinds else "emptyDir"


def pvc_folder(runner_root: Path, namespace: str, claim: str) -> Path:
    """The stable local folder of a PersistentVolumeClaim: the same for every pod that uses it."""
    return runner_root / "pvc" / namespace / claim


def mount_map(
    container: Mapping[str, Any],
    volume_dirs: Mapping[str, Path],
    termination_file: Path,
) -> MountMap:
    """The path mapping of one container: its volumeMounts plus its termination message path."""
    mapping = MountMap()
    for mount in container.get("volumeMounts") or []:
        local = volume_dirs.get(mount["name"])
        if local is None:
            continue
        sub = mount.get("subPath") or ""
        mapping.add(mount["mountPath"], local / sub if sub else local)
    mapping.add(container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH, termination_file)
    return mapping


# ---------------------------------------------------------------------------------------------------
# Environment


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones kept, ``$$`` -> ``$``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(repl, text)


_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])"
    r"(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")


def image_reference_error(image: str) -> str | None:
    """The kubelet's InvalidImageName message for an image reference it cannot parse, else None.

    The runner runs no image, but refuses one a container runtime could never pull:
    [domain/]path[:tag][@digest] with lowercase path components (distribution's reference grammar)."""
    rest, _, digest = image.partition("@")
    slash, colon = rest.rfind("/"), rest.rfind(":")
    name, tag = (rest[:colon], rest[colon + 1 :]) if colon > slash else (rest, None)
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        domain, parts = parts[0], parts[1:]
        if not _DOMAIN.fullmatch(domain):
            parts = []
    valid = (
        bool(parts)
        and all(_COMPONENT.fullmatch(p) for p in parts)
        and (tag is None or bool(_TAG.fullmatch(tag)))
        and (not digest or bool(_DIGEST.fullmatch(digest)))
        and len(name) <= 255
    )
    if valid:
        return None
    return (
        f'Failed to apply default image tag "{image}": '
        f'couldn\'t parse image name "{image}": invalid reference format'
    )


class MissingReference(LookupError):
    """A ConfigMap/Secret (or key) the pod needs is missing; the container cannot start yet."""


def field_ref(pod: Pod, path: str, pod_ip: str, node_name: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise MissingReference(f"unsupported fieldRef {path!r}")


def resource_ref(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    resources = container.get("resources") or {}
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    value = (resources.get(kind) or {}).get(name)
    if value is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))  # rounded up, like the kubelet


def container_env(
    pod: Pod,
    container: Mapping[str, Any],
    *,
    base: Mapping[str, str],
    config_map: Callable[[str], Mapping[str, str] | None],
    secret: Callable[[str], Mapping[str, str] | None],
    pod_ip: str,
    node_name: str,
) -> dict[str, str]:
    """The container's environment: ``base``, then ``envFrom``, then ``env`` (later wins).

    ``config_map(name)``/``secret(name)`` return the object's data (decoded) or None if it does not exist.
    Missing non-optional references raise ``MissingReference``.
    """
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for key, getter in (("configMapRef", config_map), ("secretRef", secret)):
            if key not in source:
                continue
            ref = source[key]
            data = getter(ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                kind = "configmap" if key == "configMapRef" else "secret"  # the kubelet's words
                raise MissingReference(f'{kind} "{ref["name"]}" not found')
            env.update({prefix + k: v for k, v in data.items()})
    defined: dict[str, str] = {}
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            value = expand_vars(var.get("value") or "", {**env, **defined})
        else:
            source = var["valueFrom"]
            if "fieldRef" in source:
                value = field_ref(pod, source["fieldRef"]["fieldPath"], pod_ip, node_name)
            elif "resourceFieldRef" in source:
                value = resource_ref(container, source["resourceFieldRef"])
            else:
                key, getter = (
                    ("configMapKeyRef", config_map)
                    if "configMapKeyRef" in source
                    else ("secretKeyRef", secret)
                )
                ref = source[key]
                data = getter(ref["name"])
                kind = "configmap" if key == "configMapKeyRef" else "secret"
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    what = f'{kind} "{ref["name"]}"' if data is None else f'key "{ref["key"]}" in {kind}'
                    raise MissingReference(f"{what} not found")
                value = data[ref["key"]]
        defined[name] = value
    env.update(defined)
    return env


def read_termination_message(path: Path, policy: str | None, exit_code: int, log_path: Path | None) -> str:
    """The message the kubelet would report: the file (≤4096 bytes), else the log tail on error if asked."""
    message = ""
    try:
        with open(path, "rb") as fh:
            message = fh.read(MAX_TERMINATION_MESSAGE).decode("utf-8", "replace")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
    if not message and policy == "FallbackToLogsOnError" and exit_code != 0 and log_path is not None:
        try:
            data = log_path.read_bytes()
        except FileNotFoundError:
            data = b""
        lines = data.decode("utf-8", "replace").splitlines()[-80:]
        message = "\n".join(lines)[-2048:]
    return message
