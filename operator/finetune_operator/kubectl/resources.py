"""Which resource a NAME on the command line means: `NAME`, `lrs/NAME`, `lrsweep/NAME`,
`finetunejobs.finetune.dev/NAME`, … and its status read through the operator's own models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator.api import API_GROUP, FINETUNEJOB, KINDS, LRSWEEP, KindInfo, ResourceStatus
from finetune_operator.kubectl.cluster import Cluster
from finetune_operator.kubectl.errors import ExitCode, PluginError
from finetune_operator.planning.status import parse_status

ALIASES: dict[str, KindInfo] = {
    alias: k
    for k in KINDS
    for alias in (
        k.kind.lower(),
        k.singular,
        k.plural,
        k.short,
        f"{k.plural}.{API_GROUP}",
        f"{k.singular}.{API_GROUP}",
    )
}


@dataclass(frozen=True)
class Found:
    """An LRSweep or FineTuneJob as read from the API server."""

    kind: KindInfo
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "")

    @property
    def ref(self) -> str:
        """`lrs/NAME` or `ftj/NAME`."""
        return f"{self.kind.short}/{self.name}"

    @property
    def status(self) -> Any:
        """The typed status (`LRSweepStatus` or `FineTuneJobStatus`), as the operator reads it."""
        return status_of(self.kind, self.body)


def status_of(kind: KindInfo, body: dict[str, Any]) -> ResourceStatus:
    return parse_status(kind.status, body.get("status"))  # type: ignore[type-var]


def parse_ref(text: str) -> tuple[KindInfo | None, str]:
    """(kind, name) of `KIND/NAME`, or (None, name) of a bare name."""
    if "/" not in text:
        return None, text
    kind, _, name = text.partition("/")
    info = ALIASES.get(kind.lower())
    if info is None or not name:
        raise PluginError(
            ExitCode.WRONG_KIND,
            f"{text}: kubectl finetune works on LRSweeps (lrs/NAME) and FineTuneJobs (ftj/NAME), not {kind}",
        )
    return info, name


def find(cluster: Cluster, text: str, kinds: tuple[KindInfo, ...] = KINDS) -> Found:
    """The one resource `text` names among `kinds`, with an error naming the fix otherwise."""
    kind, name = parse_ref(text)
    wanted = " or ".join(k.kind for k in kinds)
    if kind is not None and kind not in kinds:
        raise PluginError(ExitCode.WRONG_KIND, f"{text} is a {kind.kind}; this command takes a {wanted}")
    candidates = (kind,) if kind is not None else KINDS
    found = [Found(k, body) for k in candidates if (body := cluster.get(k, name)) is not None]
    if not found:
        raise PluginError(
            ExitCode.NOT_FOUND,
            f"{wanted} {name} not found in namespace {cluster.namespace} (context {cluster.context}): "
            "`kubectl finetune get` lists them; -n/--namespace picks another namespace",
        )
    if len(found) > 1:
        both = " and ".join(f.ref for f in found)
        raise PluginError(ExitCode.WRONG_KIND, f"{name} names both {both}: say which, e.g. {found[0].ref}")
    if found[0].kind not in kinds:
        other = found[0]
        hint = ""
        if other.kind is FINETUNEJOB and LRSWEEP in kinds and other.status.sweep_name:
            hint = f" (its learning rate came from lrs/{other.status.sweep_name})"
        raise PluginError(
            ExitCode.WRONG_KIND, f"{name} is a {other.kind.kind}{hint}; this command takes a {wanted}"
        )
    return found[0]
