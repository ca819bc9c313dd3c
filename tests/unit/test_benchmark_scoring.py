"""The LR-quality benchmark's scoring as specifications: percentiles and tables, regret by log-LR
interpolation and per seed, the oracle's verdict, each row's score, the default's pre-registered targets
and how firm each verdict is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmark_fixtures import oracle  # noqa: E402

from benchmarks import common, target_intervals  # noqa: E402
from benchmarks.quality import rendering, scoring, verdicts  # noqa: E402


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
