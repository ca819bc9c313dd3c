"""Planning as the tests read it: a resource in, the desired state out as the API server would see it.

`plan_sweep` / `plan_finetune` call the operator's planner on a `Resource` and return a `View`: the status
as its wire JSON, each child Job as the trainer request it renders (name, role, args, labels, the trainer
config read back from the Job's annotation), the `auto` LRSweep's spec, and the events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from finetune_operator import naming, planning, rendering
from finetune_operator.api import LRSweepSpec
from finetune_operator.children import ChildState, observe
from finetune_operator.planning import DesiredState, Resource, SweepRef
from finetune_operator.planning.status import Event
from finetune_operator.settings import Settings
from finetune_trainer.config import TrainerConfig

NOW = "2026-01-01T00:00:10Z"
OWNER = rendering.Owner("LRSweep", "s", "ns", "uid-1")
UID = {"LRSweep": "uid-lrsweep", "FineTuneJob": "uid-finetunejob"}


@dataclass(frozen=True)
class Child:
    """A trainer Job of the plan, read back from its manifest."""

    name: str
    role: str
    args: list[str]
    trial: int | None
    stage: int | None
    config: TrainerConfig
    manifest: dict[str, Any]


@dataclass
class View:
    desired: DesiredState
    status: dict[str, Any]
    create: list[Child] = field(default_factory=list)
    create_sweep: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)


def child(manifest: dict[str, Any]) -> Child:
    labels = manifest["metadata"]["labels"]
    template = manifest["spec"]["template"]
    args = template["spec"]["containers"][0]["args"]
    config = json.loads(template["metadata"]["annotations"][rendering.CONFIG_ANNOTATION])
    return Child(
        name=manifest["metadata"]["name"],
        role=labels[naming.ROLE_LABEL],
        args=args[: args.index("--config")],
        trial=int(labels[naming.TRIAL_LABEL]) if naming.TRIAL_LABEL in labels else None,
        stage=int(labels[naming.STAGE_LABEL]) if naming.STAGE_LABEL in labels else None,
        config=TrainerConfig.model_validate(config),
        manifest=manifest,
    )


def view(desired: DesiredState) -> View:
    jobs = [child(m) for m in desired.children if m["kind"] == "Job"]
    sweeps = [m["spec"] for m in desired.children if m["kind"] == "LRSweep"]
    return View(desired, desired.status.to_wire(), jobs, sweeps[0] if sweeps else None, desired.events)


def resource(kind: str, name: str, spec: dict, previous: dict | None = None, generation: int = 1) -> Resource:
    return Resource(kind, "ns", name, UID[kind], generation, spec, previous or {})


def plan_sweep(
    name: str,
    spec: dict,
    previous: dict | None,
    generation: int,
    children: dict[str, ChildState],
    samples: dict | None = None,
    now: str = NOW,
    settings: Settings | None = None,
) -> View:
    r = resource("LRSweep", name, spec, previous, generation)
    return view(planning.plan_sweep(r, children, samples, settings=settings, now=now))


def plan_finetune(
    name: str,
    spec: dict,
    previous: dict | None,
    generation: int,
    children: dict[str, ChildState],
    sweep: dict | None,
    samples: dict | None = None,
    now: str = NOW,
) -> View:
    """`sweep` is the LRSweep as the cache holds it: `{"status": …}`, owned by this FineTuneJob unless it
    says `"owner": <uid>`."""
    r = resource("FineTuneJob", name, spec, previous, generation)
    ref = None
    if sweep is not None:
        lr = spec.get("learningRate") or {}
        sweep_name = (lr.get("fromSweep") or {}).get("name") or naming.auto_sweep(name)
        ref = SweepRef(sweep_name, sweep.get("status") or {}, sweep.get("owner", r.uid))
    return view(planning.plan_finetune(r, children, ref, samples, now=now))


def range_test_job(spec: dict, settings: Settings | None = None, **kw: Any) -> dict[str, Any]:
    """The manifest of LRSweep `s`'s range-test Job for `spec`, as the operator renders it."""
    sweep = LRSweepSpec.model_validate(spec)
    return rendering.trainer_job(
        owner=OWNER,
        name="s-range-test",
        config=rendering.range_test_config(sweep),
        role="range-test",
        args=["range-test"],
        workload=sweep,
        settings=settings or Settings(),
        **kw,
    )


def observe_indexed(job: dict[str, Any], pods: list[dict[str, Any]]) -> ChildState:
    """`children.observe` as the operator calls it: on the slim entries its Job and pod indices keep
    (`handlers._slim`), so a test cannot rest on a field the operator never sees."""
    import kopf

    from finetune_operator.handlers import _slim

    return observe(_slim(kopf.Body(job)), [_slim(kopf.Body(p)) for p in pods])
