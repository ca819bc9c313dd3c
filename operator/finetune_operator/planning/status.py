"""What a status says: phase, conditions, events and live progress, on the typed status models.

The phase decides the conditions, and this is the one place that does it:

| phase                                       | Ready | Reconciling | Stalled | Succeeded | Failed |
|---------------------------------------------|-------|-------------|---------|-----------|--------|
| Pending, WaitingForSweep, Sweeping, Running | False | True        | False¹  | -         | -      |
| Succeeded                                   | True  | False       | False²  | True      | False  |
| Failed                                      | False | False       | True    | False     | True   |

¹ True while blocked on something only a person can fix (e.g. another object holds a child's name).
² Written only when the resource was stalled before.

`Ready` is True once the resource's result can be used (an LRSweep's recommendation, a FineTuneJob's
model); `Reconciling`/`Stalled` are kstatus's conditions, so Flux and `kubectl wait` read the same answer
as the Argo CD health check in docs/argocd/.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from finetune_operator.api import (
    MESSAGE_MAX,
    Condition,
    FineTuneJobStatus,
    LRSweepStatus,
    Progress,
    ResourceStatus,
)
from finetune_operator.children import CANNOT_START, NO_POD
from finetune_trainer.config import TrainerConfig

TERMINAL = ("Succeeded", "Failed")
WARNING_REASONS = {
    "WaitingForSweep",
    "Unschedulable",
    NO_POD,
    *CANNOT_START,
    "BestAtLowerEdge",
    "BestAtUpperEdge",
}
READY, RECONCILING, STALLED, APPLY_FAILED = "Ready", "Reconciling", "Stalled", "ApplyFailed"

S = TypeVar("S", LRSweepStatus, FineTuneJobStatus)


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post about the resource."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ChildRequest:
    """A trainer Job the plan wants; `planning` renders it into a complete manifest."""

    name: str
    role: str
    args: list[str]
    config: TrainerConfig
    trial: int | None = None
    stage: int | None = None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_status(model: type[S], wire: Mapping[str, Any] | None) -> S:
    """The typed status from its wire form. A field that does not validate (written by another version, or
    by hand) is dropped, never fatal: the reconcile rewrites it."""
    data = dict(wire or {})
    while True:
        try:
            return model.model_validate(data)
        except ValidationError as e:
            bad = {err["loc"][0] for err in e.errors() if err["loc"]} & set(data)
            if not bad:
                return model()
            for key in bad:
                data.pop(key)


def is_done(status: ResourceStatus, generation: int) -> bool:
    """Finished: nothing more to reconcile. (`generation` moves after the end only when `spec.suspend`, the
    one mutable field, changes: a finished run has nothing to pause or resume.)"""
    return status.phase in TERMINAL and (status.observed_generation or 0) <= generation


def settle(status: S, now: str, generation: int | None = None) -> S:
    """A finished status with the conditions its phase stands for (see the table above), observed at
    `generation` when given. A status written before `Ready` meant Succeeded gets them once; one written by
    this version at this generation is returned unchanged."""
    reason = next(
        (c.reason for t in ("Failed", "Succeeded", READY) if (c := condition(status, t)) is not None),
        status.phase,
    )
    b = StatusBuilder(status, generation or status.observed_generation or 1, now)
    b.phase(status.phase, reason, status.message or "", event=False)
    return b.status


def clip(message: str, limit: int = MESSAGE_MAX) -> str:
    """`message` cut to the status schema's bound (a longer one would make the API server refuse the
    whole status), saying that it was cut."""
    if len(message) <= limit:
        return message
    marker = " … (cut)"
    return message[: limit - len(marker)] + marker


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[Condition]:
    """Conditions with `type_` set in its place (a new type goes last, so the list is written only when a
    condition changes); `lastTransitionTime` moves only when the status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old and old.status == value else now
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=clip(message),
        last_transition_time=since,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def condition(status: ResourceStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def failed_reason(status: ResourceStatus) -> str | None:
    """The reason of a failed resource (its `Failed` condition's), None unless it failed."""
    c = condition(status, "Failed")
    return c.reason if c is not None and c.status == "True" else None


def finite(value: float | None) -> float | None:
    """`value` when it is a finite number, else None (JSON, and so the API server, has no NaN)."""
    return None if value is None or not math.isfinite(value) else float(value)


class StatusBuilder(Generic[S]):
    """One reconcile's status in the making: phase and conditions, times, the events and child Jobs to
    create that go with them."""

    def __init__(self, status: S, generation: int, now: str) -> None:
        self.status = status
        self.generation, self.now = generation, now
        self.events: list[Event] = []
        self.children: list[ChildRequest] = []
        self.delete: list[str] = []
        """Child Jobs to delete now (pruned trials)."""
        status.observed_generation = generation

    def condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_, status, reason, message, self.generation, self.now
        )

    def phase(
        self, phase: str, reason: str, message: str = "", *, event: bool = True, stalled: bool = False
    ) -> None:
        """Set the phase and its conditions (see the table above); an event goes out when the phase or its
        reason changes."""
        s = self.status
        if event and (s.phase != phase or self.reason() != reason):
            warn = phase == "Failed" or stalled or reason in WARNING_REASONS
            self.events.append(Event("Warning" if warn else "Normal", reason, message or phase))
        s.phase, s.message = phase, clip(message) or None  # type: ignore[assignment]
        terminal = phase in TERMINAL
        if terminal:
            s.completion_time = s.completion_time or self.now
            self.condition("Succeeded", phase == "Succeeded", reason, message)
            self.condition("Failed", phase == "Failed", reason, message)
        self.condition(READY, phase == "Succeeded", reason, message)
        self.condition(RECONCILING, not terminal, reason, message)
        stalled = stalled or phase == "Failed"
        if stalled or condition(s, STALLED) is not None:
            self.condition(STALLED, stalled, reason, message)

    def reason(self) -> str | None:
        """The current phase's reason (the Ready condition's)."""
        c = condition(self.status, READY)
        return c.reason if c is not None else None

    def started(self) -> None:
        self.status.start_time = self.status.start_time or self.now

    def invalid(self, error: ValidationError | ValueError) -> None:
        """The spec (or a config rendered from it) is invalid: fail with every field named."""
        errors = error.errors() if isinstance(error, ValidationError) else [{"loc": (), "msg": str(error)}]
        message = "; ".join(_error_text(e["loc"], e["msg"]) for e in errors)
        self.children.clear()
        self.phase("Failed", "InvalidSpec", message)


def _error_text(loc: tuple[int | str, ...], msg: str) -> str:
    """One validation error as `field: problem`, without pydantic's "Value error, " and without naming the
    field twice (a cross-field rule's message starts with the field it is about)."""
    msg, where = msg.removeprefix("Value error, "), ".".join(str(p) for p in loc)
    return f"{where}: {msg}" if where and not msg.startswith(where) else msg


def progress_from_sample(
    sample: Mapping[str, float] | None,
    start_time: str | None,
    now: str,
    previous: Progress | None = None,
) -> Progress | None:
    """Progress from a trainer's metrics sample (`step`, `total_steps`, `learning_rate`, `loss`, …).
    `lastStepTime` moves only when the step count grew since `previous`."""
    if not sample or finite(sample.get("step")) is None:
        return None
    step, total = int(sample["step"]), int(finite(sample.get("total_steps")) or 0) or None
    eta = None
    if total and step and start_time:
        elapsed = (_parse(now) - _parse(start_time)).total_seconds()
        if elapsed > 0:
            eta = max(0, int(elapsed / step * (total - step)))
    moved = previous is None or previous.last_step_time is None or step > previous.step
    throughput = finite(sample.get("samples_per_second"))
    return Progress(
        step=max(0, step),
        total_steps=total if total and total > 0 else None,
        percent=max(0, min(100, int(100 * step / total))) if total else 0,
        epoch=finite(sample.get("epoch")),
        learning_rate=finite(sample.get("learning_rate")),
        loss=finite(sample.get("loss")),
        eval_loss=finite(sample.get("eval_loss")),
        samples_per_second=throughput if throughput is None or throughput >= 0 else None,
        eta_seconds=eta,
        last_step_time=now if moved else (previous.last_step_time if previous else None),
    )


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


@dataclass(frozen=True)
class ApplyFailure:
    """A child the API server refused (RBAC, validation, a conflict with another field manager)."""

    kind: str
    name: str
    code: int
    reason: str
    """The API's reason: Forbidden, Invalid, Conflict, …"""
    message: str


@dataclass
class Applied:
    """What applying a desired state did to its status and events."""

    status: ResourceStatus
    events: list[Event] = field(default_factory=list)


def record_apply(
    planned: S,
    events: list[Event],
    previous: S,
    failures: Iterable[ApplyFailure],
    now: str | None = None,
) -> Applied:
    """The status to write once the children were applied. All applied: the plan's status and events
    (an earlier `ApplyFailed` condition flips to False). Any refused: the previous status with
    `ApplyFailed=True` naming the child and the API's message, and a Warning event when that changes; the
    plan's own transition is not recorded, since it did not happen, and is retried with back-off."""
    failures = list(failures)
    now = now or now_iso()
    generation = planned.observed_generation or 1
    if not failures:
        old = condition(planned, APPLY_FAILED)
        if old is not None and old.status == "True":
            planned.conditions = set_condition(
                planned.conditions, APPLY_FAILED, False, "Applied", "every child applied", generation, now
            )
        return Applied(planned, list(events))
    first = failures[0]
    message = "; ".join(f"{f.kind} {f.name}: {f.message}" for f in failures)[:1024]
    old = condition(previous, APPLY_FAILED)
    status = previous
    status.observed_generation = generation
    status.conditions = set_condition(
        status.conditions, APPLY_FAILED, True, first.reason, message, generation, now
    )
    status.message = message
    if condition(status, READY) is None:  # refused at the first step: not ready, still being worked on
        for type_, value in ((READY, False), (RECONCILING, True)):
            status.conditions = set_condition(
                status.conditions, type_, value, first.reason, message, generation, now
            )
    changed = old is None or old.status != "True" or old.reason != first.reason or old.message != message
    return Applied(status, [Event("Warning", APPLY_FAILED, message)] if changed else [])
