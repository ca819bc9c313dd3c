"""The benchmarks' pure parts as specifications: percentiles, regret by log-LR interpolation, the oracle's
verdict, fastai's and torch-lr-finder's published rules, the default recommender's pre-registered targets,
and the inputs each script builds. The scripts themselves take minutes; one micro end-to-end run of
lr_quality (every row, through the real trainer) is marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import math
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

from benchmarks import (  # noqa: E402
    common,
    hit_noise,
    horizon_prior_replay,
    horizon_probe,
    lr_quality,
    miss_curves,
    operator_scale,
    ramp_fall,
    ramp_shape_replay,
    ramp_stop_replay,
    rangetest_cost,
    recalibration_replay,
    recommend_probe,
    sweep_search,
    target_intervals,
    trainer_overhead,
    trial_gap_probe,
)
from benchmarks.quality import (  # noqa: E402
    execution,
    peer_rules,
    rendering,
    scoring,
    store,
    task_setup,
    verdicts,
)


def test_percentile_matches_numpy_linear_interpolation() -> None:
    xs = [float(i) for i in range(1, 11)]
    assert common.percentile(xs, 50) == pytest.approx(5.5)
    assert common.percentile(xs, 95) == pytest.approx(9.55)
    assert common.percentile(xs, 99) == pytest.approx(9.91)
    assert common.percentile([3.0], 99) == 3.0
    assert common.percentile([5.0, 1.0, 3.0], 0) == 1.0
    with pytest.raises(ValueError):
        common.percentile([], 50)


def test_markdown_table_has_a_row_per_entry_and_compact_numbers() -> None:
    text = common.table(["a", "b"], [[1e-5, None], [0.5, "x"]])
    lines = text.splitlines()
    assert lines[0] == "| a | b |" and len(lines) == 4
    assert "1.00e-05" in lines[2] and "| - |" in lines[2]


def test_log_interp_is_linear_in_log_lr_and_clamped() -> None:
    grid, values = [1e-4, 1e-3, 1e-2], [3.0, 1.0, 2.0]
    assert scoring.log_interp(1e-3, grid, values) == pytest.approx(1.0)
    assert scoring.log_interp(math.sqrt(1e-4 * 1e-3), grid, values) == pytest.approx(2.0)
    assert scoring.log_interp(1e-6, grid, values) == 3.0
    assert scoring.log_interp(1.0, grid, values) == 2.0


def oracle() -> scoring.Oracle:
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    losses = {1e-4: [2.0, 2.2], 1e-3: [1.0, 1.2], 1e-2: [1.5, 1.5], 1e-1: [None, None]}
    return scoring.Oracle(lrs, losses, penalty=5.0)


def test_oracle_best_sigma_tau_and_regret() -> None:
    o = oracle()
    assert o.best == (1e-3, pytest.approx(1.1))
    assert o.means[-1] == 5.0  # diverged runs count as the penalty
    assert o.sigma == pytest.approx(math.sqrt(0.02))  # the seeds' standard deviation at the best LR
    assert o.tau == pytest.approx(math.sqrt(0.02))  # above 1% of L*
    assert o.regret(1e-3) == pytest.approx(0.0)
    assert o.regret(math.sqrt(1e-3 * 1e-2)) == pytest.approx(0.2)
    assert o.interior
    flat = scoring.Oracle([1e-3, 1e-2], {1e-3: [2.0, 2.0], 1e-2: [3.0, 3.0]}, penalty=5.0)
    assert flat.sigma == 0.0 and flat.tau == pytest.approx(0.02)  # the floor: 1% of L*
    assert not flat.interior


def test_regret_is_measured_per_seed_where_a_full_length_run_exists() -> None:
    key = scoring.oracle_key
    checks = {key(3e-3, 0): 1.05, key(3e-3, 1): 1.1, key(3e-2, 0): None}
    o = dataclasses.replace(oracle(), seeds=[0, 1], checks=checks)
    assert o.regret(3e-3, 0) == pytest.approx(0.05)  # the check run minus seed 0's loss at the best LR
    assert o.regret(3e-3, 1) == 0.0  # it beat seed 1's run at the best LR: no regret, never a negative one
    assert o.regret(1e-2, 1) == pytest.approx(0.3)  # a grid point: the oracle's own run on that seed
    assert o.regret(3e-2, 0) == pytest.approx(5.0 - 1.0)  # a check that diverged: the penalty
    interpolated = 1.1 + (math.log10(3e-3) + 3) * 0.4 - 1.1
    assert o.regret(3e-3, 2) == o.regret(3e-3) == pytest.approx(interpolated)  # no run on that seed
    assert o.measured(5e-3, 0) is None and o.measured(1e-3, 1) == 1.2
    s = scoring.score(scoring.Row("x", [3e-3, 3e-3], [10, 10], [1.0, 1.0], seeds=[0, 1]), o)
    assert s.regrets == [pytest.approx(0.05), 0.0] and s.hits == 2
    free = scoring.Row("p", None, [80, 80], [1.0, 1.0], losses=[1.05, None], seeds=[0, 1])
    assert scoring.score(free, o).regrets == [pytest.approx(0.05), pytest.approx(5.0 - 1.2)]
    report = scoring.TaskReport("t", "a task", 100, o, 800, [s.row, free], 1.0, key="k")
    again = scoring.TaskReport.from_json(json.loads(json.dumps(report.to_json())))
    assert [x.regrets for x in again.scores] == [x.regrets for x in report.scores]
    table = rendering.checks_table(report)
    assert table.count("\n") == 4 and "| 3.00e-03 | 0 | 1.05 | 0.05 |" in table
    assert table.index("| 3.00e-03 | 1 |") < table.index("| 0.03 | 0 |"), "ordered by LR, then seed"
    assert scoring.parse_oracle_key(key(3e-3, 1)) == (3e-3, 1)
    probe_row = scoring.Row("probe", [1e-3, 5e-3, None], [1, 1, 1], [1.0] * 3, seeds=[0, 1, 0])
    assert scoring.unchecked(probe_row, o) == [(5e-3, 1)]  # grid points and gaps need no run
    assert scoring.unchecked(free, o) == [], "an LR-free row has nothing to check"


def test_the_recalibration_replay_can_keep_to_some_tasks_and_then_writes_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recalibration_replay, "write_results", lambda *a: pytest.fail("wrote a file"))
    recalibration_replay.main(
        ["--only", "gpt2-lora-r32", "minilm-lora-cls", "--shifts", "0", "--headrooms", "0.5"]
    )
    out = capsys.readouterr().out
    inside, held, pooled = (c.split(",")[0].strip() for c in out.split("| +0 |")[1].split("|")[:3])
    assert (inside, held, pooled) == ("1/3", "3/3", "4/6"), (
        "gpt2-lora-r32 in-sample, minilm-lora-cls held out"
    )
    assert "| 0.5 | 1/3, " in out, "the ceiling at the product's headroom: the same LRs on that task"
    with pytest.raises(SystemExit):
        recalibration_replay.main(["--only", "qwen-full"])  # a fresh task: the replays never read it


def test_a_moved_lr_is_scored_between_its_own_seeds_runs() -> None:
    key = scoring.oracle_key
    o = dataclasses.replace(oracle(), seeds=[0, 1], checks={key(3e-3, 0): 1.05, key(3e-2, 1): None})
    regret = recalibration_replay.seed_regret
    assert regret(o, 3e-3, 0) == pytest.approx(0.05), "exact at seed 0's own check run"
    halfway = math.sqrt(3e-3 * 1e-2)  # between seed 0's check (1.05) and its grid run at 1e-2 (1.5)
    assert regret(o, halfway, 0) == pytest.approx((1.05 + 1.5) / 2 - 1.0)
    assert regret(o, 3e-3, 1) == pytest.approx(1.2 + (math.log10(3e-3) + 3) * 0.3 - 1.2), "seed 1's grid"
    assert regret(o, 3e-2, 1) == pytest.approx(5.0 - 1.2), "a diverged check is the penalty"
    rows = [
        scoring.Row("adaptive", [1e-3, 1e-2], [100, 100], [1.0, 1.0], seeds=[0, 1]),
        scoring.Row(
            "adaptive-ceiling (its range test alone)", [1e-2, 1e-2], [40, 40], [1.0] * 2, seeds=[0, 1]
        ),
    ]
    report = scoring.TaskReport("t", "d", 100, o, 800, rows, 1.0)
    unmoved = recalibration_replay.scored([report], "adaptive", 0.0)
    measured = scoring.score(rows[0], o)
    assert unmoved == (1, 2, pytest.approx(sum(measured.regrets) / o.tau / 2)), "unmoved: as measured"
    hits, n, _ = recalibration_replay.scored([report], "adaptive", 1.0)  # 1e-2 and 1e-1: worse on both
    assert (hits, n) == (0, 2)
    assert recalibration_replay.scored([report], "adaptive-ceiling", -1.0)[:2] == (2, 2)
    no_lr = scoring.Row("adaptive", [None, 1e-2], [100, 100], [1.0, 1.0], seeds=[0, 1])
    ended = recalibration_replay.scored([dataclasses.replace(report, rows=[no_lr, rows[1]])], "adaptive", 0.5)
    assert ended[:2] == (0, 2), "a seed whose sweep ended with no LR still counts"
    assert scoring.score(no_lr, o).regrets[0] == o.worst == pytest.approx(max(o.means) - o.best[1])
    assert ended[2] * 2 == pytest.approx(o.worst / o.tau + regret(o, 10**-1.5, 1) / o.tau), (
        "scored as measured"
    )


def test_the_horizon_prior_moves_only_a_classifiers_unmoved_recommendations() -> None:
    notes = [
        {"decidedBy": "stage-2-fit", "trials": [[1, 1e-2, 20, 0.6], [2, 1e-2, 25, 0.5]]},
        {"decidedBy": "stage-2-horizon", "trials": [[2, 1e-2, 25, 0.5]]},
    ]
    rows = [scoring.Row("adaptive", [1e-2, 1e-2], [100, 100], [1.0, 1.0], seeds=[0, 1], notes=notes)]
    report = scoring.TaskReport("cls", "d", 100, dataclasses.replace(oracle(), seeds=[0, 1]), 800, rows, 1.0)
    moved = horizon_prior_replay.moved(report, 1.0, {"cls"})
    assert moved == [(0, pytest.approx(1e-2 * 25 / 100)), (1, 1e-2)], "a quarter the LR at 4x the steps"
    assert horizon_prior_replay.moved(report, 1.0, set()) == [(0, 1e-2), (1, 1e-2)], "a causal LM: unmoved"
    hits, n, _, changed = horizon_prior_replay.scored([report], 0.0, {"cls"})
    assert (hits, n, changed) == (scoring.score(rows[0], report.oracle).hits, 2, 0), "β = 0: as measured"
    assert horizon_prior_replay.scored([report], 1.0, {"cls"})[3] == 1
    assert {"minilm-cls", "minilm-cls-b16"} <= horizon_prior_replay.classifiers()
    assert "gpt2-full" not in horizon_prior_replay.classifiers()
    assert "qwen2-0.5b-cls" in horizon_prior_replay.classifiers(), "the GPU classifier's task file is read"


def test_check_rows_name_rows_by_prefix_and_the_regret_text_says_which_were_measured() -> None:
    assert scoring.checked("short-grid (4x72, equal compute)", None)
    assert not scoring.checked("adaptive", ())
    assert scoring.checked("short-grid (4x72, equal compute)", ("adaptive", "short-grid"))
    assert not scoring.checked("range-test:valley", ("adaptive", "short-grid"))
    partial = rendering.regret_text(("adaptive",))
    assert partial.startswith("*Regret* of the rows `adaptive` is measured seed by seed")
    assert "interpolated" in partial and "interpolated" not in rendering.regret_text(None)
    assert "no check runs" in rendering.regret_text(())
    assert scoring.check_rows(None, quick=False) is None, "every row by default"
    assert scoring.check_rows(None, quick=True) == ()
    assert scoring.check_rows([], quick=False) == (), "--check-rows alone: none"
    assert scoring.check_rows(["adaptive"], quick=True) == ("adaptive",)


def test_the_ceiling_row_is_adaptives_first_candidate_at_its_range_tests_cost() -> None:
    adaptive = [
        {"rangeTestSteps": 80, "trials": [[1, 2e-3, 20, 1.1], [1, 6.3e-4, 20, 1.3], [2, 1.1e-3, 40, 0.9]]},
        {"error": "recommend exited 2: bad config"},
    ]
    range_tests = [{"steps": 100, "seconds": 5.0}, {"steps": 0, "seconds": 0.5}]
    row = scoring.ceiling_row(adaptive, range_tests)
    assert scoring.family(row.name) == "adaptive-ceiling"
    assert row.lrs == [2e-3, None], "the first stage-1 trial; no LR where adaptive failed"
    assert row.steps == [80, 0]
    assert row.seconds == [pytest.approx(4.0), 0.0], "the full ramp's time, scaled to the steps run"


def test_score_hits_within_tau_missing_suggestions_and_lr_free_rows() -> None:
    o = oracle()
    s = scoring.score(scoring.Row("x", [1e-3, 1e-1, None], [10, 10, 10], [1.0] * 3), o)
    assert s.hits == 1
    assert s.regrets[1] == pytest.approx(5.0 - 1.1)
    assert s.regrets[2] == pytest.approx(max(o.means) - 1.1)
    assert s.deltas == [pytest.approx(0.0), pytest.approx(2.0), None]
    assert s.signed[1] == pytest.approx(2.0)
    assert s.spread == pytest.approx(2.0)
    free = scoring.score(scoring.Row("p", None, [80, 80], [1.0, 1.0], losses=[1.15, None]), o)
    assert free.hits == 1 and free.regrets[1] == pytest.approx(5.0 - 1.1)  # diverged: the penalty
    assert free.geo_lr is None and free.spread is None


def test_targets_of_the_default_recommender() -> None:
    o = oracle()
    rows = [
        scoring.Row("adaptive", [1e-3, 1.1e-3], [150, 170], [9.0, 9.0]),
        scoring.Row("short-grid (4x40, equal compute)", [1e-2, 1e-2], [160, 160], [5.0, 5.0]),
    ]
    report = scoring.TaskReport("t", "d", 100, o, 800, rows, 1.0)
    by = verdicts.totals([report])
    assert set(by) == {"adaptive", "short-grid"}  # a row's family drops its parenthesised detail
    assert by["adaptive"].fine_tunes == [1.5, 1.7]
    verdict = {t.name: t.ok for t in verdicts.check_targets(by)}
    assert verdict == {
        "hits ≥ 90% of task-seeds": True,
        "mean regret ≤ ½ short grid's": True,
        "compute ≤ 2 fine-tunes' worth": True,
        "seed spread ≤ 0.15 decades": True,
    }
    again = scoring.TaskReport.from_json(report.to_json())
    assert [s.regrets for s in again.scores] == [s.regrets for s in report.scores]
    worse = [scoring.Row("adaptive", [1e-3, 1e-1], [150, 250], [9.0, 9.0]), rows[1]]
    by = verdicts.totals([scoring.TaskReport("t", "d", 100, o, 800, worse, 1.0)])
    verdict = {t.name: t.ok for t in verdicts.check_targets(by)}
    assert not any(verdict.values())


def test_interval_coverage_counts_the_task_seeds_whose_reported_interval_holds_the_best_lr() -> None:
    o = oracle()  # best LR 1e-3
    notes = [
        {"interval": {"low": 5e-4, "high": 1e-3}},  # holds it at its upper end
        {"interval": {"low": 1.1e-3, "high": 4e-3}},  # above it
        {"interval": None},  # no interval reported
    ]
    row = scoring.Row("adaptive", [1e-3, 2e-3, None], [150, 150, 150], [9.0] * 3, notes=notes)
    report = scoring.TaskReport("t", "d", 100, o, 800, [row], 1.0)
    assert [rendering.holds_best(n, 1e-3) for n in notes] == [True, False, None]
    assert rendering.interval_coverage([report, report]) == (2, 6)
    assert "| yes |" in rendering.adaptive_table(report) and "| no |" in rendering.adaptive_table(report)


def test_target_intervals_resample_whole_tasks_and_leave_the_verdict_to_the_measured_figure() -> None:
    o = oracle()  # best 1e-3 (seed losses 1.0, 1.2), τ = 0.141
    grid = scoring.Row("short-grid (4x40, equal compute)", [1e-2, 1e-2], [160, 160], [5.0, 5.0])

    def task(name: str, lrs: list[float], steps: list[int]) -> scoring.TaskReport:
        return scoring.TaskReport(
            name, "d", 100, o, 800, [scoring.Row("adaptive", lrs, steps, [9.0] * 2), grid], 1.0
        )

    good = task("good", [1e-3, 1e-3], [150, 150])  # both hits, 1.5 fine-tunes, no spread
    bad = task("bad", [1e-1, 1e-1], [250, 250])  # both misses (diverged: the penalty), 2.5 fine-tunes
    same = verdicts.resampled_figures([good, good, good], draws=50)
    assert verdicts.target_intervals(same)[verdicts.HITS] == (1.0, 1.0)
    assert verdicts.target_intervals(same)[verdicts.SPREAD] == (0.0, 0.0)
    assert verdicts.met_shares(same) == {
        verdicts.HITS: 1.0,
        verdicts.REGRET_RATIO: 1.0,
        verdicts.COMPUTE_MAX: 1.0,
        verdicts.SPREAD: 1.0,
    }, "the mean compute has no target of its own: the worst task-seed is judged"
    mixed = verdicts.resampled_figures([good, bad], draws=400)
    assert verdicts.target_intervals(mixed)[verdicts.HITS] == (0.0, 1.0), "both bad, one each, both good"
    assert verdicts.target_intervals(mixed)[verdicts.COMPUTE] == (1.5, 2.5)
    shares = verdicts.met_shares(mixed)
    assert shares[verdicts.HITS] == shares[verdicts.COMPUTE_MAX] == pytest.approx(0.25, abs=0.06)
    assert mixed == verdicts.resampled_figures([good, bad], draws=400), "a fixed seed: the same draws"
    assert verdicts.resampled_figures([good]) == {}, "one task: nothing to resample"

    by = verdicts.totals([good, bad])
    targets = {t.name: t for t in verdicts.check_targets(by, samples=mixed)}
    hits = targets["hits ≥ 90% of task-seeds"]
    assert (hits.value, hits.ok) == ("2/4 = 50%", False)
    assert hits.interval == f"0-100% (met on {shares[verdicts.HITS]:.0%} of draws)"
    compute = targets["compute ≤ 2 fine-tunes' worth"]
    assert compute.ok is False and compute.interval.startswith("mean 1.50-2.50, max 1.50-2.50 (met on ")
    text = verdicts.targets_table(list(targets.values()))
    assert "90% interval over resampled tasks" in text and "| 0-100% (met on" in text
    plain = verdicts.targets_table(verdicts.check_targets(by))
    assert "interval" not in plain, "no samples: the table keeps its three columns"
    assert verdicts.meets(verdicts.HITS, 0.9) and not verdicts.meets(verdicts.SPREAD, 0.151)


def test_the_paired_table_counts_task_seeds_on_which_the_default_beats_each_peer() -> None:
    o = oracle()  # per seed at 1e-3: 1.0 and 1.2; at 1e-2: 1.5 and 1.5
    rows = [
        scoring.Row("adaptive", [1e-3, 1e-2], [150, 150], [9.0] * 2, seeds=[0, 1]),
        scoring.Row("short-grid (4x40, equal compute)", [1e-2, 1e-2], [150, 150], [5.0] * 2, seeds=[1, 0]),
        scoring.Row("prior", [1e-3, 1e-3], [0, 0], [0.0] * 2, seeds=[0, 1]),
    ]
    report = scoring.TaskReport("t", "d", 100, o, 800, rows, 1.0)
    # seed 0: adaptive 0 against the grid's 0.5; seed 1: 0.3 against 0.3 (paired by seed, not by order)
    assert target_intervals.paired([report], "adaptive", "short-grid") == (1, 0, 1)
    assert target_intervals.paired([report], "adaptive", "prior") == (0, 1, 1)
    assert target_intervals.paired([report], "adaptive", "grid-sweep") == (0, 0, 0), "no such row"
    assert target_intervals.sign_test(3, 0) == pytest.approx(1 / 8)
    assert target_intervals.sign_test(1, 1) == pytest.approx(3 / 4)
    assert target_intervals.sign_test(0, 0) == 1.0
    text = target_intervals.paired_table([report])
    assert "| short-grid | 1 | 0 | 1 | 0.5 |" in text and "| prior | 0 | 1 | 1 | 1 |" in text


def u_curve(n: int = 100) -> tuple[list[float], list[float]]:
    """Loss falls over log-LR, bottoms out at 1e-3, then climbs steeply."""
    lrs = scoring.log_spaced(1e-7, 1.0, n)
    losses = []
    for lr in lrs:
        x = math.log10(lr) + 3  # 0 at 1e-3
        losses.append(2.0 - 1.0 / (1 + math.exp(-3 * (-x - 2))) if x < 0 else 1.0 + 0.9 * x**2)
    return lrs, losses


def test_fastai_rules_on_a_u_shaped_curve() -> None:
    lrs, losses = u_curve()
    i_min = min(range(len(losses)), key=losses.__getitem__)
    assert peer_rules.fastai_minimum(lrs, losses) == pytest.approx(lrs[i_min] / 10)
    steep = peer_rules.fastai_steep(lrs, losses)
    assert steep is not None and 1e-6 < steep < lrs[i_min]  # on the falling side
    valley = peer_rules.fastai_valley(lrs, losses)
    assert valley is not None and lrs[0] < valley < lrs[i_min]  # inside the longest fall
    slide = peer_rules.fastai_slide(lrs, losses)
    assert slide is not None and slide < lrs[-1]
    flat = [1.0] * 30
    assert peer_rules.fastai_valley(lrs[:30], flat) == lrs[0]
    assert peer_rules.fastai_slide(lrs[:10], losses[:10]) is None


def test_fastai_view_drops_a_tenth_of_planned_steps_and_the_last_five() -> None:
    lrs, losses = u_curve(100)
    view_lrs, view_losses = peer_rules.fastai_view(lrs, losses, planned=100)
    assert view_lrs == lrs[10:95] and view_losses == losses[10:95]


def test_lrfinder_steepest_is_argmin_of_numpy_gradient_after_skipping() -> None:
    lrs = [10.0 ** (-7 + i * 0.1) for i in range(30)]
    losses = [5.0] * 30
    losses[20] = 1.0  # the sharpest drop is into index 20: gradient most negative at 19
    assert peer_rules.lrfinder_steepest(lrs, losses) == lrs[19]
    assert peer_rules.lrfinder_steepest(lrs[:12], losses[:12]) is None


def test_tasks_file_is_data_and_leaves_every_recommender_at_its_defaults(tmp_path: Path) -> None:
    spec = task_setup.load_tasks(store.TASKS_FILE)
    names = {t["name"]: t for t in spec["tasks"]}
    assert len(names) >= 6 and set(spec["quick"]["tasks"]) <= set(names)
    assert {t["trainer"]["adapter"]["type"] for t in names.values()} >= {"none", "lora"}
    assert {t["model"]["kind"] for t in names.values()} >= {"tiny-gpt2", "tiny-llama", "minilm"}
    assert spec["oracle"]["points"] >= 13 and len(spec["oracle"]["seeds"]) >= 3
    bad = dict(spec, tasks=[{**spec["tasks"][0], "trainer": {**spec["tasks"][0]["trainer"], "adaptive": {}}}])
    path = tmp_path / "tasks.yaml"
    path.write_text(__import__("yaml").safe_dump(bad))
    with pytest.raises(ValueError, match="defaults"):
        task_setup.load_tasks(path)


def test_an_epoch_sized_task_is_as_long_as_the_trainer_runs_it(tmp_path: Path) -> None:
    """A task may give its length in epochs: the benchmark's fine-tune length (what compute and the short
    grid are counted in) is then the steps the trainer itself runs, and a task with no length is refused."""
    task = {
        "name": "epochs",
        "model": {"kind": "tiny-gpt2", "embd": 16, "layers": 1, "heads": 1, "pretrainSteps": 1},
        "data": {"kind": "rule-lm", "train": 120, "eval": 20},
        "trainer": {
            "model": {"task": "causal-lm"},
            "adapter": {"type": "none"},
            "optimization": {"batchSize": 8, "maxSeqLength": 32, "epochs": 2},
        },
    }
    built = task_setup.build_task(task, {"minLearningRate": 1e-3, "maxLearningRate": 1e-2, "points": 2})
    out = tmp_path / "trial"
    out.mkdir()
    code, data, err = execution.call_trainer(
        ["trial", "--config", str(built.config_path), "--learning-rate", "1e-3"], out
    )
    assert code == 0, err
    assert built.steps == data["steps"] > 2

    spec = task_setup.load_tasks(store.TASKS_FILE)
    no_length = {**task, "trainer": {**task["trainer"], "optimization": {"batchSize": 8}}}
    path = tmp_path / "tasks.yaml"
    path.write_text(__import__("yaml").safe_dump({**spec, "tasks": [no_length]}))
    with pytest.raises(ValueError, match=r"trainer\.optimization needs maxSteps or epochs"):
        task_setup.load_tasks(path)


def test_a_built_model_is_fine_tuned_on_the_text_it_was_pre_trained_on(tmp_path: Path) -> None:
    """The tokenizer a built model pre-trains with is its folder's, loaded as the trainer loads it.
    transformers 5 loads any qwen2 folder's tokenizer as a Qwen2Tokenizer, which turns the word-level toy
    vocabulary's sentences into a few repeated tokens: such a model is refused, naming the field; a
    byte-level BPE, as Qwen's own, comes back whole. Every model the task files build passes the check."""
    from finetune_trainer.config import ModelSpec
    from finetune_trainer.modeling import load_tokenizer

    word_level = {"kind": "qwen2", "embd": 16, "layers": 1, "heads": 1}
    built = task_setup.built_tokenizer(word_level)
    with pytest.raises(ValueError, match=r"model\.tokenizer: a qwen2 folder .* loads as Qwen2Tokenizer"):
        task_setup.saved_tokenizer(
            word_level, built, tmp_path / "w", task_setup.model_config(word_level, built)
        )
    assert "Qwen2Tokenizer" in type(load_tokenizer(ModelSpec(name=str(tmp_path / "w")))).__name__
    with pytest.raises(ValueError, match=r"model\.tokenizer: 'sentencepiece' is not one of"):
        task_setup.built_tokenizer({**word_level, "tokenizer": "sentencepiece"})

    specs = [word_level | {"tokenizer": "byte-level-bpe"}]
    for f in store.TASKS_FILE.parent.glob("tasks*.yaml"):
        specs += [t["model"] for t in task_setup.load_tasks(f)["tasks"] if t["model"]["kind"] != "minilm"]
    assert any(m["kind"] == "qwen2" for m in specs[1:])
    for i, model in enumerate(specs):
        built = task_setup.built_tokenizer(model)
        loaded = task_setup.saved_tokenizer(
            model, built, tmp_path / str(i), task_setup.model_config(model, built)
        )
        text = "today the cat likes the great house ."
        assert loaded(text)["input_ids"] == built(text)["input_ids"], model


def test_every_task_file_loads_and_the_held_out_and_fresh_tasks_are_new() -> None:
    files = sorted(store.TASKS_FILE.parent.glob("tasks_*.yaml"))
    assert {f.name for f in files} >= {"tasks_gpu.yaml", "tasks_heldout.yaml", "tasks_fresh.yaml"}
    for f in files:
        spec = task_setup.load_tasks(f)  # refuses a task that sets a recommender's own settings
        assert set(spec["quick"]["tasks"]) <= {t["name"] for t in spec["tasks"]}, f.name
    keys: set[str] = set()
    names: set[str] = set()
    for name in ("tasks.yaml", "tasks_heldout.yaml", "tasks_fresh.yaml"):  # each set new to those before it
        tasks = task_setup.load_tasks(store.TASKS_FILE.parent / name)["tasks"]
        for t in tasks:
            assert task_setup.task_key(t) not in keys and t["name"] not in names, (name, t["name"])
        keys |= {task_setup.task_key(t) for t in tasks}
        names |= {t["name"] for t in tasks}
        results = store.results_name(store.TASKS_FILE.parent / name)
        assert results in store.STANDING_RESULTS, results  # its committed run is read for the standing
        assert [r.name for r in store.committed_reports(results)] == [t["name"] for t in tasks], results
    assert store.FRESH_RESULTS not in store.CPU_RESULTS, "the replays, which try rules, never read it"


def test_generated_datasets_are_deterministic_and_labelled() -> None:
    assert task_setup.rule_lm_texts(5, 1) == task_setup.rule_lm_texts(5, 1)
    rows = task_setup.negation_sentiment(200, 0, 0.0)
    for text, label in rows:
        assert label in (0, 1)
        if "does not like" in text:
            assert any(w in text for w in ("sad", "broken", "awful", "cold", "dirty", "angry")) == bool(label)


def test_step_rate_skips_warmup_steps() -> None:
    times = {1: 0.0, 2: 5.0, 3: 6.0, 4: 7.0}
    assert trainer_overhead.rate(times, 2) == pytest.approx(1.0)
    clock = trainer_overhead.StepClock()
    clock.write('{"event": "step", "step": 3, "loss": 1.0}\n{"event": "eval", "step": 3}\n')
    assert list(clock.times) == [3]


def test_scale_sweep_is_a_valid_lrsweep() -> None:
    from finetune_operator.api import LRSWEEP

    body = operator_scale.sweep("s0001")
    assert body["kind"] == "LRSweep"
    LRSWEEP.spec.model_validate(body["spec"])


def test_rangetest_cost_builds_a_valid_trainer_config_from_the_example(tmp_path: Path) -> None:
    import string

    import yaml

    from finetune_trainer.config import TrainerConfig

    text = string.Template(rangetest_cost.EXAMPLE.read_text()).substitute(DEMO_DIR=str(tmp_path))
    job = yaml.safe_load(text)
    cfg = rangetest_cost.trainer_config(
        job, tmp_path / "out", job["spec"]["learningRate"]["auto"]["rangeTest"]
    )
    parsed = TrainerConfig.model_validate(cfg)
    assert parsed.range_test.steps == job["spec"]["learningRate"]["auto"]["rangeTest"]["steps"]


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


def _committed_results(folder: Path, key: str) -> None:
    """A results file as lr_quality.py writes it (its own TaskReport), for a task named `probe`."""
    lrs = [1e-4, 1e-3, 1e-2]
    checks = {scoring.oracle_key(2e-3, 1): 0.6}
    losses = {1e-4: [3.0, 3.0], 1e-3: [0.5, 0.52], 1e-2: [0.8, 0.8]}
    oracle = scoring.Oracle(lrs, losses, penalty=2.0, seeds=[0, 1], checks=checks)
    default = scoring.Row("adaptive", [1e-3, 1e-2], [300, 320], [1.0, 1.0])
    report = scoring.TaskReport("probe", "a task", 100, oracle, 600, [default], 1.0, key=key)
    (folder / "lr_quality.json").write_text(json.dumps({"tasks": [report.to_json()]}))


def test_recommend_probe_scores_on_the_committed_oracle_and_refuses_a_stale_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recommend_probe, "RESULTS", tmp_path)
    with pytest.raises(SystemExit, match=r"lr_quality\.json is missing"):
        recommend_probe.committed(store.TASKS_FILE, "probe", "k1")
    _committed_results(tmp_path, key="k1")
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
    _committed_results(tmp_path, key="k1")
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


def test_the_ramp_stop_replay_cuts_a_ramp_where_the_product_s_stop_would() -> None:
    lrs = [10 ** (-6 + i * 0.05) for i in range(120)]  # 20 steps per decade
    losses = [3.0 - 0.02 * i if i < 60 else 1.8 + 0.01 * (i - 60) for i in range(120)]  # minimum at 1e-3
    losses[74:] = [1.7 + 0.05 * (i - 74) for i in range(74, 120)]  # a lower dip at 10^-2.3
    from finetune_trainer.adaptive import basin_minimum

    stop, top, capped = ramp_stop_replay.cut(lrs, losses, 1e-4, 0.5)
    assert (stop, capped) == (71, True)
    assert top == pytest.approx(basin_minimum(lrs[:71], losses[:71]) / 10**0.5)
    assert abs(math.log10(top) + 3.5) < 0.1  # the basin of the first minimum (1e-3), half a decade down
    stop, top, capped = ramp_stop_replay.cut(lrs, losses, 1e-4, 1.0)
    assert (stop, capped) == (95, True) and math.log10(top) > -3.0  # a decade's look reaches the dip
    assert ramp_stop_replay.cut(lrs, losses, 10.0, 0.5)[0] == 120  # not past its planned end: all of it


def test_ramp_fall_flags_only_a_ramp_read_differently_since_the_noise_floor(tmp_path: Path) -> None:
    """A journal (as ``lr_quality`` writes it) holding the device's flat classifier ramp and a ramp that
    falls: only the flat one is flagged, its adaptive ramp runs past 60 steps to an edge inside the ramp."""
    flat = json.loads((REPO / "tests/unit/trainer/data/gpu_cls_flat_ramp.json").read_text())
    lrs = [10 ** (-6 + i * 0.05) for i in range(120)]
    falling = [3.0 - 0.02 * i if i < 60 else 1.8 + 0.05 * (i - 60) for i in range(120)]
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    lines = [
        {
            "id": "a",
            "result": {"suggestions": {}, "curve": [flat["lrs"], flat["losses"]], "window": flat["window"]},
        },
        {"id": "b", "result": {"suggestions": {}, "curve": [lrs, falling], "window": [1e-6, 1e-3]}},
        {"id": "c", "result": {"loss": 1.0, "steps": 50}},  # a trial: not a ramp
    ]
    (jobs / "qwen2-0.5b-cls-abc123.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    found = ramp_fall.journalled_ramps(jobs)
    assert [f[0] for f in found] == ["qwen2-0.5b-cls", "qwen2-0.5b-cls"]
    device, bowl = (ramp_fall.read(f[2], f[3], f[4]) for f in found)
    assert not device["cleared"] and device["least"] < 0.005 and device["cut"] > 60
    assert device["edge"] == pytest.approx(9.19e-5, rel=1e-2)
    assert bowl["cleared"] and bowl["fall"] == pytest.approx(1 - 1.8 / falling[12], rel=1e-6)


def test_the_ramp_shape_replay_reads_each_seeds_journalled_ramp_and_lowers_only_sharp_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.lr_quality import Oracle, Row, TaskReport, job_fingerprints, job_id
    from finetune_trainer.adaptive import HEADROOM, ceiling
    from finetune_trainer.config import AdaptiveSpec
    from finetune_trainer.rangetest import PRIOR_ABOVE, PRIOR_BELOW

    replayed = ramp_shape_replay.replayed_ceiling
    assert replayed(1e-3, 1.0, HEADROOM) == pytest.approx(ceiling(AdaptiveSpec(), 1.0, 1e-3)[0])
    assert replayed(1e-3, 1.0, 0.8) == pytest.approx(10**-3.8)
    assert replayed(1e-3, 1.5e-3, 0.2) == pytest.approx(1.5e-3 * 10**-0.5), "never above the edge's margin"
    assert replayed(1e-3, None, 0.8) == pytest.approx(10**-3.8)
    assert ramp_shape_replay.fall_decades(1e-3, 1e-4) == pytest.approx(1.0)
    assert ramp_shape_replay.headroom_for(0.3, 0.5, 0.9) == 0.9
    assert ramp_shape_replay.headroom_for(1.2, 0.5, 0.9) == HEADROOM

    lrs = [10 ** (-6 + i * 0.05) for i in range(100)]  # 1e-6 .. 1e-1, 20 steps per decade
    gradual = [3.0 - 0.02 * i if i < 60 else 1.8 + 0.05 * (i - 60) for i in range(100)]  # minimum at 1e-3
    sharp = [0.7 - 0.0002 * i for i in range(54)]  # at the labels' entropy, barely moving
    sharp += [sharp[-1] - 0.05 * (i - 53) for i in range(54, 60)]  # then a fall just below the minimum
    sharp += [sharp[-1] + 0.05 * (i - 59) for i in range(60, 100)]

    def result(losses: list[float]) -> dict:  # a ramp planned from 1e-6 to 1e-4 that ran on to 1e-1
        return {"curve": [lrs, losses], "window": [1e-4 / (PRIOR_BELOW * PRIOR_ABOVE), 1e-1]}

    monkeypatch.setattr(store, "CACHE", tmp_path)  # where the journals are read
    (tmp_path / "jobs").mkdir()
    fingerprint = job_fingerprints()["range-test"]
    ids = {
        s: job_id({"kind": "range-test", "row": "range-test", "seed": s, "source": fingerprint})
        for s in (0, 1)
    }
    stale = job_id({"kind": "range-test", "row": "range-test", "seed": 0, "source": "another-trainer"})
    journal = [
        {"id": stale, "result": result(gradual)},  # seed 0 on another trainer: not read
        {"id": ids[0], "result": result(sharp)},
        {"id": ids[1], "result": result(gradual)},
    ]
    (tmp_path / "jobs" / "t-k.jsonl").write_text("\n".join(json.dumps(e) for e in journal))
    # the best full-length LRs lie about a decade below the minimum on both seeds
    grid = [10**-4.6, 10**-4.2, 10**-3.9, 10**-3.5]
    oracle = Oracle(
        grid,
        dict(zip(grid, [[1.5, 1.5], [1.0, 1.0], [1.0, 1.0], [1.6, 1.6]], strict=True)),
        3.0,
        seeds=[0, 1],
    )
    ceiling_row = Row(
        "adaptive-ceiling (its range test alone)", [3e-4, 3e-4], [40, 40], [1.0] * 2, seeds=[0, 1]
    )
    report = TaskReport("t", "d", 100, oracle, 800, [ceiling_row], 1.0, key="k")
    ramps, missing, same = ramp_shape_replay.ramps_of([report])
    assert (missing, same) == ([], 0)
    assert [r.seed for r in ramps] == [0, 1]
    assert ramps[0].fall == pytest.approx(0.2, abs=0.1), "seed 0's own ramp: it fell in the last 0.3 decades"
    assert ramps[1].fall > 1.5, "seed 1's fell from the start"
    assert all(math.log10(r.minimum) == pytest.approx(-3.0, abs=0.15) for r in ramps)
    own = [replayed(r.minimum, r.edge, HEADROOM) for r in ramps]
    matching = dataclasses.replace(ceiling_row, lrs=[own[0], 3e-4])
    assert ramp_shape_replay.ramps_of([dataclasses.replace(report, rows=[matching])])[2] == 1
    assert ramp_shape_replay.scored(ramps, 0.5, HEADROOM)[:2] == (0, 2), "half a decade down: both miss"
    assert ramp_shape_replay.scored(ramps, 0.5, 1.0)[:2] == (1, 2), "only the sharp ramp goes a decade down"
    assert ramp_shape_replay.scored(ramps, 3.0, 1.0)[:2] == (2, 2), "a wider threshold takes both"
    other = dataclasses.replace(report, key="changed")
    assert ramp_shape_replay.ramps_of([other])[1] == ["t seed 0", "t seed 1"], "no journal: named as missing"


def test_hit_noise_scores_the_check_runs_near_the_best_lr_by_paired_regret() -> None:
    from benchmarks.lr_quality import Oracle, oracle_key

    lrs = [1e-4, 1e-3, 1e-2]
    oracle = Oracle(lrs, {1e-4: [2.0, 2.1], 1e-3: [1.0, 1.2], 1e-2: [3.0, 3.0]}, penalty=3.0, seeds=[0, 1])
    assert oracle.best[0] == 1e-3 and oracle.tau == pytest.approx(0.1414, rel=1e-3)  # sigma of 1.0 and 1.2
    near, off = 10**-2.96, 10**-2.8  # 0.04 and 0.2 decades above the best
    oracle.checks = {oracle_key(near, 0): 1.1, oracle_key(near, 1): 1.5, oracle_key(off, 0): 1.05}
    assert hit_noise.near_hits(oracle, 0.05) == (1, 2), "seed 1's 1.5 is 0.3 above its own 1.2: a miss"
    assert hit_noise.near_hits(oracle, 0.2) == (2, 3)
    assert hit_noise.near_hits(oracle, 0.01) == (0, 0)


def test_hit_noise_judges_the_other_seeds_best_grid_lr_on_each_seed() -> None:
    from benchmarks.lr_quality import Oracle

    lrs = [1e-4, 1e-3, 1e-2]
    # seeds 0 and 1 agree on 1e-3; seed 2 alone prefers 1e-2, and is worse there than at 1e-3 on seed 0
    losses = {1e-4: [2.0, 2.0, 2.0], 1e-3: [1.0, 1.0, 1.3], 1e-2: [1.4, 1.2, 1.1]}
    oracle = Oracle(lrs, losses, penalty=3.0, seeds=[0, 1, 2])
    picks = hit_noise.cross_seed_picks(oracle)
    assert [(s, lr) for s, lr, _ in picks] == [(0, 1e-3), (1, 1e-3), (2, 1e-3)]
    assert picks[2][2] == pytest.approx(0.0), "seed 2 is scored against its own run at the best LR"
    losses[1e-2] = [1.4, 0.9, 1.1]  # seed 1 now prefers 1e-2 too: seed 0's pick moves there
    oracle = Oracle(lrs, losses, penalty=3.0, seeds=[0, 1, 2])
    seed, lr, regret = hit_noise.cross_seed_picks(oracle)[0]
    assert (seed, lr) == (0, 1e-2) and regret == pytest.approx(0.4)
    assert not oracle.hit(regret)


def test_miss_curves_explain_each_miss_on_its_seeds_own_runs() -> None:
    from benchmarks.lr_quality import Oracle, Row, TaskReport, oracle_key

    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    losses = {1e-4: [2.0, 2.0, 2.0], 1e-3: [1.0, 1.0, 1.0], 1e-2: [1.5, 1.1, 1.5], 1e-1: [None, 1.0, None]}
    oracle = Oracle(lrs, losses, penalty=3.0, seeds=[0, 1, 2])
    assert oracle.best[0] == 1e-3 and oracle.tau == pytest.approx(0.01)
    oracle.checks = {oracle_key(3e-3, 0): 1.3, oracle_key(3e-2, 1): 1.4}
    assert oracle.runs_on(1) == {1e-4: 2.0, 1e-3: 1.0, 1e-2: 1.1, 3e-2: 1.4, 1e-1: 1.0}, "grid and checks"
    assert oracle.runs_on(0)[1e-1] == 3.0, "a diverged run is the penalty"
    trials = [[1, 1e-2, 20, 1.9], [1, 3e-3, 20, 2.1], [2, 1e-2, 40, 1.6]]
    horizon = [[1, 1e-2, 20, 1.9], [2, 1e-2, 40, 1.6], [2, 5e-3, 40, 1.7]]
    notes = [
        {"decidedBy": "stage-2-fit", "evidence": "Fitted", "trials": trials},  # held at the ceiling 1e-2
        {"decidedBy": "stage-2-fit", "evidence": "Fitted", "trials": trials},  # a hit
        {"decidedBy": "stage-2-best", "evidence": "NothingTrained", "trials": trials},
    ]
    row = Row("adaptive", [1e-2, 1e-3, None], [90] * 3, [1.0] * 3, notes=notes, seeds=[0, 1, 2])
    report = TaskReport("t", "d", 100, oracle, 1200, [row], 1.0)
    found = miss_curves.misses(report, "adaptive")
    assert [(m.seed, m.lr) for m in found] == [(0, 1e-2), (2, None)], "seed 1's 1e-3 is the best: a hit"
    kind, text = miss_curves.why(report, found[0])
    assert kind == "held at the ceiling" and "1.00 decades above the best" in text
    assert "shorter than the fine-tune" in text, "a ceiling above the optimum: the trials favoured it"
    assert miss_curves.why(report, found[1])[0] == "no learning rate"
    unconfirmed = dataclasses.replace(found[1], lr=1e-2, delta=1.0)
    kind, text = miss_curves.why(report, unconfirmed)
    assert kind == "no trial learned" and "ceiling 0.01, unconfirmed (1.00 decades above" in text
    assert miss_curves.hit_ranges(report, 1) == [(1e-3, 1e-3), (1e-1, 1e-1)], "two separate basins"
    moved = dataclasses.replace(
        found[0],
        lr=3e-3,
        delta=math.log10(3),
        note={**notes[0], "decidedBy": "stage-2-horizon", "trials": horizon},
    )
    kind, text = miss_curves.why(report, moved)
    assert kind == "horizon step" and "from the stage-2 trials' best 0.01 to 0.003" in text
    assert "the ceiling 0.01 itself scored 50.00 τ" in text, "the ceiling's own run on seed 0: 1.5 - 1.0"
    rows = {r[0]: r for r in miss_curves.curve(report, found[0])}
    assert "**recommended**" in rows["0.01"][4] and "ceiling" in rows["0.01"][4]
    assert rows["0.01"][2] == pytest.approx(50.0) and rows["0.003"][1] == 1.3, "its own check run"
    assert rows["0.001"][4] == "oracle best (seeds' mean)"
    assert rows["0.01"][3].count("█") == miss_curves.BAR_CAP, "the bar is capped"
    body, kinds = miss_curves.report_text({"lr_quality": [report]}, "adaptive")
    assert kinds == {"held at the ceiling": 1, "no learning rate": 1}
    assert "### t, seed 0 (`lr_quality`)" in body and "### t, seed 1" not in body
    with pytest.raises(SystemExit, match="no row 'short-grid'; --row takes one of: adaptive"):
        miss_curves.misses(report, "short-grid")
    grid = Row("short-grid (4x30)", [1e-2, 1e-3, 1e-3], [90] * 3, [1.0] * 3, seeds=[0, 1, 2])
    plain = miss_curves.misses(dataclasses.replace(report, rows=[grid]), "short-grid")
    assert [m.seed for m in plain] == [0] and miss_curves.why(report, plain[0])[0] == "suggested"


def test_the_gap_probe_caps_where_the_longest_trials_gap_ratio_first_rises_past_a_threshold() -> None:
    trial = trial_gap_probe.Trial
    trials = [
        trial(1, 1e-3, 20, 0.9, 0.1),  # stage 1: the longest trials (stage 2) decide
        trial(2, 1e-3, 40, 1.0, 0.80),  # ratio 0.20
        trial(2, 1e-5, 40, 1.0, 0.98),  # 0.02
        trial(2, 3e-3, 40, None, None),  # diverged: no ratio
        trial(2, 1e-4, 40, 1.0, 0.94),  # 0.06
    ]
    assert [t.lr for t in trial_gap_probe.longest(trials)] == [1e-5, 1e-4, 1e-3, 3e-3]
    assert trials[4].gap_ratio == pytest.approx(0.06) and trials[3].gap_ratio is None
    assert trial(2, 1e-4, 40, 1.0, math.nan).gap_ratio is None
    cap = trial_gap_probe.gap_cap
    assert cap(trials, 0.04) == pytest.approx(10**-4.5), "half-way from 0.02 to 0.06, in log10 LR"
    assert cap(trials, 0.1) == pytest.approx(10 ** (-4 + 0.04 / 0.14))
    assert cap(trials, 0.01) == 1e-5, "the lowest trial is already above"
    assert cap(trials, 0.3) is None, "no trial rises above it"
    assert cap([trial(2, 1e-4, 40, 1.0, 1.2)], 0.0) is None, "training loss above validation (dropout)"
    assert cap(trials[:1], 0.5) == 1e-3, "with one stage, its trials are the longest"


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
