"""The scripts that read committed results and run nothing: the recalibration, horizon-prior, ramp-stop,
ramp-fall and ramp-shape replays, the hit noise, the miss curves and the trial-gap probe.
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

from benchmarks import (  # noqa: E402
    hit_noise,
    horizon_prior_replay,
    miss_curves,
    ramp_fall,
    ramp_shape_replay,
    ramp_stop_replay,
    recalibration_replay,
    trial_gap_probe,
)
from benchmarks.quality import scoring, store  # noqa: E402


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
    for named in (["qwen-full"], ["gpt2-lora-r32", "qwen-full"]):  # a fresh task: the replays never read it
        with pytest.raises(SystemExit):
            recalibration_replay.main(["--only", *named])
        assert (
            "--only: qwen-full is not a task of lr_quality or lr_quality_heldout" in capsys.readouterr().err
        )


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


def test_undoing_the_horizon_step_puts_a_moved_lr_back_at_the_stage_2_parabolas_minimum() -> None:
    bowl = [[2, lr, 40, 1.0 + (math.log10(lr) + 3) ** 2] for lr in (1e-4, 3e-4, 1e-3, 3e-3)]  # vertex 1e-3
    notes = [
        {"decidedBy": "stage-2-horizon", "trials": [[1, 3e-3, 20, 2.0], *bowl, [2, 1e-2, 40, math.nan]]},
        {"decidedBy": "stage-2-fit", "trials": bowl},
    ]
    rows = [scoring.Row("adaptive", [2e-4, 1e-3], [100, 100], [1.0, 1.0], seeds=[0, 1], notes=notes)]
    report = scoring.TaskReport("t", "d", 100, dataclasses.replace(oracle(), seeds=[0, 1]), 800, rows, 1.0)
    undone, n = horizon_prior_replay.horizon_undone(report)
    assert n == 1 and undone.rows[0].lrs == [pytest.approx(1e-3), 1e-3], "only the moved one, to the vertex"
    assert report.rows[0].lrs == [2e-4, 1e-3], "the committed report is left as it was"
    text = horizon_prior_replay.undone_table([report])
    committed, put_back = (line.split("|")[2:4] for line in text.splitlines()[2:4])
    assert committed[0].strip() == "0" and put_back[0].strip() == "1"
    assert committed[1].strip() == "1/2 = 50%" and put_back[1].strip() == "2/2 = 100%", "1e-3 is the best LR"


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
