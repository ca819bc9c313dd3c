"""What does an adaptive setting buy on one task? ``recommend`` with overrides, on the committed oracle.

``lr_quality.py`` runs every recommender at the product's defaults. This probe runs only the product's
``finetune-trainer recommend`` on one task, per seed, with ``--set KEY=VALUE`` overrides (longer trials, more
finalists, ...), and scores each recommendation against the oracle ``lr_quality.py`` committed for that task
(``results/lr_quality*.json``), beside the committed default row: a setting is judged in minutes, without
re-running the oracle. As in ``lr_quality.py``, each recommended LR that neither the oracle grid nor a check
run holds gets a full-length check run on its seed, and regret is measured with it.

    python benchmarks/recommend_probe.py --set adaptive.trialSteps=60     # minilm-noisy-long, seeds 0 1 2
    python benchmarks/recommend_probe.py --tasks benchmarks/tasks_heldout.yaml --task gpt2-wide-full \\
        --set adaptive.finalists=5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, fmt, table, write_results
from benchmarks.quality.execution import Runner
from benchmarks.quality.scoring import (
    REGRET_CAP,
    Oracle,
    Row,
    Score,
    TaskReport,
    oracle_key,
    score,
    unchecked,
)
from benchmarks.quality.store import TASKS_FILE, results_name, save_oracle
from benchmarks.quality.task_setup import build_task, load_tasks, named_task, task_key

DEFAULT_TASK = "minilm-noisy-long"
DEFAULT_ROW = "adaptive"
DEFAULT_SEEDS = [0, 1, 2]


def committed(tasks: Path, name: str, key: str) -> tuple[Oracle, Row | None]:
    """The oracle (and the default ``adaptive`` row) that ``lr_quality.py`` committed for task ``name``; a
    clear error when there is none, or when it was measured on another version of the task."""
    path = RESULTS / f"{results_name(tasks)}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python benchmarks/lr_quality.py --tasks {tasks}` first")
    reports = {t["name"]: t for t in json.loads(path.read_text())["tasks"]}
    rerun = f"run `python benchmarks/lr_quality.py --tasks {tasks}`"
    if name not in reports:
        raise SystemExit(f"{path} has no task {name!r}: {rerun}")
    if reports[name].get("key") != key:
        raise SystemExit(
            f"{path} holds task {name!r} as it was before its definition changed (key "
            f"{reports[name].get('key')!r}, now {key!r}): {rerun} again"
        )
    report = TaskReport.from_json(reports[name])
    default = next((r for r in report.rows if r.name == DEFAULT_ROW), None)
    return report.oracle, default


def slug(sets: list[str], seeds: list[int] | None = None) -> str:
    """A file-name-safe summary of the overrides (``adaptive.trialSteps=60`` → ``adaptive.trialSteps-60``),
    and of the seeds where they are not the default ones (``_seeds-1``): a probe of other seeds writes its
    own file, not over one that ran the same overrides on every seed."""
    name = "_".join(re.sub(r"[^A-Za-z0-9.]+", "-", s) for s in sets) or "defaults"
    if seeds is not None and list(seeds) != DEFAULT_SEEDS:
        name += "_seeds-" + "-".join(str(s) for s in seeds)
    return name


def rows_of(results: dict[int, dict[str, Any]], seeds: list[int], name: str) -> Row:
    """The probe's recommendations as an ``lr_quality`` row (one entry per seed)."""
    return Row(
        name,
        [results[s].get("lr") for s in seeds],
        [int(results[s].get("steps") or 0) for s in seeds],
        [float(results[s].get("seconds") or 0.0) for s in seeds],
        notes=[{k: results[s].get(k) for k in ("decidedBy", "evidence", "trials", "error")} for s in seeds],
        seeds=list(seeds),
    )


def summary(scored: Score, oracle: Oracle, steps: int) -> str:
    """Hits, mean regret in τ (each seed capped at ``REGRET_CAP``, as ``lr_quality``'s totals) and compute."""
    n = max(scored.n, 1)
    regret = sum(min(r / oracle.tau, REGRET_CAP) for r in scored.regrets) / n
    worth = sum(scored.row.steps) / steps / n
    return f"{scored.hits}/{scored.n} hits, mean regret {fmt(regret)} τ, {fmt(worth)} fine-tunes' worth"


def trials_text(trials: list[list[Any]] | None) -> str:
    """``recommend``'s trials as ``stage: lr/steps → loss``, in the order they ran (``-`` for none)."""
    return "; ".join(f"{st}: {fmt(lr)}/{n} → {fmt(loss)}" for st, lr, n, loss in trials or []) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=TASKS_FILE, help="task definitions (YAML)")
    parser.add_argument("--task", default=DEFAULT_TASK, help="the task's name in --tasks")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a config override"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-write", action="store_true", help="print only, do not write results/")
    args = parser.parse_args(argv)
    for item in args.sets:
        if "=" not in item:
            parser.error(f"--set {item!r}: write KEY=VALUE, e.g. adaptive.trialSteps=60")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = load_tasks(args.tasks)
    chosen = named_task(spec, args.task, args.tasks)
    oracle, default = committed(args.tasks, args.task, task_key(chosen))
    task = build_task(chosen, spec["oracle"])
    started = time.monotonic()
    runner = Runner(max(1, args.workers))
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="recommend-probe-") as scratch:
        job = {"kind": "recommend", "config": str(task.config_path), "scratch": scratch, "sets": args.sets}
        for seed in args.seeds:
            runner.submit(job | {"seed": seed})
        for done, res in runner.drain():
            results[done["seed"]] = res
            print(f"seed {done['seed']}: {res.get('error') or fmt(res.get('lr'))}")
        check = {"kind": "trial", "config": str(task.config_path), "scratch": scratch}  # the plain fine-tune
        for lr, seed in unchecked(rows_of(results, args.seeds, "probe"), oracle):
            runner.submit(check | {"seed": seed, "lr": lr})
        for done, res in runner.drain():
            print(f"check {done['lr']:.3g} seed {done['seed']}: {res.get('error') or fmt(res.get('loss'))}")
            if not res.get("error"):  # a failed check leaves that seed interpolated
                key = oracle_key(done["lr"], done["seed"])
                oracle.checks[key] = res.get("loss")
                save_oracle(task, {key: res.get("loss")})
    runner.close()
    seconds = time.monotonic() - started
    overrides = ", ".join(f"`{s}`" for s in args.sets) or "none"
    probe = score(rows_of(results, args.seeds, "probe"), oracle)
    best_lr, lstar = oracle.best
    lines = [
        [seed, lr, fmt(r / oracle.tau), "yes" if oracle.hit(r) else "no", steps / task.steps, note]
        for seed, lr, r, steps, note in zip(
            args.seeds,
            probe.row.lrs or [],
            probe.regrets,
            probe.row.steps,
            [n.get("error") or n.get("decidedBy") for n in probe.row.notes],
            strict=True,
        )
    ]
    parts = [
        f"Task `{task.name}` (fine-tune {task.steps} steps): {task.description}.",
        "",
        f"`finetune-trainer recommend` with overrides {overrides}, seeds {args.seeds}, scored on the oracle "
        f"committed in `results/{results_name(args.tasks)}.json` (best LR {best_lr:.3g}, L* = {lstar:.4g}, "
        f"τ = {oracle.tau:.3g}). {seconds:.0f} s wall on {max(1, args.workers)} workers.",
        "",
        table(["seed", "LR", "regret/τ", "hit", "fine-tunes", "decided by"], lines),
        "",
        f"Probe: {summary(probe, oracle, task.steps)}.",
    ]
    if default is not None:
        parts.append(f"The committed default row: {summary(score(default, oracle), oracle, task.steps)}.")
    parts += ["", "Each seed's trials (stage: LR / steps → validation loss):", ""]
    for seed, note in zip(args.seeds, probe.row.notes, strict=True):
        parts.append(f"- seed {seed}: {trials_text(note.get('trials'))}")
    body = "\n".join(parts)
    print(body)
    if not args.no_write:
        name = f"recommend_probe_{task.name}_{slug(args.sets, args.seeds)}"
        path = write_results(name, "One adaptive setting on one task", body, argv, script="recommend_probe")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
