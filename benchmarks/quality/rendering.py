# ruff: noqa: RUF001, RUF003  (σ and Δ are the statistics' names)
"""The results file's text: the per-task tables, adaptive's sweeps seed by seed, the oracle grid and the
check runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.common import fmt, table
from benchmarks.quality.scoring import REGRET_CAP, TaskReport, parse_oracle_key
from benchmarks.quality.verdicts import (
    TARGET_DRAWS,
    Target,
    Totals,
    check_targets,
    mean_or_none,
    resampled_figures,
    summary_table,
    targets_table,
    totals,
)


def task_table(report: TaskReport) -> str:
    tau = report.oracle.tau
    rows = []
    for s in report.scores:
        deltas = [d for d in s.deltas if d is not None]
        rows.append(
            [
                s.row.name,
                s.geo_lr,
                mean_or_none(deltas),
                sum(s.regrets) / max(s.n, 1),
                sum(min(x / tau, REGRET_CAP) for x in s.regrets) / max(s.n, 1),
                f"{s.hits}/{s.n}",
                mean_or_none([x / report.steps for x in s.row.steps]),
                mean_or_none([x / report.oracle_steps for x in s.row.steps]),
                mean_or_none(s.row.seconds),
                s.spread,
            ]
        )
    return table(
        [
            "recommender",
            "LR (geo-mean)",
            "|Δlog10|",
            "regret",
            "regret/τ",
            "hit",
            "fine-tunes",
            "of oracle",
            "wall s",
            "spread (dec)",
        ],
        rows,
    )


def holds_best(note: dict[str, Any], best_lr: float) -> bool | None:
    """Whether a sweep's reported interval (the LRs it judged within noise of its pick) holds the oracle's
    best LR; ``None`` where it reported none."""
    span = note.get("interval") or {}
    low, high = span.get("low"), span.get("high")
    if low is None or high is None:
        return None
    slack = 1e-9  # the oracle's LRs and the interval's ends are both rounded through JSON
    return low * (1 - slack) <= best_lr <= high * (1 + slack)


def interval_coverage(reports: Sequence[TaskReport]) -> tuple[int, int]:
    """(task-seeds whose adaptive interval holds the oracle's best LR, task-seeds)."""
    held = [
        holds_best(note, r.oracle.best[0])
        for r in reports
        for s in r.scores
        if s.row.name == "adaptive"
        for note in s.row.notes
    ]
    return sum(1 for h in held if h), len(held)


def adaptive_table(report: TaskReport) -> str:
    s = next(x for x in report.scores if x.row.name == "adaptive")
    best_lr = report.oracle.best[0]
    rows = []
    for i, note in enumerate(s.row.notes):
        span = note.get("interval") or {}
        trials = note.get("trials") or []
        rows.append(
            [
                i,
                (s.row.lrs or [None])[i],
                s.signed[i],
                s.regrets[i],
                note.get("decidedBy"),
                note.get("evidence"),
                f"{fmt(span.get('low'))}..{fmt(span.get('high'))}" if span else "-",
                {True: "yes", False: "no", None: "-"}[holds_best(note, best_lr)],
                note.get("edge"),
                f"{sum(1 for t in trials if t[0] == 1)}+{sum(1 for t in trials if t[0] == 2)}",
                s.row.steps[i],
                note.get("error") or "",
            ]
        )
    return table(
        [
            "seed",
            "LR",
            "Δlog10",
            "regret",
            "decided by",
            "evidence",
            "interval",
            "holds best",
            "edge",
            "trials (1+2)",
            "steps",
            "error",
        ],
        rows,
    )


def prodigy_line(report: TaskReport) -> str:
    """Prodigy's final step size per seed: the LR it settled on, next to the oracle's best."""
    row = next((r for r in report.rows if r.lrs is None), None)
    ds = [n.get("d") for n in row.notes] if row else []
    return (
        f"Prodigy's final step size d (its effective peak LR) per seed: {', '.join(fmt(d) for d in ds)} "
        f"(oracle best {fmt(report.oracle.best[0])})."
    )


def oracle_table(report: TaskReport, seeds: Sequence[int]) -> str:
    o = report.oracle
    rows = [[lr, m, *o.losses[lr]] for lr, m in zip(o.lrs, o.means, strict=True)]
    return table(["LR", "mean eval loss", *[f"seed {s}" for s in seeds]], rows)


MEASURED = (
    "a full-length `trial` at each suggested LR on the seed that suggested it (a check run; the oracle's own "
    "run where the LR is a grid point), minus that seed's loss at the best LR, at least 0 (a paired "
    "difference)"
)


INTERPOLATED = (
    "the oracle's mean loss interpolated linearly in log-LR at the suggestion, minus L*, which overstates "
    "the loss between grid points of a convex basin; on a grid point, and for Prodigy, paired with the "
    "seed's run at the best LR"
)


def regret_text(rows: tuple[str, ...] | None) -> str:
    """How this run's regret was measured, given the rows that got check runs (see :func:`checked`)."""
    if rows is None:
        return f"*Regret* is measured seed by seed: {MEASURED}."
    if not rows:
        return f"*Regret* (no check runs in this mode): off the grid, {INTERPOLATED}, as in a full run."
    return (
        f"*Regret* of the rows {', '.join(f'`{r}`' for r in rows)} is measured seed by seed: {MEASURED}. "
        f"Other rows reuse a check run where one exists on that seed and LR; elsewhere, off the grid, "
        f"{INTERPOLATED}."
    )


def checks_table(report: TaskReport) -> str:
    """The check runs: learning rate, seed, eval loss, and the paired regret it gives."""
    o = report.oracle
    rows = []
    for (lr, seed), key in sorted((parse_oracle_key(key), key) for key in o.checks):
        rows.append([lr, seed, o.checks[key], o.regret(lr, seed) if seed in o.seeds else None])
    return table(["LR", "seed", "eval loss", "regret"], rows)


def render(
    reports: list[TaskReport], spec: dict[str, Any], facts: dict[str, Any]
) -> tuple[str, dict[str, Totals], list[Target]]:
    by = totals(reports)
    targets = check_targets(by, samples=resampled_figures(reports))
    grid_lrs, grid_steps = facts["grid"]
    parts = [
        "## Setup",
        "",
        "Every product row and the oracle run the product's trainer in-process "
        "(`finetune_trainer.cli.main`, `--metrics-port 0 --result-file`) on a TrainerConfig YAML per task "
        "(local model directory, JSONL train/eval files); torch-lr-finder runs its own `LRFinder` loop and "
        "Prodigy the product's `Trainer`, both on the product's data pipeline and model. "
        f"Oracle: `trial` at the full fine-tune length, {spec['oracle']['points']} log-spaced LRs per task x "
        f"seeds {spec['oracle']['seeds']} (`optimization.seed`: data order, dropout, new heads/adapters). "
        f"Recommenders run with seeds {spec['recommenderSeeds']} at the product's defaults (`adaptive`, "
        "`rangeTest` unset in every config). σ = the seeds' standard deviation of the eval loss at the best "
        f"LR; τ = max(σ, 1% of L*). {regret_text(facts['checked'])} *Hit* = regret ≤ τ; regret/τ is "
        f"capped at {REGRET_CAP:g} per task-seed. *Fine-tunes* = steps spent / the fine-tune's steps "
        "(`maxSteps`, or its `epochs` as the trainer counts them); *of oracle* = steps / all oracle steps. "
        f"Grid sweep: LRSweep `grid` defaults ({len(grid_lrs)} LRs "
        f"{fmt(grid_lrs[0])}..{fmt(grid_lrs[-1])}, {grid_steps} steps each). Short grid: LRs "
        f"{spec['shortGrid']['learningRates']} sharing the steps adaptive spent on that seed. "
        f"torch-lr-finder: {spec['lrFinder']} on the product's data and model. Prodigy: "
        f"{spec['prodigy']}, the task's warmup + cosine, full length. Diverged runs count as the task's "
        "worst oracle loss. Wall times are per seed, measured in a worker while "
        f"{facts['workers']} workers shared the machine.",
        "",
        f"Run: {facts['seconds']:.0f} s wall ({facts['seconds'] / 60:.1f} min), {facts['workers']} workers "
        f"x 1 torch thread, 1-min load average during the run {facts['load']}. Recommender jobs reused from "
        f"an interrupted run with the same trainer source (`--resume`): {facts['reused']}; wall times are "
        f"those measured when each job ran. Check runs: {facts['checks']}.",
        "",
        *(
            ["**Failed jobs** (scored as no suggestion):", "", *[f"- {e}" for e in facts["errors"]], ""]
            if facts.get("errors")
            else []
        ),
        "## Across tasks",
        "",
        summary_table(by),
        "",
        targets_table(targets),
        "",
        *(
            [
                f"The interval is the 5th to 95th percentile of each figure over {TARGET_DRAWS} sets of as "
                "many tasks, drawn from these with replacement (a task's seeds stay together), and the share "
                "of those sets on which the target is met: how far a verdict leans on which tasks were "
                "drawn. The verdict is the measured figure's.",
                "",
            ]
            if any(t.interval for t in targets)
            else []
        ),
        "The interval adaptive reports with its pick (`interval`: the LRs whose fitted loss is within noise "
        "of the pick's, no wider than the LRs its trials tried, and moved with the pick where the horizon "
        "step moved it) holds the oracle's best LR on {}/{} "
        "task-seeds (*holds best* per seed below).".format(*interval_coverage(reports)),
        "",
    ]
    for r in reports:
        best_lr, lstar = r.oracle.best
        edge = "" if r.oracle.interior else " **(best LR at the grid's edge: widen the oracle window)**"
        parts += [
            f"## {r.name}",
            "",
            r.description,
            "",
            f"Oracle best LR {fmt(best_lr)}{edge}, L* = {fmt(lstar, 4)}, σ = {fmt(r.oracle.sigma)}, "
            f"τ = {fmt(r.oracle.tau)}; fine-tune {r.steps} steps, oracle {r.oracle_steps} steps; "
            f"task compute time {r.seconds:.0f} s (summed over workers).",
            "",
            task_table(r),
            "",
            prodigy_line(r),
            "",
            "Adaptive per seed:",
            "",
            adaptive_table(r),
            "",
            "<details><summary>oracle grid</summary>",
            "",
            oracle_table(r, spec["oracle"]["seeds"]),
            "",
            "</details>",
            "",
            *(
                [
                    "<details><summary>check runs (full length, at suggested LRs)</summary>",
                    "",
                    checks_table(r),
                    "",
                    "</details>",
                    "",
                ]
                if r.oracle.checks
                else []
            ),
        ]
    return "\n".join(parts), by, targets
