"""What can go wrong in `kubectl finetune`, as an exit code each and a message that names the fix.

| code | meaning                                                                   |
|------|---------------------------------------------------------------------------|
| 0    | done (`wait`: the condition was met)                                      |
| 1    | any other error (API server unreachable, a 5xx, bad kubeconfig, …)         |
| 2    | usage: a flag or argument is wrong                                        |
| 3    | not found: no such LRSweep/FineTuneJob (or trial, or pod) in the namespace |
| 4    | wrong kind: the name is not an LRSweep/FineTuneJob, or is both            |
| 5    | the CRDs are not installed (the API group `finetune.dev` is unknown)       |
| 6    | no access: the API server answered 403 Forbidden                          |
| 7    | `wait` timed out                                                          |
| 8    | `wait`: the resource Failed                                               |
| 9    | a Python extra is missing (`plot` needs matplotlib)                       |
"""

from __future__ import annotations

import enum
import json

from kubernetes.client import ApiException

from finetune_trainer.config import API_GROUP


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    WRONG_KIND = 4
    CRDS_MISSING = 5
    FORBIDDEN = 6
    TIMEOUT = 7
    FAILED = 8
    MISSING_EXTRA = 9


class PluginError(Exception):
    """An error to print (one line, or a few) and exit with."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def crds_missing(context: str) -> PluginError:
    return PluginError(
        ExitCode.CRDS_MISSING,
        f"the API group {API_GROUP} is not served by {context}: the CRDs are not installed. "
        "Install them with `kubectl apply -f crds/` or `helm install finetune-operator "
        "charts/finetune-operator`.",
    )


def api_message(exc: ApiException) -> str:
    """The API server's own message from a Status body, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or "error") if isinstance(body, dict) else str(exc.reason)


def forbidden(exc: ApiException, what: str) -> PluginError:
    return PluginError(
        ExitCode.FORBIDDEN,
        f"no access to {what}: {api_message(exc)}. Ask for a Role that grants get/list/watch on "
        f"lrsweeps.{API_GROUP} and finetunejobs.{API_GROUP} (and events, jobs, pods, pods/log), or use "
        "another --context.",
    )
