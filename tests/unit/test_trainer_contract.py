"""The trainer's metrics as the operator reads them: one set of names, phases and a port, in the contract."""

from __future__ import annotations

import pytest

from finetune_operator.planning.status import progress_from_sample
from finetune_operator.polling import SERIES, parse_trainer_metrics
from finetune_operator.settings import Settings
from finetune_trainer import metrics as trainer_metrics
from finetune_trainer.config import TRAINER_GAUGES, TRAINER_METRICS_PORT, TRAINER_PHASES, trainer_series


def test_the_operator_reads_every_gauge_the_trainer_serves_by_the_contracts_names():
    served = trainer_metrics.TrainerMetrics.create("train")
    values = {name: float(i + 1) for i, name in enumerate(TRAINER_GAUGES)}
    served.set(**values)
    served.set_phase("training")
    assert parse_trainer_metrics(served.exposition().decode()) == values
    assert set(SERIES) == {trainer_series(name) for name in TRAINER_GAUGES}


def test_a_sample_becomes_live_progress_with_throughput():
    sample = {
        "step": 10.0,
        "total_steps": 40.0,
        "learning_rate": 1e-4,
        "loss": 2.5,
        "samples_per_second": 31.5,
    }
    progress = progress_from_sample(sample, "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z")
    assert (progress.step, progress.percent, progress.samples_per_second, progress.eta_seconds) == (
        10,
        25,
        31.5,
        30,
    )


def test_one_port_and_one_set_of_phases():
    assert trainer_metrics.DEFAULT_PORT == Settings().trainer_metrics_port == TRAINER_METRICS_PORT == 9400
    assert trainer_metrics.PHASES == TRAINER_PHASES


def test_a_model_with_two_rule_bearing_bases_keeps_both_bases_rules() -> None:
    """A class setting ``__rules__`` (or inheriting from two classes that do) adds rules, never hides them:
    the operator's FineTuneJob output is an output location and an artifact spec at once."""
    from finetune_operator.api import FineTuneOutputSpec, OutputSpec
    from finetune_trainer.config import ArtifactSpec, rules_of

    messages = {r.message for r in rules_of(FineTuneOutputSpec)}
    assert {r.message for r in rules_of(OutputSpec)} | {r.message for r in rules_of(ArtifactSpec)} <= messages
    with pytest.raises(ValueError, match="hubModelId is required"):
        FineTuneOutputSpec.model_validate({"pushToHub": True})
