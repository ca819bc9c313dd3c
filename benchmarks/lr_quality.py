# ruff: noqa: RUF002, RUF003  (σ and Δ are the statistics' names)
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
* ``fastai:<rule>``: fastai's published rules (``quality.peer_rules``) on our range test's curve;
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
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, fmt, provenance, write_results
from benchmarks.quality.execution import Runner
from benchmarks.quality.peer_rules import FASTAI_RULES, fastai_view
from benchmarks.quality.rendering import render
from benchmarks.quality.scoring import (
    Oracle,
    Row,
    TaskReport,
    ceiling_row,
    check_rows,
    checked,
    log_spaced,
    oracle_key,
    unchecked,
)
from benchmarks.quality.store import (
    TASKS_FILE,
    cached_oracle,
    committed_results,
    job_fingerprints,
    job_id,
    journal_path,
    read_journal,
    results_name,
    save_oracle,
)
from benchmarks.quality.task_setup import Task, build_task, load_tasks


def grid_sweep_defaults() -> tuple[list[float], int]:
    """An LRSweep's ``grid`` method at its defaults: ``count`` log-spaced LRs, ``steps`` each."""
    from finetune_operator.api import TrialsSpec

    spec = TrialsSpec()
    return log_spaced(spec.min_learning_rate, spec.max_learning_rate, spec.count), spec.steps


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
