"""`kubectl finetune describe`: the page. Name, phase and times; an LRSweep's reasons (`describe_sweep`) or a
FineTuneJob's learning rate, the batch size it is scaled to and its losses; then conditions and Events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from finetune_operator.api import LRSWEEP, FineTuneJobSpec, FineTuneJobStatus, LRSweepStatus
from finetune_operator.kubectl import style
from finetune_operator.kubectl.describe_sweep import field, plots, sweep_lines
from finetune_operator.kubectl.resources import Found


def describe(
    found: Found,
    events: Sequence[dict[str, Any]],
    painter: style.Painter,
    sweep: Found | None = None,
) -> list[str]:
    """The whole description; `sweep` is a FineTuneJob's LRSweep, when it has one."""
    meta = found.body["metadata"]
    status = found.status
    phase = painter.phase(status.phase)
    lines = [
        field("Name", found.name),
        field("Namespace", found.namespace),
        field("Kind", f"{found.kind.kind} ({found.kind.short})"),
        field(
            "Created",
            f"{meta.get('creationTimestamp', '-')} ({style.age(meta.get('creationTimestamp'))} ago)",
        ),
        field("Phase", f"{phase}  {status.message or ''}".rstrip()),
    ]
    if status.start_time:
        lines.append(field("Started", status.start_time))
    if status.completion_time:
        lines.append(field("Completed", status.completion_time))
    if found.kind is LRSWEEP:
        lines += sweep_lines(found, painter)
    else:
        lines += _finetune(found, sweep, painter)
    lines += _conditions(status.conditions)
    lines += _events(events, painter)
    return lines


# ---------------------------------------------------------------------------------------------- FineTuneJob


def _finetune(found: Found, sweep: Found | None, painter: style.Painter) -> list[str]:
    f: FineTuneJobStatus = found.status
    raw_spec = found.body.get("spec") or {}
    try:
        spec: FineTuneJobSpec | None = FineTuneJobSpec.model_validate(raw_spec)
    except ValidationError:
        spec = None
    batch = spec.optimization.effective_batch_size() if spec else None
    lines = [
        field("Model", (raw_spec.get("model") or {}).get("name", "-")),
        field("Adapter", (raw_spec.get("adapter") or {}).get("type") or "-"),
        field(
            "Learning rate",
            painter.bold(style.lr(f.learning_rate)) + f"  (from {f.learning_rate_source or '-'})",
        ),
    ]
    swept: LRSweepStatus | None = sweep.status if sweep else None
    scale = spec.learning_rate.from_sweep.scale if spec and spec.learning_rate.from_sweep else "none"
    if swept and swept.recommended_learning_rate and swept.effective_batch_size:
        lines.append(
            field(
                "Scaled",
                f"{style.lr(swept.recommended_learning_rate)} at batch {swept.effective_batch_size} "
                f"(lrs/{sweep.name if sweep else ''}) -> {style.lr(f.learning_rate)} at batch {batch or '?'} "
                f"({scale} scaling)",
            )
        )
    lines.append(field("Batch size", f"{batch} examples per optimiser update" if batch else "-"))
    lines += [
        field("Training Job", f.job_name or "-"),
        field("Eval loss", f"{style.loss(f.eval_loss)} (best {style.loss(f.best_eval_loss)})"),
        field("Train loss", style.loss(f.train_loss)),
    ]
    if f.restarts or f.resumed_from_step is not None:
        resumed = f", resumed from checkpoint at step {f.resumed_from_step}" if f.resumed_from_step else ""
        lines.append(field("Restarts", f"{f.restarts or 0} failed attempt(s) retried{resumed}"))
    if f.early_stopped is not None:
        lines.append(field("Early stopped", "yes" if f.early_stopped else "no"))
    if f.checkpoint:
        lines.append(field("Checkpoint", f.checkpoint))
    if f.progress is not None:
        p = f.progress
        extra = [f"loss {style.loss(p.loss)}" if p.loss is not None else ""]
        extra += [f"lr {style.lr(p.learning_rate)}" if p.learning_rate is not None else ""]
        extra += [f"eta {p.eta_seconds}s" if p.eta_seconds is not None else ""]
        done = f"{p.percent}% ({p.step}/{p.total_steps or '?'} steps)"
        lines.append(field("Progress", ", ".join([done, *(e for e in extra if e)])))
    if swept is not None:
        lines += plots(swept, f.learning_rate)
    return lines


# ---------------------------------------------------------------------------------------------- both


def _conditions(conditions: Sequence[Any]) -> list[str]:
    if not conditions:
        return ["", "Conditions:    <none>"]
    head = ("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")
    rows = [(c.type, c.status, c.reason, style.age(c.last_transition_time), c.message) for c in conditions]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    out = ["", "Conditions:"]
    for r in [head, *rows]:
        out.append("  " + "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip())
    return out


def _events(events: Sequence[dict[str, Any]], painter: style.Painter) -> list[str]:
    if not events:
        return ["", "Events:        <none>"]
    head = ("TYPE", "REASON", "AGE", "FROM", "MESSAGE")
    rows = []
    for e in events:
        when = (
            e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp")
        )
        source = e.get("reportingComponent") or (e.get("source") or {}).get("component") or "-"
        rows.append(
            (e.get("type") or "-", e.get("reason") or "-", style.age(when), source, e.get("message") or "")
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    out = ["", "Events:"]
    for r in [head, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        if r[0] == "Warning":
            cells[0] = painter.warn(cells[0])
        out.append("  " + "  ".join([*cells, r[-1]]).rstrip())
    return out
