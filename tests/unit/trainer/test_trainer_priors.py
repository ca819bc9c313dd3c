"""Priors by model family and width centre windows and warn (never veto) on far-off recommendations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.priors import (
    LORA_FACTOR,
    hidden_size_of,
    prior_for,
    sanity_warning,
    widen_window,
)


def model_dir(tmp_path: Path, **config: Any) -> str:
    """A local model directory holding only a ``config.json``."""
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def tinker_full_fine_tune_lr(hidden_size: int, exponent: float) -> float:
    """The Tinker cookbook's ``get_lr(model, is_lora=False)``: 5e-5 * (2000 / hidden_size) ** P."""
    return 5e-5 * (2000 / hidden_size) ** exponent


@pytest.mark.parametrize(
    ("name", "family", "low", "high"),
    [
        ("bert-base-uncased", "bert", 2e-5, 5e-5),
        ("distilbert/distilbert-base-uncased", "bert", 2e-5, 5e-5),
        ("FacebookAI/roberta-base", "roberta", 1e-5, 3e-5),
        ("microsoft/deberta-v3-base", "roberta", 1e-5, 3e-5),
        ("google-t5/t5-small", "t5", 1e-4, 3e-4),
        ("openai-community/gpt2", "gpt", 2e-5, 1e-4),
        ("meta-llama/Llama-3.2-1B", "llama", 2.5e-5, 1e-4),
        ("Qwen/QwQ-32B", "qwen", 2.5e-5, 1e-4),  # the organisation names the family
        ("some/unknown-thing", "unknown", 1e-5, 1e-4),
    ],
)
def test_prior_by_name_is_the_family_range_at_its_usual_width(
    name: str, family: str, low: float, high: float
) -> None:
    p = prior_for(name)
    assert (p.family, p.low, p.high, p.hidden_size) == (family, low, high, None)


@pytest.mark.parametrize(("model_type", "exponent"), [("llama", 0.781), ("qwen2", 0.0775)])
@pytest.mark.parametrize("width", [896, 2048, 4096, 8192])
def test_llama_and_qwen_scale_with_width_as_the_tinker_cookbook(
    tmp_path: Path, model_type: str, exponent: float, width: int
) -> None:
    p = prior_for(model_dir(tmp_path, model_type=model_type, hidden_size=width))
    assert p.centre == pytest.approx(tinker_full_fine_tune_lr(width, exponent))
    assert p.hidden_size == width


def test_wider_models_get_lower_priors_and_bert_base_keeps_its_folklore(tmp_path: Path) -> None:
    widths = [64, 256, 768, 1024, 4096]
    centres = [prior_for(model_dir(tmp_path, model_type="bert", hidden_size=w)).centre for w in widths]
    assert centres == sorted(centres, reverse=True)
    base = prior_for(model_dir(tmp_path, model_type="bert", hidden_size=768))
    assert 2e-5 <= base.low < base.high <= 5e-5


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "t5", "d_model": 512},
        {"model_type": "gpt2", "n_embd": 512},
        {"model_type": "distilbert", "dim": 512},
        {"model_type": "llava", "text_config": {"hidden_size": 512}},
    ],
)
def test_width_is_read_from_each_architectures_key(tmp_path: Path, config: dict[str, Any]) -> None:
    assert hidden_size_of(model_dir(tmp_path, **config)) == 512


def test_hidden_size_argument_overrides_the_config(tmp_path: Path) -> None:
    path = model_dir(tmp_path, model_type="llama", hidden_size=4096)
    assert prior_for(path, hidden_size=2000).centre == pytest.approx(5e-5)
    assert prior_for("meta-llama/Llama-3.1-8B", hidden_size=4096) == prior_for(path)
    with pytest.raises(ValueError, match="hidden_size"):
        prior_for(path, hidden_size=0)


def test_lora_is_ten_times_full_fine_tune_at_the_same_width(tmp_path: Path) -> None:
    path = model_dir(tmp_path, model_type="llama", hidden_size=3072)
    full, lora = prior_for(path), prior_for(path, adapter="qlora")
    assert lora.low == pytest.approx(full.low * LORA_FACTOR)
    assert lora.high == pytest.approx(full.high * LORA_FACTOR)
    assert lora.family == "llama+lora"


def test_local_directory_uses_config_model_type_not_its_folder_names(tmp_path: Path) -> None:
    assert prior_for(model_dir(tmp_path, model_type="roberta")).family == "roberta"
    inside = tmp_path / "bert-runs"
    inside.mkdir()
    assert prior_for(model_dir(inside, model_type="mamba", d_model=768)).family == "unknown"


def test_unknown_family_gets_the_default_scaled_by_width(tmp_path: Path) -> None:
    narrow = prior_for(model_dir(tmp_path, model_type="mamba", d_model=256))
    assert narrow.family == "unknown"
    assert narrow.centre > prior_for("mystery").centre


def test_widen_window_spans_the_prior() -> None:
    t5 = prior_for("t5-small")
    assert widen_window(1e-5, 1e-4, t5) == (pytest.approx(t5.low / 30), pytest.approx(t5.high * 30))
    assert widen_window(1e-9, 1.0, t5) == (1e-9, 1.0)  # never narrows


def test_sanity_warning_only_when_far_off() -> None:
    bert = prior_for("bert-base-uncased")
    assert sanity_warning(3e-5, bert) is None
    assert sanity_warning(None, bert) is None
    warning = sanity_warning(1e-2, bert)
    assert warning is not None and "bert" in warning
    assert sanity_warning(1e-2, prior_for("mystery")) is None  # no prior, no opinion


def test_sanity_warning_accepts_a_small_models_high_lr(tmp_path: Path) -> None:
    """A 64-wide Llama wants a far higher LR than an 8B one; its prior must not flag that."""
    lr = 5e-3
    assert sanity_warning(lr, prior_for("meta-llama/Llama-3.1-8B", hidden_size=4096)) is not None
    assert sanity_warning(lr, prior_for(model_dir(tmp_path, model_type="llama", hidden_size=64))) is None
