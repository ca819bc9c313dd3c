# ruff: noqa: RUF003  (σ and Δ are the statistics' names)
"""Across tasks: each recommender's totals, the issue's targets for the default recommender and whether
they are met, and how far each verdict leans on which tasks were drawn."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.common import percentile, table
from benchmarks.quality.scoring import REGRET_CAP, TaskReport, family


@dataclass
class Totals:
    """One recommender across tasks."""

    n: int = 0
    hits: int = 0
    regret_tau: float = 0.0
    deltas: list[float] = field(default_factory=list)
    signed: list[float] = field(default_factory=list)
    fine_tunes: list[float] = field(default_factory=list)  # steps / the fine-tune's steps per task-seed
    share: list[float] = field(default_factory=list)  # steps / oracle steps per task-seed
    seconds: list[float] = field(default_factory=list)
    spreads: list[float] = field(default_factory=list)  # per task
    tasks: int = 0

    @property
    def mean_regret(self) -> float:
        return self.regret_tau / max(self.n, 1)


def mean_or_none(xs: Sequence[float]) -> float | None:
    """The mean of ``xs``; ``None`` (a blank cell) when there are none."""
    return sum(xs) / len(xs) if xs else None


def totals(reports: Sequence[TaskReport]) -> dict[str, Totals]:
    """Across tasks, per recommender family: regret/τ (capped per task-seed), hits, Δlog10, compute."""
    by: dict[str, Totals] = {}
    for r in reports:
        tau = r.oracle.tau
        for s in r.scores:
            t = by.setdefault(family(s.row.name), Totals())
            t.tasks += 1
            t.n += s.n
            t.hits += s.hits
            t.regret_tau += sum(min(x / tau, REGRET_CAP) for x in s.regrets)
            t.deltas += [d for d in s.deltas if d is not None]
            t.signed += [d for d in s.signed if d is not None]
            t.fine_tunes += [steps / r.steps for steps in s.row.steps]
            t.share += [steps / r.oracle_steps for steps in s.row.steps]
            t.seconds += s.row.seconds
            if s.spread is not None:
                t.spreads.append(s.spread)
    return by


def summary_table(by: dict[str, Totals]) -> str:
    rows = []
    for key, t in sorted(by.items(), key=lambda kv: (kv[1].mean_regret, -kv[1].hits)):
        rows.append(
            [
                key,
                t.mean_regret,
                f"{t.hits}/{t.n}",
                mean_or_none(t.deltas),
                mean_or_none(t.signed),
                mean_or_none(t.fine_tunes),
                mean_or_none(t.share),
                mean_or_none(t.seconds),
                mean_or_none(t.spreads),
            ]
        )
    return table(
        [
            "recommender",
            "mean regret/τ",
            "hits",
            "mean |Δlog10|",
            "mean Δlog10 (bias)",
            "fine-tunes' worth",
            "share of oracle",
            "wall s / seed",
            "seed spread (dec)",
        ],
        rows,
    )


@dataclass
class Target:
    name: str
    value: str
    ok: bool | None  # None: not judged (e.g. one seed: no spread)
    interval: str = ""  # the judged figure over resampled tasks (see :func:`resampled_figures`)


HITS, REGRET_RATIO, COMPUTE, COMPUTE_MAX, SPREAD = "hits", "regret ratio", "compute", "compute max", "spread"
"""The figures the targets judge (:func:`target_figures`)."""


@dataclass(frozen=True)
class Threshold:
    """A pre-registered target: its name in the report, its bound and on which side the figure must lie."""

    name: str
    side: str  # ">=" or "<="
    bound: float


THRESHOLDS: dict[str, Threshold] = {
    HITS: Threshold("hits ≥ 90% of task-seeds", ">=", 0.9),
    REGRET_RATIO: Threshold("mean regret ≤ ½ short grid's", "<=", 0.5),
    COMPUTE_MAX: Threshold("compute ≤ 2 fine-tunes' worth", "<=", 2.0),
    SPREAD: Threshold("seed spread ≤ 0.15 decades", "<=", 0.15),
}
"""Each judged figure's target, named as the report names it beside the bound it states."""


def meets(key: str, value: float) -> bool:
    """Whether the figure ``key`` at ``value`` meets its target (:data:`THRESHOLDS`)."""
    t = THRESHOLDS[key]
    return value >= t.bound if t.side == ">=" else value <= t.bound


def target_figures(by: dict[str, Totals], default: str = "adaptive") -> dict[str, float]:
    """The numbers the targets judge for the default recommender: its hit share, its mean regret/τ over the
    short grid's, its mean and largest compute in fine-tunes' worth and its mean seed spread (decades);
    a figure whose rows are missing is left out."""
    a = by.get(default)
    if a is None or a.n == 0:
        return {}
    out = {HITS: a.hits / a.n}
    g = by.get("short-grid")
    if g is not None and g.n:
        out[REGRET_RATIO] = a.mean_regret / max(g.mean_regret, 1e-9)
    if a.fine_tunes:
        out[COMPUTE] = sum(a.fine_tunes) / len(a.fine_tunes)
        out[COMPUTE_MAX] = max(a.fine_tunes)
    if a.spreads:
        out[SPREAD] = sum(a.spreads) / len(a.spreads)
    return out


TARGET_DRAWS = 4000
"""Resampled task sets behind each target's interval (its 5th to 95th percentile)."""


def resampled_figures(
    reports: Sequence[TaskReport], draws: int = TARGET_DRAWS, seed: int = 0
) -> dict[str, list[float]]:
    """Each target figure over ``draws`` sets of as many tasks drawn from ``reports`` with replacement (a
    task's seeds stay together, since they share its oracle, its τ and its spread); nothing for fewer than
    two tasks."""
    if len(reports) < 2:
        return {}
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(draws):
        drawn = [reports[rng.randrange(len(reports))] for _ in reports]
        for key, value in target_figures(totals(drawn)).items():
            samples.setdefault(key, []).append(value)
    return samples


def target_intervals(samples: dict[str, list[float]], level: float = 0.9) -> dict[str, tuple[float, float]]:
    """How far each target figure could move with other tasks of the same kind: its percentile interval
    over :func:`resampled_figures`. With six tasks this is a rough width, not a test."""
    tail = 50 * (1 - level)
    return {key: (percentile(xs, tail), percentile(xs, 100 - tail)) for key, xs in samples.items()}


def met_shares(samples: dict[str, list[float]]) -> dict[str, float]:
    """The share of :func:`resampled_figures`' task sets on which each judged figure meets its target:
    whether a verdict would survive another draw of tasks."""
    return {key: sum(meets(key, x) for x in xs) / len(xs) for key, xs in samples.items() if key in THRESHOLDS}


def check_targets(
    by: dict[str, Totals], default: str = "adaptive", samples: dict[str, list[float]] | None = None
) -> list[Target]:
    """The product's targets for its default recommender, pre-registered (:data:`THRESHOLDS`): hits on ≥ 90%
    of task-seeds; mean regret/τ ≤ half the equal-compute short grid's; at most 2 full fine-tunes' worth of
    steps on every task-seed; mean seed-to-seed spread ≤ 0.15 decades. ``samples``
    (:func:`resampled_figures`) adds each figure's interval over resampled tasks and the share of them on
    which the target is met; the verdict is the measured figure's."""
    out: list[Target] = []
    figures = target_figures(by, default)
    ranges = target_intervals(samples or {})
    shares = met_shares(samples or {})

    def span(key: str, form: str, scale: float = 1.0, unit: str = "") -> str:
        """The figure's interval, and the share of draws meeting its target if it has one."""
        if key not in ranges:
            return ""
        lo, hi = ranges[key]
        text = f"{lo * scale:{form}}-{hi * scale:{form}}{unit}"
        return f"{text} (met on {shares[key]:.0%} of draws)" if key in shares else text

    if not figures:
        return [Target(f"{default} ran", "no rows", False)]
    a = by[default]
    share = figures[HITS]
    out.append(
        Target(
            THRESHOLDS[HITS].name,
            f"{a.hits}/{a.n} = {share:.0%}",
            meets(HITS, share),
            span(HITS, ".0f", 100, "%"),
        )
    )
    if REGRET_RATIO in figures:
        g = by["short-grid"]
        out.append(
            Target(
                THRESHOLDS[REGRET_RATIO].name,
                f"{a.mean_regret:.2f} τ vs {g.mean_regret:.2f} τ (ratio {figures[REGRET_RATIO]:.2f})",
                meets(REGRET_RATIO, figures[REGRET_RATIO]),
                span(REGRET_RATIO, ".2f"),
            )
        )
    worst = figures.get(COMPUTE_MAX, math.inf)
    out.append(
        Target(
            THRESHOLDS[COMPUTE_MAX].name,
            f"mean {figures.get(COMPUTE, 0):.2f}, max {worst:.2f}",
            meets(COMPUTE_MAX, worst),
            f"mean {span(COMPUTE, '.2f')}, max {span(COMPUTE_MAX, '.2f')}" if COMPUTE in ranges else "",
        )
    )
    if SPREAD in figures:
        out.append(
            Target(
                THRESHOLDS[SPREAD].name,
                f"mean {figures[SPREAD]:.2f}, max {max(a.spreads):.2f}",
                meets(SPREAD, figures[SPREAD]),
                span(SPREAD, ".2f"),
            )
        )
    else:
        out.append(Target(THRESHOLDS[SPREAD].name, "one seed: not measured", None))
    return out


def targets_table(targets: Sequence[Target]) -> str:
    """The verdicts, with the intervals' column when any target has one."""
    verdict = {True: "**met**", False: "**missed**", None: "-"}
    resampled = any(t.interval for t in targets)
    extra = ["90% interval over resampled tasks"] if resampled else []
    return table(
        ["target (default recommender)", "measured", "verdict", *extra],
        [[t.name, t.value, verdict[t.ok], *([t.interval or "-"] if resampled else [])] for t in targets],
    )
