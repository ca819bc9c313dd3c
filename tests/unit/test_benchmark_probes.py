"""The probes that run the trainer on one question: the sweep-search comparison, the horizon probe and the
recommend probe.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmark_fixtures import committed_results  # noqa: E402

from benchmarks import common, horizon_probe, recommend_probe, sweep_search  # noqa: E402
from benchmarks.quality import execution, scoring, store, task_setup  # noqa: E402


class BowlTrials:
    """Trial results on a loss bowl at LR 3e-3 and warmup 0.1, every intermediate loss reported: what
    `sweep_search.TrialRunner.run` returns, without the trainer."""

    def run(self, params: dict[str, float], seed: int) -> dict:
        def loss(step: int) -> float:
            far = (math.log10(params["learningRate"]) + 2.5) ** 2 + (params["warmupRatio"] - 0.1) ** 2
            return 2.0 + far + 2.0 * (1 - step / sweep_search.STEPS)

        every = sweep_search.STEPS // sweep_search.EVALS
        evals = [{"step": s, "evalLoss": loss(s)} for s in range(every, sweep_search.STEPS + 1, every)]
        return {
            "kind": "trial",
            "evalLoss": evals[-1]["evalLoss"],
            "steps": sweep_search.STEPS,
            "evals": evals,
        }


def test_sweep_search_gives_every_method_the_grids_compute_and_charges_pruned_trials_their_steps() -> None:
    budget = sweep_search.GRID_POINTS**2 * sweep_search.STEPS
    rows = {m: sweep_search.search(m, 0, "/models/tiny", BowlTrials(), budget) for m in sweep_search.METHODS}
    assert rows["grid"]["trials"] == sweep_search.GRID_POINTS**2 and rows["grid"]["steps"] == budget
    assert all(r["steps"] <= budget for r in rows.values()), "equal compute: none spends more than the grid"
    assert rows["tpe"]["pruned"] == rows["random"]["pruned"] == rows["grid"]["pruned"] == 0
    median = rows["tpe+median"]
    assert median["pruned"] > 0 and median["trials"] > rows["tpe"]["trials"], "pruning buys more trials"
    assert median["steps"] == median["trials"] * sweep_search.STEPS - median["stepsSaved"]
    table = sweep_search.summarise([r | {"task": "bowl"} for r in rows.values()])
    assert [row[0] for row in table] == list(sweep_search.METHODS)


def test_horizon_probe_reads_the_best_lr_per_length_and_its_drift() -> None:
    lrs, steps = [1e-5, 3e-5, 9e-5], [40, 80, 160]
    losses = {
        (40, 1e-5): 0.9, (40, 3e-5): 0.7, (40, 9e-5): 0.5,
        (80, 1e-5): 0.8, (80, 3e-5): 0.5, (80, 9e-5): 0.6,
        (160, 1e-5): None, (160, 3e-5): None, (160, 9e-5): None,
    }  # fmt: skip
    best = horizon_probe.best_by_length(losses, steps, lrs)
    assert best == {40: 9e-5, 80: 3e-5, 160: None}
    (a, b, beta), (_, _, missing) = horizon_probe.drift(best)
    assert (a, b) == (40, 80) and beta == pytest.approx(math.log10(3) / math.log10(2))
    assert missing is None, "no β where a length has no minimum"


def test_horizon_probe_names_its_results_per_task_and_its_own_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    default = horizon_probe.write(horizon_probe.DEFAULT_TASK, "body", [])
    other = horizon_probe.write("gpt2-wide-full", "body", ["--task", "gpt2-wide-full"])
    assert (default.name, other.name) == ("horizon_probe.md", "horizon_probe_gpt2-wide-full.md")
    assert "`python benchmarks/horizon_probe.py --task gpt2-wide-full`" in other.read_text()


def test_recommend_probe_scores_on_the_committed_oracle_and_refuses_a_stale_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recommend_probe, "RESULTS", tmp_path)
    with pytest.raises(SystemExit, match=r"lr_quality\.json is missing"):
        recommend_probe.committed(store.TASKS_FILE, "probe", "k1")
    committed_results(tmp_path, key="k1")
    oracle, default = recommend_probe.committed(store.TASKS_FILE, "probe", "k1")
    assert oracle.best == (1e-3, pytest.approx(0.51)) and default is not None and default.lrs == [1e-3, 1e-2]
    with pytest.raises(SystemExit, match="before its definition changed"):
        recommend_probe.committed(store.TASKS_FILE, "probe", "k2")
    with pytest.raises(SystemExit, match="has no task 'other'"):
        recommend_probe.committed(store.TASKS_FILE, "other", "k1")
    results = {0: {"lr": 1e-3, "steps": 250, "decidedBy": "stage-2-fit"}, 1: {"error": "boom"}}
    row = recommend_probe.rows_of(results, [0, 1], "probe")
    scored = scoring.score(row, oracle)
    assert scored.hits == 1 and row.steps == [250, 0] and row.notes[1]["error"] == "boom"
    worst = (3.0 - 0.51) / oracle.tau  # the failed seed scores the worst oracle point
    assert worst > scoring.REGRET_CAP, "the cap must bite for this check"
    text = recommend_probe.summary(scored, oracle, 100)
    assert text == f"1/2 hits, mean regret {common.fmt(scoring.REGRET_CAP / 2)} τ, 1.25 fine-tunes' worth"
    assert recommend_probe.slug(["adaptive.trialSteps=60", "adaptive.finalists=5"]) == (
        "adaptive.trialSteps-60_adaptive.finalists-5"
    )
    assert recommend_probe.slug([]) == "defaults"
    sets = ["adaptive.trialSteps=40"]
    assert recommend_probe.slug(sets, [0, 1, 2]) == "adaptive.trialSteps-40", "the default seeds: no suffix"
    assert recommend_probe.slug(sets, [1]) == "adaptive.trialSteps-40_seeds-1", "other seeds: their own file"
    assert (
        recommend_probe.trials_text([[1, 1e-3, 20, 0.5], [2, 5e-4, 40, None]])
        == "1: 1.00e-03/20 → 0.5; 2: 5.00e-04/40 → -"
    )
    assert recommend_probe.trials_text(None) == "-"


def test_recommend_jobs_pass_the_probes_overrides_to_the_trainer(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model: {name: /nonexistent}\ndataset: {files: [/nonexistent/train.jsonl]}\n")
    job = {"kind": "recommend", "seed": 0, "config": str(config), "scratch": str(tmp_path)}
    res = execution.execute(job | {"sets": ["adaptive.candidates=1"]})
    assert "adaptive.candidates" in res["error"], res["error"]


def test_a_probe_names_the_task_files_tasks_when_its_task_is_not_there() -> None:
    spec = task_setup.load_tasks(store.TASKS_FILE)
    assert task_setup.named_task(spec, "minilm-cls", store.TASKS_FILE)["name"] == "minilm-cls"
    missing = r"'gpt2-wide-full' is not in .*tasks\.yaml; its tasks: .*'gpt2-full'"
    with pytest.raises(SystemExit, match=missing):
        recommend_probe.main(["--task", "gpt2-wide-full", "--no-write"])
