"""The benchmarks' pure parts as specifications: percentiles, regret by log-LR interpolation, the oracle's
verdict, fastai's and torch-lr-finder's published rules, the pre-registered default-rule decision, and the
inputs each script builds. The scripts themselves take minutes; one tiny end-to-end run is marked slow.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common, lr_quality, operator_scale, rangetest_cost, trainer_overhead  # noqa: E402


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
    assert lr_quality.log_interp(1e-3, grid, values) == pytest.approx(1.0)
    assert lr_quality.log_interp(math.sqrt(1e-4 * 1e-3), grid, values) == pytest.approx(2.0)
    assert lr_quality.log_interp(1e-6, grid, values) == 3.0
    assert lr_quality.log_interp(1.0, grid, values) == 2.0


def oracle() -> lr_quality.Oracle:
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    losses = {1e-4: [2.0, 2.2], 1e-3: [1.0, 1.2], 1e-2: [1.5, 1.5], 1e-1: [None, None]}
    return lr_quality.Oracle(lrs, losses, penalty=5.0)


def test_oracle_best_sigma_and_regret() -> None:
    o = oracle()
    assert o.best == (1e-3, pytest.approx(1.1))
    assert o.means[-1] == 5.0  # diverged runs count as the penalty
    # pooled std at the three best LRs (1e-3, 1e-2, 1e-4): variances 0.02, 0, 0.02
    assert o.sigma == pytest.approx(math.sqrt((0.02 + 0.0 + 0.02) / 3))
    assert o.regret(1e-3) == pytest.approx(0.0)
    assert o.regret(math.sqrt(1e-3 * 1e-2)) == pytest.approx(0.2)


def test_score_counts_hits_within_sigma_and_missing_suggestions_as_worst() -> None:
    o = oracle()
    s = lr_quality.score("x", [1e-3, 1e-1, None], 10, o)
    assert s.hits == 1
    assert s.regrets[1] == pytest.approx(5.0 - 1.1)
    assert s.regrets[2] == pytest.approx(max(o.means) - 1.1)
    assert s.deltas[:2] == [pytest.approx(0.0), pytest.approx(2.0)]
    assert s.spread == pytest.approx(2.0)


def u_curve(n: int = 100) -> tuple[list[float], list[float]]:
    """Loss falls over log-LR, bottoms out at 1e-3, then climbs steeply."""
    lrs = lr_quality.log_spaced(1e-7, 1.0, n)
    losses = []
    for lr in lrs:
        x = math.log10(lr) + 3  # 0 at 1e-3
        losses.append(2.0 - 1.0 / (1 + math.exp(-3 * (-x - 2))) if x < 0 else 1.0 + 0.9 * x**2)
    return lrs, losses


def test_fastai_rules_on_a_u_shaped_curve() -> None:
    lrs, losses = u_curve()
    i_min = min(range(len(losses)), key=losses.__getitem__)
    assert lr_quality.fastai_minimum(lrs, losses) == pytest.approx(lrs[i_min] / 10)
    steep = lr_quality.fastai_steep(lrs, losses)
    assert steep is not None and 1e-6 < steep < lrs[i_min]  # on the falling side
    valley = lr_quality.fastai_valley(lrs, losses)
    assert valley is not None and lrs[0] < valley < lrs[i_min]  # inside the longest fall
    slide = lr_quality.fastai_slide(lrs, losses)
    assert slide is not None and slide < lrs[-1]
    flat = [1.0] * 30
    assert lr_quality.fastai_valley(lrs[:30], flat) == lrs[0]
    assert lr_quality.fastai_slide(lrs[:10], losses[:10]) is None


def test_fastai_view_drops_a_tenth_of_planned_steps_and_the_last_five() -> None:
    lrs, losses = u_curve(100)
    view_lrs, view_losses = lr_quality.fastai_view(lrs, losses, planned=100)
    assert view_lrs == lrs[10:95] and view_losses == losses[10:95]


def test_lrfinder_steepest_is_argmin_of_numpy_gradient_after_skipping() -> None:
    lrs = [10.0 ** (-7 + i * 0.1) for i in range(30)]
    losses = [5.0] * 30
    losses[20] = 1.0  # the sharpest drop is into index 20: gradient most negative at 19
    assert lr_quality.lrfinder_steepest(lrs, losses) == lrs[19]
    assert lr_quality.lrfinder_steepest(lrs[:12], losses[:12]) is None


def test_default_rule_is_ranked_by_regret_and_changes_only_on_a_clear_win() -> None:
    def stats(hits: int, rs: float) -> dict[str, float]:
        return {"hits": hits, "n": 6, "rs": rs}

    by = {
        "ours:steepest": stats(2, 6 * 66.8),  # two hits, but decades off elsewhere (the old flaw)
        "ours:valley": stats(0, 6 * 59.1),
        "ours:minimum-over-10": stats(1, 6 * 3.5),
        "ours:max-over-3": stats(0, 6 * 55.1),
    }
    assert lr_quality.choose_rule(by, "minimum-over-10")[0] == "minimum-over-10"  # hits do not outrank regret
    assert lr_quality.choose_rule(by, "valley")[0] == "minimum-over-10"  # 3.5 vs 59: a clear win
    by["ours:steepest"] = stats(3, 6 * 2.0)
    assert lr_quality.choose_rule(by, "minimum-over-10")[0] == "minimum-over-10"  # better, but not half
    by["ours:steepest"] = stats(0, 6 * 1.7)
    assert lr_quality.choose_rule(by, "minimum-over-10")[0] == "steepest"  # under half, 1.8 sigma lower
    by["ours:minimum-over-10"] = stats(5, 6 * 0.8)
    by["ours:steepest"] = stats(6, 6 * 0.3)
    assert lr_quality.choose_rule(by, "minimum-over-10")[0] == "minimum-over-10"  # both within a sigma: a tie


def test_stored_curves_are_read_again_with_todays_rules() -> None:
    o = oracle()
    lrs, losses = u_curve()
    curves = {"planned": 100, "ours": [[lrs, losses, 100]], "peer": [[lrs, losses, 100]]}
    scores = {s.name: s for s in lr_quality.curve_scores(curves, o)}
    assert {"ours:steepest", "ours:minimum-over-10", "fastai:valley", "torch-lr-finder:steepest"} <= set(
        scores
    )
    assert scores["ours:minimum-over-10"].steps == 100
    report = lr_quality.TaskReport("t", "d", 10, o, 80, [scores["ours:valley"]], 1.0, curves)
    stored = report.to_json()
    stored["scores"][0]["lrs"] = [123.0]  # a stale suggestion from an older rule
    again = lr_quality.TaskReport.from_json(stored)
    assert again.scores[0].lrs == scores["ours:valley"].lrs


def test_tasks_file_is_data_with_the_three_required_tasks() -> None:
    spec = lr_quality.load_tasks(lr_quality.TASKS_FILE)
    names = {t["name"]: t for t in spec["tasks"]}
    assert {"gpt2-full", "gpt2-lora", "minilm-cls"} <= set(names)
    assert names["gpt2-lora"]["adapter"]["type"] == "lora"
    assert spec["oracle"]["points"] >= 13 and len(spec["oracle"]["seeds"]) >= 2


def test_generated_datasets_are_deterministic_and_labelled() -> None:
    assert lr_quality.rule_lm_texts(5, 1) == lr_quality.rule_lm_texts(5, 1)
    rows = lr_quality.negation_sentiment(200, 0, 0.0)
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
def test_lr_quality_quick_run_on_one_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert lr_quality.main(["--quick", "--only", "gpt2-full", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "ours:valley" in out and "fastai:valley" in out and "short-grid" in out
