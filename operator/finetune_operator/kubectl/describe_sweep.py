"""`kubectl finetune describe` of an LRSweep: why this learning rate. The range test's curve and the trials as
text plots on one LR axis, each rule's value, the range test's window, the trials ranked, the warnings."""

from __future__ import annotations

import math
from collections.abc import Sequence

from finetune_operator.api import FromSweep, LRSweepSpec, LRSweepStatus, TrialStatus
from finetune_operator.kubectl import style, textplot
from finetune_operator.kubectl.resources import Found
from finetune_trainer.adaptive import ceiling, ramp_minimum
from finetune_trainer.config import WEAK_EVIDENCE, AdaptiveSpec

LABEL = 14


def field(name: str, value: object) -> str:
    """`Name:` and its value, values aligned (as kubectl describe does)."""
    return f"{name + ':':<{LABEL - 1}} {value}"


def sweep_lines(found: Found, painter: style.Painter) -> list[str]:
    """The LRSweep's part of `describe`."""
    s: LRSweepStatus = found.status
    spec = found.body.get("spec") or {}
    method = spec.get("method") or LRSweepSpec.model_fields["method"].default
    decided = ", ".join(
        part
        for part in (
            f"rule {s.rule}" if s.rule else "",
            f"decided by {s.decided_by}" if s.decided_by else "",
            f"evidence {s.evidence}" if s.evidence else "",
        )
        if part
    )
    evidence_weak = s.evidence in WEAK_EVIDENCE
    lines = [
        field("Method", method),
        field("Model", (spec.get("model") or {}).get("name", "-")),
        field("Adapter", s.adapter or (spec.get("adapter") or {}).get("type") or "-"),
        field(
            "Recommended",
            painter.bold(style.lr(s.recommended_learning_rate)) + (f"  ({decided})" if decided else ""),
        ),
        field("Interval", style.interval(s.interval.low, s.interval.high) if s.interval else "-"),
        field("Best loss", style.loss(s.best_loss)),
        field(
            "Batch size",
            f"{s.effective_batch_size} examples per optimiser update: the LR holds at this size; a "
            f"FineTuneJob with fromSweep scales it to its own ({FromSweep.model_fields['scale'].default} by "
            "default)"
            if s.effective_batch_size
            else "-",
        ),
    ]
    if s.steps_spent is not None:
        lines.append(
            field("Steps spent", spent(s.steps_spent, (spec.get("optimization") or {}).get("maxSteps")))
        )
    if s.progress is not None and s.phase not in ("Succeeded", "Failed"):
        p = s.progress
        lines.append(field("Progress", f"{p.percent}% ({p.step}/{p.total_steps or '?'} steps)"))
    if evidence_weak:
        lines.append(painter.warn(f"{'':<{LABEL}}weak evidence: do not train with this LR unchecked"))
    lines += plots(s, None)
    lines += _rules(s)
    lines += _range_test(s, AdaptiveSpec.model_validate(spec.get("adaptive") or {}), method)
    lines += _trials(s.trials or [])
    if s.warnings:
        lines += ["", "Warnings:"] + [painter.warn(f"  - {w}") for w in s.warnings]
    return lines


def spent(steps: int, planned: object) -> str:
    """The sweep's optimiser steps, and as how many fine-tunes of the planned length (`optimization.maxSteps`)
    they count, the unit its cost is judged in; the bare count when the length is not a positive number."""
    if isinstance(planned, int) and not isinstance(planned, bool) and planned > 0:
        return f"{steps} ({steps / planned:.1f} fine-tunes' worth of the planned {planned} steps)"
    return str(steps)


def plots(s: LRSweepStatus, used: float | None) -> list[str]:
    """The range test's curve and the trials, on one LR axis, recommendation and interval under it."""
    curve = [(p.lr, p.loss) for p in s.curve or []]
    trials = [t for t in s.trials or [] if t.learning_rate > 0]
    finished = [t for t in trials if t.eval_loss is not None and math.isfinite(t.eval_loss)]
    if not curve and not finished:
        return []
    lrs = [lr for lr, _ in curve] + [t.learning_rate for t in trials]
    lrs += [v for v in (s.recommended_learning_rate, used) if v]
    if s.interval:
        lrs += [s.interval.low, s.interval.high]
    scale = textplot.Scale.around(lrs)
    marks = [v for v in (s.recommended_learning_rate, used) if v]
    lines: list[str] = []
    if curve:
        lines += ["", "Range test (smoothed training loss vs learning rate):"]
        lines += textplot.panel(curve, scale, vertical=marks)
    if finished:
        lines += ["", "Trials (validation loss vs learning rate; ○ stage 1, ● stage 2, ◇ grid/random):"]
        finished.sort(key=lambda t: t.learning_rate)
        lines += textplot.panel(
            [(t.learning_rate, t.eval_loss) for t in finished],  # type: ignore[misc]
            scale,
            height=8,
            join=False,
            markers=[{1: "○", 2: "●"}.get(t.stage or 0, "◇") for t in finished],
            vertical=marks,
        )
    interval = (s.interval.low, s.interval.high) if s.interval else None
    lines += textplot.axis(scale, s.recommended_learning_rate, interval)
    legend = "▲ recommended  ═ interval" + ("  ┊ this job's LR" if used else "")
    lines.append(" " * textplot.Y_LABEL + legend)
    return lines


def _rules(s: LRSweepStatus) -> list[str]:
    rows = [(name, lr, "") for name, lr in (s.suggestions or {}).items()]
    if s.rule and s.rule not in (s.suggestions or {}):
        rows.append((s.rule, s.recommended_learning_rate, ""))
    if not rows:
        return []
    rows = [(n, lr, "← recommended" if n == s.rule else "") for n, lr, _ in rows]
    width = max(len(n) for n, _, _ in rows)
    out = ["", "Rules:"]
    for name, lr, note in rows:
        detail = ""
        if name == s.rule and s.decided_by:
            detail = f" ({s.decided_by}"
            if s.fit is not None:
                detail += f": loss = {s.fit.a:.3g}·x² + {s.fit.b:.3g}·x + {s.fit.c:.3g}, x = log10 LR"
            detail += ")"
        out.append(f"  {name:<{width}}  {style.lr(lr):<9}  {note}{detail}".rstrip())
    return out


def _range_test(s: LRSweepStatus, adaptive: AdaptiveSpec, method: str) -> list[str]:
    r = s.range_test
    if r is None and s.stop_reason is None:
        return []
    parts = []
    if r is not None:
        parts.append(f"window {style.lr(r.min_learning_rate)}..{style.lr(r.max_learning_rate)}")
        parts.append(f"divergence at {style.lr(r.divergence_learning_rate)}")
        if r.prior_learning_rate:
            parts.append(f"prior {style.lr(r.prior_learning_rate)}")
        if r.edge_learning_rate and method == "adaptive":  # the ceiling the adaptive stages computed
            minimum = ramp_minimum(r.loss_minimum_learning_rate, s.curve or [])
            top, _ = ceiling(adaptive, r.edge_learning_rate, minimum)
            parts.append(f"trials at or below {style.lr(top)}")
        if r.steps is not None:
            parts.append(f"{r.steps} steps")
        if r.baseline_loss is not None:  # a classifier's trial not below it learned nothing
            parts.append(f"label entropy {r.baseline_loss:.4g}")
            if r.best_loss is not None:  # below that entropy: the ramp itself learned
                parts.append(f"ramp's lowest loss {r.best_loss:.4g}")
    if s.stop_reason:
        parts.append(f"stopped: {s.stop_reason}")
    return ["", field("Range test", ", ".join(parts))]


def _trials(trials: Sequence[TrialStatus]) -> list[str]:
    """Trials ranked: finished by validation loss, then the running and pending, then diverged/failed."""
    if not trials:
        return []

    def rank(t: TrialStatus) -> tuple[int, float]:
        if t.diverged or t.phase == "Failed":
            return 2, t.learning_rate
        if t.eval_loss is None:
            return 1, t.learning_rate
        return 0, t.eval_loss

    ordered = sorted(trials, key=rank)
    head = ("RANK", "STAGE", "TRIAL", "LR", "STEPS", "EVAL LOSS", "PHASE", "JOB")
    rows = []
    for i, t in enumerate(ordered, start=1):
        phase = "Diverged" if t.diverged else t.phase
        if t.phase == "Running" and t.progress is not None:
            phase += f" {t.progress.percent}%"
        rows.append(
            (
                str(i) if rank(t)[0] == 0 else "-",
                str(t.stage) if t.stage else "-",
                str(t.index),
                style.lr(t.learning_rate),
                str(t.steps) if t.steps is not None else "-",
                style.loss(t.eval_loss),
                phase,
                t.job_name or "-",
            )
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    table = [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]
    ]
    return ["", f"Trials ({len(trials)}, best first):", *table]
