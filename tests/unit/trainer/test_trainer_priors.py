"""Model-family priors centre windows and warn (never veto) on far-off recommendations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.priors import prior_for, sanity_warning, widen_window


@pytest.mark.parametrize(
    ("name", "family", "low", "high"),
    [
        ("bert-base-uncased", "bert", 2e-5, 2e-5),
        ("distilbert/distilbert-base-uncased", "bert", 2e-5, 2e-5),
        ("FacebookAI/roberta-base", "roberta", 1e-5, 1e-5),
        ("google-t5/t5-small", "t5", 1e-4, 1e-4),
        ("openai-community/gpt2", "gpt", 1e-5, 3e-5),
        ("meta-llama/Llama-3.2-1B", "gpt", 1e-5, 3e-5),
        ("some/unknown-thing", "unknown", 1e-5, 1e-4),
    ],
)
def test_prior_by_name(name: str, family: str, low: float, high: float) -> None:
    p = prior_for(name)
    assert (p.family, p.low, p.high) == (family, low, high)


def test_lora_is_ten_times_full_fine_tune() -> None:
    p = prior_for("bert-base-uncased", adapter="lora")
    assert p.low == pytest.approx(2e-4)
    assert p.family == "bert+lora"


def test_local_directory_uses_config_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    assert prior_for(str(tmp_path)).family == "roberta"


def test_widen_window_spans_the_prior() -> None:
    assert widen_window(1e-5, 1e-4, prior_for("t5-small")) == (pytest.approx(1e-4 / 30), pytest.approx(3e-3))
    assert widen_window(1e-9, 1.0, prior_for("t5-small")) == (1e-9, 1.0)  # never narrows


def test_sanity_warning_only_when_far_off() -> None:
    bert = prior_for("bert-base-uncased")
    assert sanity_warning(3e-5, bert) is None
    assert sanity_warning(None, bert) is None
    warning = sanity_warning(1e-2, bert)
    assert warning is not None and "bert" in warning
    assert sanity_warning(1e-2, prior_for("mystery")) is None  # no prior, no opinion
