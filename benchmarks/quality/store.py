# ruff: noqa: RUF003  (σ and Δ are the statistics' names)
"""What runs keep and reuse: the work cache, the recommender jobs' journal keyed by the trainer source
they depend on, and the committed results whose oracle runs ``--resume`` reads."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import RESULTS
from benchmarks.quality.scoring import TaskReport, oracle_key

if TYPE_CHECKING:
    from benchmarks.quality.task_setup import Task


TASKS_FILE = Path(__file__).resolve().parents[1] / "tasks.yaml"
"""The in-sample task file; another task file's results carry its name (:func:`results_name`)."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune-operator" / "lr_quality"
"""The work cache outside the clone: built data and models, trainer configs, oracle runs, job journals."""


def digest(data: Any) -> str:
    """A short digest of ``data``: the key of a built data set or model, a task's definition, a job."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def committed_results(tasks: Path) -> list[Path]:
    """The committed results whose oracles a run of this task file may reuse: ``results/lr_quality.json``
    and the task file's own (``lr_quality_heldout.json`` for ``tasks_heldout.yaml``); never another task
    file's (the GPU file's oracle ran on another machine)."""
    names = dict.fromkeys(["lr_quality", results_name(tasks)])
    return [RESULTS / f"{n}.json" for n in names]


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


def save_oracle(task: Task, entries: dict[str, float | None]) -> None:
    path = CACHE / "oracle" / f"{task.name}-{task.key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(old | entries, indent=0))


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


CPU_TASKS = (TASKS_FILE, TASKS_FILE.with_name("tasks_heldout.yaml"))
"""The CPU task files, in-sample and held out, on which the rules were chosen or checked."""
CPU_RESULTS = tuple(results_name(t) for t in CPU_TASKS)
"""Their committed runs, in the same order: what the replays, which try other rules on the committed runs,
read."""
FRESH_TASKS = TASKS_FILE.with_name("tasks_fresh.yaml")
"""Tasks run once, after every rule was chosen."""
FRESH_RESULTS = results_name(FRESH_TASKS)
"""Their committed run. The replays leave it out, so that no rule is ever chosen on it."""
STANDING_RESULTS = (*CPU_RESULTS, FRESH_RESULTS)
"""Every committed CPU run: what the scripts that report the recommender's standing (its targets' intervals,
its misses, the hit noise) read."""


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
