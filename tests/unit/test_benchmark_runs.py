"""How the LR-quality benchmark runs its jobs: the micro end-to-end run of every row through the real trainer
and the GPU check script on CPU (both slow), the worker pool, --resume on committed oracles, and the job
digests that decide what is reused.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmark_fixtures import committed_results  # noqa: E402

from benchmarks import lr_quality, ramp_fall  # noqa: E402
from benchmarks.quality import execution, scoring, store, task_setup  # noqa: E402


@pytest.mark.slow
def test_lr_quality_micro_run_has_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    """One tiny task through the real trainer (oracle, recommend, range test, trials, peers): ~1 min."""
    assert lr_quality.main(["--micro", "--no-write", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for row in (
        "adaptive",
        "range-test:valley",
        "fastai:valley",
        "grid-sweep",
        "short-grid",
        "prior",
        "prodigy",
    ):
        assert f"| {row}" in out
    assert "torch-lr-finder:steepest" in out and "hits ≥ 90% of task-seeds" in out
    assert "check runs (full length, at suggested LRs)" in out and "*Regret* is measured seed by seed" in out


def tiny_gpu_tasks(
    tmp_path: Path, oracle: dict | None = None, max_steps: int | None = None, **spec: object
) -> tuple[Path, dict]:
    """A copy of ``tasks_gpu.yaml`` with only its first task, its model shrunk to run on CPU (and its
    fine-tune to ``max_steps``), ``oracle`` patched into its oracle and ``spec``'s top-level keys replaced:
    (the file, the task)."""
    import yaml

    tasks = yaml.safe_load((REPO / "benchmarks" / "tasks_gpu.yaml").read_text())
    task = tasks["tasks"][0]
    task["model"].update(embd=32, layers=1, heads=2, kvHeads=1, intermediate=64, pretrainSteps=20)
    if max_steps:
        task["trainer"]["optimization"]["maxSteps"] = max_steps
    tasks["oracle"].update(oracle or {})
    tasks.update(tasks=[task], **spec)
    path = tmp_path / "tasks_gpuci.yaml"
    path.write_text(yaml.safe_dump(tasks))
    return path, task


def gpu_checks(check: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``bash benchmarks/gpu_checks.sh CHECK`` as the device runs it, on CPU: no wheels, its own caches,
    ``$OUT`` at ``tmp_path/out``; ``env`` adds the check's settings."""
    keep = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("LRQ_", "RAMP_"))}
    keep.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{keep['PATH']}",  # its python3 is this interpreter
        OUT=str(tmp_path / "out"),
        WHEELS=str(tmp_path / "no-wheels"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        **env,
    )
    return subprocess.run(
        ["bash", "benchmarks/gpu_checks.sh", check],
        cwd=REPO,
        env=keep,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_gpu_checks_lr_quality_runs_every_row_then_adds_check_runs_reusing_its_jobs(tmp_path: Path) -> None:
    """`gpu_checks.sh lr-quality` on a tiny copy of the GPU task file, on CPU: the first run's result (no
    check runs) comes back whole, the second reuses its jobs and adds the check runs, and the caches come
    back as one tarball (the device returns 8 files at most). ~1 min."""
    import tarfile

    tasks, _ = tiny_gpu_tasks(tmp_path, {"points": 3, "seeds": [0]}, max_steps=24, recommenderSeeds=[0])
    out = tmp_path / "out"
    name = store.results_name(tasks)
    written = [lr_quality.RESULTS / f"{name}.{ext}" for ext in ("md", "json")]
    try:
        run = gpu_checks("lr-quality", tmp_path, LRQ_TASKS=str(tasks), LRQ_WORKERS="1")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        first = (out / f"{name}_interpolated.md").read_text()
        assert "Check runs: none" in first and "`--resume`): none" in first
        final = (out / f"{name}.md").read_text()
        assert "--resume --check-rows adaptive short-grid" in final
        reused = final.split("`--resume`): ")[1].split(" jobs")[0]
        done, total = (int(n) for n in reused.split(" of "))
        assert 0 < done < total, "the first run's jobs reused, the check runs new"
        assert "Check runs: none" not in final and "check runs (full length, at suggested LRs)" in final
        with tarfile.open(out / "lr_quality_cache.tgz") as tar:
            assert {n.split("/")[0] for n in tar.getnames()} == {"oracle", "jobs"}
        assert "done in" in (out / f"{name}.log").read_text()
    finally:
        for path in written:
            path.unlink(missing_ok=True)


@pytest.mark.slow
def test_gpu_checks_ramp_fall_runs_each_task_seeds_full_ramp_on_spawned_workers(tmp_path: Path) -> None:
    """`gpu_checks.sh ramp-fall` on a tiny copy of the GPU task file, on CPU, two workers: each task-seed's
    full ramp runs (spawned workers: the GPU task's model is built in the parent), and the results come
    back named by the task file, in task and seed order. ~1 min."""
    tasks, task = tiny_gpu_tasks(tmp_path)
    out = tmp_path / "out"
    name = ramp_fall.results_name([tasks], journal=False)
    assert name == "ramp_fall_gpuci"
    try:
        run = gpu_checks("ramp-fall", tmp_path, RAMP_TASKS=str(tasks), RAMP_WORKERS="2")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        text = (out / f"{name}.md").read_text()
        rows = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith(f"| {task['name']} |")]
        assert rows == [[f"| {task['name']}", str(s)] for s in (0, 1, 2)]
        assert "3 ramps; falls" in text and f"`python benchmarks/ramp_fall.py --tasks {tasks} " in text
    finally:
        (lr_quality.RESULTS / f"{name}.md").unlink(missing_ok=True)


def test_a_runner_drains_every_submitted_job_then_is_idle(tmp_path: Path) -> None:
    runner = execution.Runner(1)  # inline: each job runs in this process
    for seed in (0, 1):
        runner.submit({"kind": "no-such-kind", "seed": seed, "config": "-", "scratch": str(tmp_path)})
    finished = list(runner.drain())
    assert sorted(job["seed"] for job, _ in finished) == [0, 1] and not runner.busy
    assert all("unknown job kind 'no-such-kind'" in res["error"] for _, res in finished)


def test_a_runner_with_workers_takes_jobs_again_after_a_drain(tmp_path: Path) -> None:
    """recommend_probe drains its recommendations, then submits their check runs to the same runner."""
    runner = execution.Runner(2)
    try:
        for round_ in (0, 1):
            runner.submit({"kind": "no-such-kind", "seed": round_, "config": "-", "scratch": str(tmp_path)})
            finished = list(runner.drain())
            assert [job["seed"] for job, _ in finished] == [round_] and not runner.busy
    finally:
        runner.close()


def test_resume_reuses_the_task_files_own_committed_oracle_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "RESULTS", tmp_path)
    monkeypatch.setattr(store, "CACHE", tmp_path / "cache")
    committed_results(tmp_path, key="k1")
    (tmp_path / "lr_quality.json").rename(tmp_path / "lr_quality_heldout.json")
    task = task_setup.Task("probe", "a task", {}, tmp_path, tmp_path, "none", 100, [1e-4, 1e-3, 1e-2], "k1")
    heldout = store.committed_results(store.TASKS_FILE.with_name("tasks_heldout.yaml"))
    assert [p.name for p in heldout] == ["lr_quality.json", "lr_quality_heldout.json"]
    found = store.cached_oracle(task, True, heldout)
    assert found[scoring.oracle_key(1e-3, 1)] == 0.52 and len(found) == 7
    assert found[scoring.oracle_key(2e-3, 1)] == 0.6, "the committed check runs are reused too"
    assert store.cached_oracle(task, False, heldout) == {}, "without --resume nothing is reused"
    in_sample = store.committed_results(store.TASKS_FILE)
    assert [p.name for p in in_sample] == ["lr_quality.json"]
    assert store.cached_oracle(task, True, in_sample) == {}, "another task file's results stay unread"
    stale = dataclasses.replace(task, key="k2")
    assert store.cached_oracle(stale, True, heldout) == {}, "a changed task reuses nothing"


def test_a_runners_workers_leave_when_the_benchmark_is_killed(tmp_path: Path) -> None:
    """SIGKILL (or `timeout`'s SIGTERM) runs no clean-up in the benchmark: its workers go by themselves."""
    script = f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from benchmarks.quality import execution
runner = execution.Runner(2)
for seed in (0, 1):
    runner.submit({{"kind": "no-such-kind", "seed": seed, "config": "-", "scratch": {str(tmp_path)!r}}})
while runner.busy:
    runner.done()
print(*(p.pid for p in runner.pool._processes.values()), flush=True)
time.sleep(600)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]  # type: ignore[union-attr]
        assert workers and all(_alive(pid) for pid in workers)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # leave no orphan behind when the check fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "orphaned workers outlived the killed benchmark"


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's exit may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_job_digests_see_the_adaptive_package_and_trials_ignore_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change to the recommender's stages (a subpackage) re-runs the recommend and range-test jobs, and
    only those; a change anywhere else re-runs every job."""
    assert {"adaptive/decide.py", "adaptive/window.py", "training.py"} <= {
        name for name, _ in store.trainer_sources()
    }
    files = {"training.py": "a", "recommend.py": "b", "adaptive/__init__.py": "c", "adaptive/fit.py": "d"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(
        store, "trainer_sources", lambda: sorted((n, tmp_path / n) for n in files)
    )  # the same walk over a package of four files

    before = store.job_fingerprints()
    (tmp_path / "adaptive" / "fit.py").write_text("d, changed")
    after = store.job_fingerprints()
    assert after["recommend"] != before["recommend"] and after["range-test"] != before["range-test"]
    assert after["trial"] == before["trial"] and after["prodigy"] == before["prodigy"]
    (tmp_path / "training.py").write_text("a, changed")
    assert all(v != after[k] for k, v in store.job_fingerprints().items())
