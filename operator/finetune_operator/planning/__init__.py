"""Reconcile decisions as pure functions: a resource and what its children say in, its desired state out.

The desired state is the typed status, the complete manifests of the children to create (trainer Jobs,
the LRSweep of an `auto` FineTuneJob, the headless Service of a multi-node run: see `distributed`) and
the events to post; the controller's applier applies it as it is. `plan` validates the spec (the only
place that does), hands it to the module that decides, and renders the children it asks for with
`rendering`:

    planning/status.py     phase, conditions (what Ready means), events, progress from a trainer sample
    planning/rangetest.py  the range-test Job and what its curve says (method rangeTest)
    planning/adaptive.py   the adaptive method: range test, trials as Jobs, recommendation
    planning/trials.py     grid and random trials
    planning/remembered.py trial results kept in the status once their Jobs are gone (every trial method)
    planning/finetune.py   the FineTuneJob: its learning rate, then its training Job
    planning/queued.py     Kueue's word on queued Jobs (Queued/Admitted), and pausing/resuming (spec.suspend)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from finetune_operator import distributed, naming, rendering
from finetune_operator.api import (
    LRSWEEP,
    FineTuneJobSpec,
    FineTuneJobStatus,
    LRSweepSpec,
    LRSweepStatus,
    ResourceStatus,
)
from finetune_operator.children import ChildState, never_started, past_start_deadline
from finetune_operator.planning import adaptive, finetune, queued, rangetest, trials
from finetune_operator.planning.finetune import SweepRef
from finetune_operator.planning.status import (
    TERMINAL,
    Event,
    StatusBuilder,
    is_done,
    now_iso,
    parse_status,
    settle,
)
from finetune_operator.queueing import QueueState, queue_name
from finetune_operator.settings import Settings

__all__ = ["DesiredState", "Event", "Resource", "SweepRef", "is_done", "plan", "plan_finetune", "plan_sweep"]

Samples = Mapping[str, Mapping[str, float]]
SpecT = TypeVar("SpecT", LRSweepSpec, FineTuneJobSpec)


@dataclass(frozen=True)
class Resource:
    """An LRSweep or FineTuneJob as one reconcile reads it."""

    kind: str
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def owner(self) -> rendering.Owner:
        return rendering.Owner(self.kind, self.name, self.namespace, self.uid)

    @classmethod
    def from_body(cls, kind: str, body: Mapping[str, Any]) -> Resource:
        meta = body.get("metadata") or {}
        return cls(
            kind=kind,
            namespace=meta.get("namespace") or "",
            name=meta.get("name") or "",
            uid=meta.get("uid") or "",
            generation=int(meta.get("generation") or 1),
            spec=body.get("spec") or {},
            status=body.get("status") or {},
        )


@dataclass
class DesiredState:
    """What the resource and its children should be: the applier's whole input."""

    status: ResourceStatus
    children: list[dict[str, Any]] = field(default_factory=list)
    """Complete manifests of the children to create now (server-side applied as they are)."""
    events: list[Event] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    """Names of child Jobs to delete now (pruned trials), with their pods."""
    suspend: list[str] = field(default_factory=list)
    """Trainer Jobs to suspend: the resource failed because their pods could not start, and a pod that
    starts later (its Secret or claim appeared) must not train for a failed resource; or spec.suspend
    pauses the run."""
    resume: list[str] = field(default_factory=list)
    """Trainer Jobs to unsuspend: spec.suspend was cleared (Jobs no Kueue queue manages)."""
    deactivate: list[str] = field(default_factory=list)
    """Kueue Workloads to deactivate (pause a queued run)."""
    activate: list[str] = field(default_factory=list)
    """Kueue Workloads to re-activate (resume a queued run)."""
    sweep_suspend: tuple[str, bool] | None = None
    """(name, suspend) of the `auto` LRSweep a paused or resumed FineTuneJob waits for."""
    expire: dict[str, int] = field(default_factory=dict)
    """Finished trainer Jobs to give `ttlSecondsAfterFinished` (name: seconds) once this status, which holds
    their results, is written: see `expiring`."""


def plan(
    resource: Resource,
    children: Mapping[str, ChildState],
    *,
    samples: Samples | None = None,
    sweep: SweepRef | None = None,
    settings: Settings | None = None,
    now: str | None = None,
    queue: Mapping[str, QueueState] | None = None,
) -> DesiredState:
    """The desired state of any resource (dispatch by kind). `queue`: what Kueue says about each unfinished
    trainer Job of a queued resource."""
    if resource.kind == LRSWEEP.kind:
        return plan_sweep(resource, children, samples, settings=settings, now=now, queue=queue)
    return plan_finetune(resource, children, sweep, samples, settings=settings, now=now, queue=queue)


def plan_sweep(
    resource: Resource,
    children: Mapping[str, ChildState],
    samples: Samples | None = None,
    *,
    settings: Settings | None = None,
    now: str | None = None,
    queue: Mapping[str, QueueState] | None = None,
) -> DesiredState:
    """Decide the LRSweep's status and which trainer Jobs to create next."""
    begun = _begin(resource, LRSweepStatus, LRSweepSpec, children, settings, now)
    if isinstance(begun, DesiredState):
        return begun
    spec, b, children, settings = begun.spec, begun.b, begun.children, begun.settings
    samples = samples or {}
    if spec.method == "adaptive":
        adaptive.plan(resource.name, spec, b, children, samples)
    elif spec.method == "rangeTest":
        result = rangetest.range_test(resource.name, spec, b, children, samples)
        if result is not None:
            rangetest.decide(b, result, spec.range_test)
    else:
        trials.plan(resource.name, spec, b, children, samples)
    return _desired(resource, spec, b, settings, children, queue)


def plan_finetune(
    resource: Resource,
    children: Mapping[str, ChildState],
    sweep: SweepRef | None = None,
    samples: Samples | None = None,
    *,
    settings: Settings | None = None,
    now: str | None = None,
    queue: Mapping[str, QueueState] | None = None,
) -> DesiredState:
    """Decide the FineTuneJob's status: resolve the learning rate, then run and follow the training Job.

    `sweep` is the LRSweep named by `fromSweep` (or its `auto` sweep), None when it does not exist."""
    begun = _begin(resource, FineTuneJobStatus, FineTuneJobSpec, children, settings, now)
    if isinstance(begun, DesiredState):
        return begun
    spec, b, children, settings = begun.spec, begun.b, begun.children, begun.settings
    create_sweep = finetune.plan(resource.name, resource.uid, spec, b, children, sweep, samples or {})
    desired = _desired(resource, spec, b, settings, children, queue)
    if create_sweep is not None:
        name = naming.auto_sweep(resource.name)
        desired.children.append(rendering.auto_sweep(resource.owner, name, create_sweep))
    elif (
        spec.learning_rate.auto is not None
        and sweep is not None
        and sweep.owner_uid == resource.uid
        and b.status.learning_rate is None
        and b.status.phase not in TERMINAL
    ):  # the auto sweep follows the FineTuneJob's pause (it was created with the suspend of its time)
        desired.sweep_suspend = (sweep.name, bool(spec.suspend))
    return desired


def expiring(ttl: Any, children: Mapping[str, ChildState]) -> dict[str, int]:
    """The finished trainer Jobs that should now get the spec's `ttlSecondsAfterFinished`.

    Jobs are created without it: Kubernetes' TTL controller, counting from the Job's end, could delete a Job
    and its pod (whose termination message holds the result) before the operator has read it. The planner
    records every finished child's result in the status it returns, so once that status is written the
    controller sets the TTL on these Jobs, and the TTL controller deletes each `ttl` seconds after its end
    (at once when that is past)."""
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        return {}
    return {
        name: ttl
        for name, child in sorted(children.items())
        if child.phase in ("Succeeded", "Failed") and not child.expires
    }


@dataclass(frozen=True)
class _Begun(Generic[SpecT]):
    """An unfinished resource whose spec validated: what either planner decides from."""

    spec: SpecT
    b: StatusBuilder
    children: Mapping[str, ChildState]
    settings: Settings


def _begin(
    resource: Resource,
    status_model: type[ResourceStatus],
    spec_model: type[SpecT],
    children: Mapping[str, ChildState],
    settings: Settings | None,
    now: str | None,
) -> DesiredState | _Begun[SpecT]:
    """What both planners do first: a finished resource settles, and a spec that does not validate fails
    with each bad field named (both as the returned desired state); otherwise the status builder, the
    validated spec, and the children with any pod past its start deadline marked."""
    previous, now = parse_status(status_model, resource.status), now or now_iso()
    if is_done(previous, resource.generation):
        return _settled(resource, previous, now, children)
    b = StatusBuilder(previous, resource.generation, now)
    settings = settings or Settings()
    children = past_start_deadline(children, now, settings.pod_start_deadline)
    try:
        spec = spec_model.model_validate(resource.spec)
    except ValidationError as e:
        b.invalid(e)
        return DesiredState(b.status, events=b.events)
    return _Begun(spec, b, children, settings)


def _settled(
    resource: Resource, previous: ResourceStatus, now: str, children: Mapping[str, ChildState]
) -> DesiredState:
    """A finished resource: its settled status, and the TTL for Jobs that finished with it."""
    return DesiredState(
        settle(previous, now, resource.generation),
        expire=expiring(resource.spec.get("ttlSecondsAfterFinished"), children),
    )


def _give_up(desired: DesiredState, children: Mapping[str, ChildState]) -> DesiredState:
    """A resource that failed for a pod that could not start suspends every Job whose pod never started."""
    if desired.status.phase == "Failed":
        desired.suspend = sorted(name for name, child in children.items() if never_started(child))
    return desired


def _queue_and_pause(
    b: StatusBuilder,
    spec: LRSweepSpec | FineTuneJobSpec,
    children: Mapping[str, ChildState],
    queue: Mapping[str, QueueState] | None,
    settings: Settings,
) -> queued.PauseActions:
    """Kueue's conditions and the pause/resume of unfinished trainer Jobs (nothing for a finished run)."""
    if b.status.phase in TERMINAL:
        return queued.PauseActions()
    queued.record_queue(b, queue or {})
    managed = queue_name(spec.queue_name, settings.default_queue_name) is not None
    return queued.pause_actions(b, bool(spec.suspend), managed, children, queue or {})


def _desired(
    resource: Resource,
    spec: LRSweepSpec | FineTuneJobSpec,
    b: StatusBuilder,
    settings: Settings,
    children: Mapping[str, ChildState],
    queue: Mapping[str, QueueState] | None,
) -> DesiredState:
    """The builder's status and events, its Job requests rendered into complete manifests, Kueue's word
    and the pause or resume of unfinished Jobs, the suspend of a failed run's unstarted Jobs, and the TTL
    for finished Jobs."""
    pause = _queue_and_pause(b, spec, children, queue, settings)
    jobs = [
        manifest
        for c in b.children
        for manifest in distributed.children(
            rendering.trainer_job(
                owner=resource.owner,
                name=c.name,
                role=c.role,
                args=c.args,
                config=c.config,
                workload=spec,
                settings=settings,
                trial=c.trial,
                stage=c.stage,
            ),
            spec,
        )
    ]
    desired = DesiredState(
        b.status,
        jobs,
        b.events,
        b.delete,
        suspend=pause.suspend,
        resume=pause.resume,
        deactivate=pause.deactivate,
        activate=pause.activate,
        expire=expiring(spec.ttl_seconds_after_finished, children),
    )
    return _give_up(desired, children)
