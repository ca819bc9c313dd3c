"""Does a trial's train/validation gap show where a longer run will memorise? ``adaptive``'s trials re-run and
their gaps read, then a cap at the gap replayed on the committed runs.

    python benchmarks/trial_gap_probe.py [--thresholds ...] [--no-write]

The misses that remain are mostly classifiers whose full-length runs memorise late (``results/
miss_curves.md``): their short trials still favour the ceiling. A trial that already fits its own training
rows better than the validation rows may be where that starts. ``recommend``'s result carries only each
trial's validation loss, so this probe re-runs the product's ``finetune-trainer recommend`` on every
task-seed of both CPU task files (about 9 minutes on 2 cores; the observations are cached per trainer
source and task, so a second run only replays). It wraps the trial runner to read each trial's own result,
which also holds its mean training loss over its last steps. It checks that every recommendation equals the
one ``lr_quality.py`` committed, and then replays one rule: the recommendation is capped at the learning rate
where the longest trials' *gap ratio* ((validation - training loss) / validation loss) first rises above a
threshold. Regret is interpolated as in ``recalibration_replay.py``, so the figures are indicative only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, table, write_results
from benchmarks.quality import execution, scoring, store, task_setup
from benchmarks.recalibration_replay import row, seed_regret

TASK_FILES = store.CPU_TASKS
"""The CPU task files, in-sample and held out, in the order of ``store.CPU_RESULTS``."""
THRESHOLDS = (0.03, 0.05, 0.08, 0.1, 0.15)
SAME = 1e-6
"""Relative difference below which a re-run's recommendation is the committed one."""


@dataclass(frozen=True)
class Trial:
    """One trial as its own result reports it."""

    stage: int
    lr: float
    steps: int
    eval_loss: float | None
    train_loss: float | None

    @property
    def gap_ratio(self) -> float | None:
        """(validation - training loss) / validation loss; ``None`` unless both are finite."""
        if self.eval_loss is None or self.train_loss is None or not self.eval_loss > 0:
            return None
        if not (math.isfinite(self.eval_loss) and math.isfinite(self.train_loss)):
            return None
        return (self.eval_loss - self.train_loss) / self.eval_loss


def longest(trials: Sequence[Trial]) -> list[Trial]:
    """The trials of the last stage that ran (the longest), by learning rate."""
    if not trials:
        return []
    last = max(t.stage for t in trials)
    return sorted((t for t in trials if t.stage == last), key=lambda t: t.lr)


def gap_cap(trials: Sequence[Trial], threshold: float) -> float | None:
    """The learning rate at which the longest trials' gap ratio first rises above ``threshold``, going up:
    interpolated in log10(LR) from the trial below; the lowest trial's LR when it is already above; ``None``
    when no trial's is."""
    below: tuple[float, float] | None = None
    for t in longest(trials):
        ratio = t.gap_ratio
        if ratio is None:
            continue
        if ratio > threshold:
            if below is None:
                return t.lr
            lr0, r0 = below
            share = (threshold - r0) / (ratio - r0)
            return 10 ** (math.log10(lr0) + share * (math.log10(t.lr) - math.log10(lr0)))
        below = (t.lr, ratio)
    return None


def observe(job: tuple[str, str, int, str]) -> dict[str, Any]:
    """``lr_quality.py``'s own ``recommend`` job on one task-seed (in a worker), every trial's own result
    observed on the way."""
    import finetune_trainer.recommend as recommend

    name, config, seed, key = job
    seen: list[tuple[float, int, float | None, float | None]] = []
    run_trial = recommend.run_trial

    def observed(cfg: Any, lr: float, *args: Any, **kwargs: Any) -> Any:
        result = run_trial(cfg, lr, *args, **kwargs)
        seen.append((lr, result.steps, result.eval_loss, result.train_loss))
        return result

    recommend.run_trial = observed
    try:
        with tempfile.TemporaryDirectory(prefix="gap-probe-") as scratch:
            res = execution.execute({"kind": "recommend", "seed": seed, "config": config, "scratch": scratch})
    finally:
        recommend.run_trial = run_trial
    if "error" in res:
        raise RuntimeError(f"{name} seed {seed}: {res['error']}")
    stages = [int(stage) for stage, *_ in res["trials"]]
    return {
        "task": name,
        "key": key,
        "seed": seed,
        "lr": res["lr"],
        "trials": [[stage, *trial] for stage, trial in zip(stages, seen, strict=True)],
    }


def cache_path() -> Path:
    return store.CACHE / "trial_gap" / f"{store.trainer_fingerprint()}.jsonl"


def observations(workers: int) -> list[dict[str, Any]]:
    """Every task-seed's observed sweep: from the cache for this trainer source and task (its ``task_key``),
    else run (and cached)."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    have = {(c["task"], c["seed"], c.get("key")) for c in cached}
    jobs = []
    for file in TASK_FILES:
        spec = task_setup.load_tasks(file)
        for t in spec["tasks"]:
            task = task_setup.build_task(t, spec["oracle"])
            jobs += [(task.name, str(task.config_path), int(s), task.key) for s in spec["recommenderSeeds"]]
    todo = [j for j in jobs if (j[0], j[2], j[3]) not in have]
    if todo:
        print(f"running {len(todo)} of {len(jobs)} sweeps", file=sys.stderr)
        with (
            ProcessPoolExecutor(workers, initializer=execution.init_pool_worker) as pool,
            path.open("a") as f,
        ):
            for seen in pool.map(observe, todo):
                f.write(json.dumps(seen) + "\n")
                f.flush()
                cached.append(seen)
    order = {(j[0], j[2], j[3]): i for i, j in enumerate(jobs)}
    ours = [c for c in cached if (c["task"], c["seed"], c.get("key")) in order]
    return sorted(ours, key=lambda c: order[c["task"], c["seed"], c["key"]])


def trials_of(seen: dict[str, Any]) -> list[Trial]:
    return [Trial(int(s), float(lr), int(n), ev, tr) for s, lr, n, ev, tr in seen["trials"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; no results file")
    args = parser.parse_args(argv)
    reports = {r.name: (name, r) for name in store.CPU_RESULTS for r in store.committed_reports(name)}
    seen_all = observations(args.workers)

    def regret_tau(task: str, seed: int, lr: float | None) -> tuple[float, bool]:
        oracle = reports[task][1].oracle
        regret = oracle.worst if lr is None else seed_regret(oracle, lr, seed)
        return min(regret / oracle.tau, scoring.REGRET_CAP), oracle.hit(regret)

    lines, differ = [], []
    for seen in seen_all:
        task, seed, lr = seen["task"], int(seen["seed"]), seen["lr"]
        report = reports[task][1]
        adaptive = row(report, "adaptive")
        committed = next((x for i, x in enumerate(adaptive.lrs or []) if adaptive.seed(i) == seed), None)
        if (lr is None) != (committed is None) or (lr and committed and abs(lr / committed - 1) > SAME):
            differ.append(f"{task} seed {seed}: {fmt(lr)} now, {fmt(committed)} committed")
        tau, hit = regret_tau(task, seed, lr)
        best = report.oracle.best[0]
        trials = longest(trials_of(seen))
        lines.append(
            [
                task,
                "in-sample" if reports[task][0] == store.CPU_RESULTS[0] else "held out",
                str(seed),
                "-" if lr is None else f"{math.log10(lr / best):+.2f}",
                f"{tau:.2f}" + ("" if hit else " **miss**"),
                f"stage {trials[0].stage}, {trials[0].steps} steps" if trials else "-",
                ", ".join(f"{fmt(t.lr)}: {fmt(t.gap_ratio, 2)}" for t in trials),
            ]
        )
    header = ["task", "set", "seed", "Δlog10 vs best", "regret/τ", "longest trials", "LR: gap ratio"]
    body = [
        f"{len(seen_all)} task-seeds re-run with `finetune-trainer recommend`; "
        + (
            "every recommendation equals the committed one."
            if not differ
            else f"{len(differ)} differ from the committed ones: " + "; ".join(differ) + "."
        ),
        "",
        "Each task-seed's longest trials (the last stage that ran), their gap ratio "
        "((validation - training loss) / validation loss; the training loss is the mean of the trial's last "
        "10 steps, in training mode, dropout included), and the committed recommendation's distance from the "
        "oracle's best LR:",
        "",
        table(header, lines),
        "",
        "The recommendation capped where the longest trials' gap ratio first rises above a threshold "
        "(interpolated in log10 LR; hits and mean regret/τ):",
        "",
    ]
    replay = []
    for threshold in [None, *args.thresholds]:
        scores: dict[str, list[tuple[float, bool]]] = {}
        for seen in seen_all:
            task, seed, lr = seen["task"], int(seen["seed"]), seen["lr"]
            cap = None if threshold is None or lr is None else gap_cap(trials_of(seen), threshold)
            scored = regret_tau(task, seed, lr if cap is None else min(lr, cap))
            for key in (reports[task][0], "pooled"):
                scores.setdefault(key, []).append(scored)
        replay.append(
            ["none (the product)" if threshold is None else fmt(threshold)]
            + [
                f"{sum(hit for _, hit in v)}/{len(v)}, {sum(tau for tau, _ in v) / len(v):.2f} τ"
                for v in (scores[store.CPU_RESULTS[0]], scores[store.CPU_RESULTS[1]], scores["pooled"])
            ]
        )
    body += [table(["gap-ratio cap", "in-sample", "held out", "pooled"], replay)]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        path = write_results(
            "trial_gap_probe", "Trial gap probe: does a trial's train/validation gap help?", text, argv
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
