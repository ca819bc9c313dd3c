"""`kubectl finetune wait`: block until a resource reaches a phase (or a condition), for scripts and CI.
Exit 0 when it does, `FAILED` when it Failed instead, `TIMEOUT` when time ran out (see `errors`)."""

from __future__ import annotations

import re
import time
import typing
from typing import Any

from finetune_operator.api import Phase, phases
from finetune_operator.kubectl.cluster import Cluster
from finetune_operator.kubectl.errors import ExitCode, PluginError
from finetune_operator.kubectl.resources import Found, status_of

PHASES: tuple[str, ...] = typing.get_args(Phase)
UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """`30s`, `5m`, `1h30m` or plain seconds (kubectl's --timeout)."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise PluginError(ExitCode.USAGE, f"--timeout {text}: use a duration such as 30s, 5m or 1h")
    return sum(float(n) * UNITS[u] for n, u in parts)


def parse_for(text: str) -> tuple[str, str]:
    """('phase', P) for `--for=P` / `--for=phase=P`, ('condition', T) for `--for=condition=T`."""
    key, _, value = text.partition("=")
    if not value:
        key, value = "phase", text
    if key == "phase" and value in PHASES:
        return key, value
    if key == "condition" and value:
        return key, value
    raise PluginError(
        ExitCode.USAGE,
        f"--for={text}: use a phase ({', '.join(PHASES)}) or condition=TYPE (e.g. condition=Ready)",
    )


def check_phase(found: Found, target: tuple[str, str]) -> None:
    """A usage error, not a wait that times out, when `--for` names a phase that the resource's kind never
    takes (an LRSweep never waits for a sweep: `Sweeping` and `WaitingForSweep` are a FineTuneJob's)."""
    key, value = target
    allowed = phases(found.kind.status)
    if key == "phase" and value not in allowed:
        raise PluginError(
            ExitCode.USAGE,
            f"--for={value}: {found.ref} is a {found.kind.kind}, which never takes that phase; use one of "
            f"{', '.join(allowed)} or condition=TYPE",
        )


def reached(body: dict[str, Any], found: Found, target: tuple[str, str]) -> bool:
    status = status_of(found.kind, body)
    key, value = target
    if key == "phase":
        return status.phase == value
    return any(c.type == value and c.status == "True" for c in status.conditions)


def wait(cluster: Cluster, found: Found, target: tuple[str, str], timeout: float) -> tuple[ExitCode, str]:
    """(exit code, what happened)."""
    deadline = time.monotonic() + timeout
    body = found.body
    while True:
        status = status_of(found.kind, body)
        if reached(body, found, target):
            return ExitCode.OK, f"{found.ref} {target[0]} {target[1]}"
        if status.phase == "Failed":
            return ExitCode.FAILED, f"{found.ref} Failed: {status.message or '-'}"
        left = deadline - time.monotonic()
        if left <= 0:
            return (
                ExitCode.TIMEOUT,
                f"timed out after {timeout:g}s waiting for {found.ref} {target[0]} {target[1]} "
                f"(phase {status.phase}); raise --timeout",
            )
        changed = None
        for changed in cluster.watch_one(found.kind, found.name, found.namespace, left):
            if changed["metadata"].get("resourceVersion") != body["metadata"].get("resourceVersion"):
                break
        if changed is None:
            continue
        body = changed
