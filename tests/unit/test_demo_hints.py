"""The demo's closing hints name commands that work on what the demo actually ran."""

from __future__ import annotations

from finetune_tooling.demo import trial_logs_hint


def test_the_logs_hint_names_the_best_trial_that_ran_not_a_skipped_stage() -> None:
    status = {
        "trials": [
            {"stage": 1, "index": 0, "evalLoss": 2.78},
            {"stage": 1, "index": 1, "evalLoss": 3.06},
            {"stage": 1, "index": 2, "diverged": True},
        ]
    }
    assert trial_logs_hint("lr", status) == "kubectl finetune logs lrs/lr --trial 0 --stage 1"
    status["trials"].append({"stage": 2, "index": 1, "evalLoss": 2.5})
    assert trial_logs_hint("lr", status) == "kubectl finetune logs lrs/lr --trial 1 --stage 2"


def test_no_logs_hint_for_a_sweep_without_a_trial_that_finished() -> None:
    assert trial_logs_hint("lr", {}) is None
    assert trial_logs_hint("lr", {"trials": [{"stage": 1, "index": 0, "diverged": True}]}) is None
