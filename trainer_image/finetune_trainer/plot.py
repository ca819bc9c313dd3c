"""Loss-vs-learning-rate plots (matplotlib, headless, imported only when drawing).

One drawing, `draw`, for every source of a loss-vs-LR curve: a range test's result (`plot_range_test`), and
an LRSweep's status as `kubectl get lrsweep NAME -o json` prints it (`sweep_figure`; `kubectl finetune plot`
draws with it too). A fine-tune's loss against step comes from its progress lines (`training_curve`, e.g.
its pod's log) and `draw_training`. `plot_file` tells the three apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from finetune_trainer.config import (
    EVAL_EVENT,
    STEP_EVENT,
    CurvePoint,
    Interval,
    RangeTestResult,
    Spec,
    parse_result,
)

RULE_COLOURS = {
    "ceiling": "tab:cyan",
    "steepest": "tab:orange",
    "valley": "tab:green",
    "minimum-over-10": "tab:purple",
    "max-over-3": "tab:red",
}
STAGE_MARKERS = {1: ("o", "tab:gray"), 2: ("D", "tab:red")}
PLOT_EXTRA = "pip install 'finetune-operator[plot]'"


@dataclass
class Figure:
    """What a loss-vs-LR figure shows."""

    title: str
    subtitle: str = ""
    curve: Sequence[CurvePoint] = ()
    """The range test's smoothed loss."""
    raw: Sequence[Mapping[str, float]] | None = None
    """The range test's raw loss per step (`lr`, `loss`)."""
    suggestions: Mapping[str, float | None] = field(default_factory=dict)
    rule: str | None = None
    recommended: float | None = None
    interval: Interval | None = None
    trials: Sequence[tuple[float, float, int | None]] = ()
    """(learning rate, validation loss, stage) of finished trials: drawn on their own loss axis."""
    marks: Mapping[str, float] = field(default_factory=dict)
    """More vertical lines by label (e.g. the LR a fine-tune used)."""


def draw(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as a PNG: loss on a log LR axis, rules dashed, the recommendation solid, the
    interval shaded, trials (right axis) as markers."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"drawing a PNG needs matplotlib: {PLOT_EXTRA}") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    raw = figure.raw or []
    if raw:
        ax.plot([p["lr"] for p in raw], [p["loss"] for p in raw], color="0.8", lw=0.8, label="loss")
    if figure.curve:
        ax.plot(
            [p.lr for p in figure.curve],
            [p.loss for p in figure.curve],
            color="tab:blue",
            lw=1.6,
            label="smoothed",
        )
    for name, lr in figure.suggestions.items():
        if lr is not None:
            style = "-" if name == figure.rule else "--"
            ax.axvline(lr, color=RULE_COLOURS.get(name, "k"), ls=style, lw=1.2, label=f"{name} {lr:.2e}")
    if figure.recommended and figure.rule not in figure.suggestions:
        ax.axvline(figure.recommended, color="k", lw=1.4, label=f"recommended {figure.recommended:.2e}")
    if figure.interval is not None:
        ax.axvspan(figure.interval.low, figure.interval.high, color="tab:green", alpha=0.12, label="interval")
    for label, lr in figure.marks.items():
        ax.axvline(lr, color="tab:brown", ls=":", lw=1.4, label=f"{label} {lr:.2e}")
    if figure.trials:
        axis = ax.twinx() if figure.curve else ax
        for stage in sorted({s for _, _, s in figure.trials}, key=lambda s: s or 0):
            marker, colour = STAGE_MARKERS.get(stage or 0, ("s", "tab:olive"))
            points = sorted((lr, loss) for lr, loss, s in figure.trials if s == stage)
            axis.plot(
                [lr for lr, _ in points],
                [loss for _, loss in points],
                ls="",
                marker=marker,
                color=colour,
                label=f"stage {stage} trials" if stage else "trials",
            )
        axis.set_ylabel("validation loss (trials)")
        if axis is not ax:
            axis.legend(fontsize=8, loc="upper right")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(f"{figure.title}\n{figure.subtitle}" if figure.subtitle else figure.title)
    losses = [p.loss for p in figure.curve] + [p["loss"] for p in raw if math.isfinite(p["loss"])]
    if losses:
        # Frame the interesting part: from the lowest loss to a little above the start; the blow-up is cut.
        low, first = min(losses), figure.curve[0].loss if figure.curve else losses[0]
        span = abs(first - low) or 1.0
        ax.set_ylim(low - 0.1 * span, first + 0.6 * span)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_range_test(
    result: RangeTestResult, path: str | Path, raw_curve: Sequence[dict[str, float]] | None = None
) -> Path:
    """Smoothed (and raw, when given) loss against LR on a log axis, each rule's suggestion marked."""
    recommended = result.recommended_learning_rate
    title = (
        f"LR range test — recommended {recommended:.2e} ({result.rule})" if recommended else "LR range test"
    )
    figure = Figure(
        title=title,
        subtitle=f"batch {result.effective_batch_size}, adapter {result.adapter}, {result.stop_reason}",
        curve=result.curve,
        raw=raw_curve,
        suggestions=result.suggestions,
        rule=result.rule,
    )
    return draw(figure, path)


# ------------------------------------------------------------------------------------------ LRSweep status


class _View(Spec):
    model_config = ConfigDict(extra="ignore")


class TrialView(_View):
    """What a plot reads of one trial in an LRSweep's status."""

    learning_rate: float
    eval_loss: float | None = None
    stage: int | None = None


class SweepStatusView(_View):
    """What a plot reads of an LRSweep's status (the operator writes these fields with the trainer's own
    contract types; a unit test checks each against the operator's `LRSweepStatus`)."""

    phase: str | None = None
    recommended_learning_rate: float | None = None
    rule: str | None = None
    decided_by: str | None = None
    evidence: str | None = None
    interval: Interval | None = None
    suggestions: dict[str, float | None] | None = None
    curve: list[CurvePoint] | None = None
    trials: list[TrialView] | None = None
    effective_batch_size: int | None = None
    adapter: str | None = None
    stop_reason: str | None = None


def is_sweep_object(data: Mapping[str, Any]) -> bool:
    """Whether `data` is an LRSweep as the API returns it (`kubectl get lrsweep NAME -o json`)."""
    return data.get("kind") == "LRSweep" and isinstance(data.get("status"), dict)


def sweep_figure(obj: Mapping[str, Any], marks: Mapping[str, float] | None = None) -> Figure:
    """The figure of an LRSweep object (`kubectl get lrsweep NAME -o json`): its range-test curve,
    rules, trials, recommendation and interval."""
    name = (obj.get("metadata") or {}).get("name", "LRSweep")
    s = SweepStatusView.model_validate(obj.get("status") or {})
    trials = [
        (t.learning_rate, t.eval_loss, t.stage)
        for t in s.trials or []
        if t.eval_loss is not None and math.isfinite(t.eval_loss) and t.learning_rate > 0
    ]
    if not s.curve and not trials:
        raise ValueError(f"LRSweep {name} has no curve and no finished trials yet (phase {s.phase})")
    how = ", ".join(x for x in (s.rule, s.decided_by, s.evidence) if x)
    rec = f"recommended {s.recommended_learning_rate:.2e} ({how})" if s.recommended_learning_rate else s.phase
    details = [
        f"batch {s.effective_batch_size}" if s.effective_batch_size else "",
        f"adapter {s.adapter}" if s.adapter else "",
        f"range test {s.stop_reason}" if s.stop_reason else "",
    ]
    return Figure(
        title=f"LRSweep {name} — {rec}",
        subtitle=", ".join(d for d in details if d),
        curve=s.curve or [],
        suggestions=s.suggestions or {},
        rule=s.rule,
        recommended=s.recommended_learning_rate,
        interval=s.interval,
        trials=trials,  # type: ignore[arg-type]
        marks=marks or {},
    )


# ---------------------------------------------------------------------------------------------- training


@dataclass
class TrainingCurve:
    """A fine-tune's logged losses, from its progress lines."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float | None] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss)."""


def training_curve(lines: Iterable[str]) -> TrainingCurve:
    """The step and eval records of a trainer's progress lines (other lines and events are skipped)."""
    curve = TrainingCurve()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("event") == STEP_EVENT and isinstance(record.get("loss"), int | float):
            curve.steps.append(int(record.get("step", len(curve.steps))))
            curve.losses.append(float(record["loss"]))
            curve.learning_rates.append(record.get("learningRate"))
        elif record.get("event") == EVAL_EVENT and isinstance(record.get("evalLoss"), int | float):
            curve.evals.append((int(record.get("step", 0)), float(record["evalLoss"])))
    return curve


def draw_training(curve: TrainingCurve, title: str, path: str | Path) -> Path:
    """Training loss (and validation loss) against step, the learning rate schedule on the right axis."""
    if not curve.steps:
        raise ValueError("no logged training steps")
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"drawing a PNG needs matplotlib: {PLOT_EXTRA}") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(curve.steps, curve.losses, color="tab:blue", lw=1.4, label="training loss")
    if curve.evals:
        ax.plot(*zip(*curve.evals, strict=True), "o-", color="tab:red", ms=4, label="validation loss")
    lrs = [(s, lr) for s, lr in zip(curve.steps, curve.learning_rates, strict=True) if lr is not None]
    if lrs:
        right = ax.twinx()
        right.plot(*zip(*lrs, strict=True), color="tab:gray", ls=":", lw=1.2, label="learning rate")
        right.set_ylabel("learning rate")
        right.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_file(result_path: str | Path, out: str | Path) -> Path:
    """Plot a saved range-test result (``result.json`` or a compact result file), an LRSweep saved with
    ``kubectl get lrsweep NAME -o json``, or a fine-tune's progress lines (its stdout, or its pod's log).

    The raw loss is drawn too when ``curve.csv`` lies beside a result."""
    text = Path(result_path).read_text()
    try:
        data = json.loads(text)
    except ValueError:  # several lines: a trainer's progress
        return draw_training(training_curve(text.splitlines()), f"fine-tune: {Path(result_path).name}", out)
    if isinstance(data, dict) and "event" in data:  # a single progress line
        return draw_training(training_curve([text]), f"fine-tune: {Path(result_path).name}", out)
    if isinstance(data, dict) and is_sweep_object(data):
        return draw(sweep_figure(data), out)
    if isinstance(data, dict) and "apiVersion" in data:
        raise ValueError(
            f"{result_path} holds a {data.get('kind')} without a status; plot takes a range-test result or "
            "an LRSweep (kubectl get lrsweep NAME -o json)"
        )
    result = parse_result(data)
    if not isinstance(result, RangeTestResult):
        raise ValueError(f"{result_path} holds a {result.kind} result; only range-test results have a curve")
    raw = None
    csv = Path(result_path).with_name("curve.csv")
    if csv.is_file():
        lines = csv.read_text().split()
        keys = lines[0].split(",")
        raw = [dict(zip(keys, map(float, line.split(",")), strict=True)) for line in lines[1:]]
    return plot_range_test(result, out, raw)
