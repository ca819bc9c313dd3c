# ruff: noqa: RUF002, RUF003  (σ and Δ are the statistics' names)
"""Scoring a recommendation: the oracle's grid of full-length runs, a recommender's row, and its regret,
hit, distance, compute and seed spread on one task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

REGRET_CAP = 100.0
"""A single task-seed contributes at most this many τ to a mean (one wild miss must not hide the rest)."""


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


def check_rows(named: Sequence[str] | None, quick: bool) -> tuple[str, ...] | None:
    """The rows that get check runs, from ``--check-rows``: those named (none when it is given alone);
    without it every row (``None``), or none with ``--quick``."""
    if named is not None:
        return tuple(named)
    return () if quick else None


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


def oracle_key(lr: float, seed: int) -> str:
    return f"{float(lr):.6e}|{int(seed)}"


def parse_oracle_key(key: str) -> tuple[float, int]:
    """The (learning rate, seed) that :func:`oracle_key` wrote."""
    lr, seed = key.split("|")
    return float(lr), int(seed)
