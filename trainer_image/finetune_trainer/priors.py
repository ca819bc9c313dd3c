"""Learning-rate priors by model family and width: where fine-tuning LRs usually land.

Used to centre or widen a range-test window and to sanity-check a recommendation: a recommendation far
from the prior is reported as a warning, never vetoed (the curve is the evidence; the prior is folklore).

A family's values are the customary full fine-tune peak LRs at the family's usual width (BERT paper:
2e-5..5e-5 at 768; RoBERTa paper: 1e-5..3e-5; T5 with AdamW: 1e-4..3e-4; Hugging Face's causal-LM recipe:
5e-5 for GPT-2; Thinking Machines' Tinker cookbook: 5e-5 at width 2000 for Llama and Qwen). Wider models
want lower rates: as in the Tinker cookbook (``hyperparam_utils.get_lr``), the LR scales as
``(2000 / hidden_size) ** P`` with a family exponent ``P``; the width comes from a local model directory's
``config.json``. LoRA-style adapters train few weights and take about 10x higher rates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LORA_FACTOR = 10.0
"""LoRA/QLoRA adapters usually want ~10x the full fine-tune LR (the Tinker cookbook's multiplier too)."""
FAR_FACTOR = 30.0
"""A recommendation more than this factor away from the prior's range draws a warning."""
DEFAULT_EXPONENT = 0.5
"""Width exponent for families without a published one. Tinker measured 0.781 (Llama) and 0.0775 (Qwen);
muP predicts 1 for Adam's hidden weights. 0.5 sits between the extremes on a log scale, so a family whose
true exponent is anywhere in [0, 1] is off by at most the square root of its width ratio to the reference."""
WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim")
"""``config.json`` keys that hold a model's width (BERT/Llama, T5/BART, GPT-2, DistilBERT)."""


@dataclass(frozen=True)
class Prior:
    """A model's usual full fine-tune (or adapter) LR range, already scaled to its width when known."""

    family: str
    low: float
    high: float
    hidden_size: int | None = None
    """The width the range was scaled to; ``None`` when unknown (the family's usual width)."""

    @property
    def centre(self) -> float:
        """Geometric middle of the range."""
        return math.sqrt(self.low * self.high)


@dataclass(frozen=True)
class Family:
    """A family's customary full fine-tune range at its usual ``width``, and its width exponent."""

    name: str
    low: float
    high: float
    width: int
    exponent: float = DEFAULT_EXPONENT

    def prior(self, hidden_size: int | None) -> Prior:
        """The range ``hidden_size`` wide: the base times ``(width / hidden_size) ** exponent``."""
        scale = 1.0 if hidden_size is None else (self.width / hidden_size) ** self.exponent
        return Prior(self.name, self.low * scale, self.high * scale, hidden_size)


# Matched in order against the model type (config.json "model_type") or, failing that, the model name.
FAMILIES: tuple[tuple[tuple[str, ...], Family], ...] = (
    (("roberta", "xlm-roberta", "camembert", "deberta"), Family("roberta", 1e-5, 3e-5, 768)),
    (("t5", "mt5", "bart", "flan"), Family("t5", 1e-4, 3e-4, 768)),
    (
        ("bert", "distilbert", "albert", "electra", "minilm", "mpnet", "ernie"),
        Family("bert", 2e-5, 5e-5, 768),
    ),
    (("llama", "mistral", "mixtral", "smollm"), Family("llama", 2.5e-5, 1e-4, 2000, exponent=0.781)),
    (("qwen",), Family("qwen", 2.5e-5, 1e-4, 2000, exponent=0.0775)),
    (("gpt", "phi", "gemma", "opt", "falcon", "bloom", "pythia"), Family("gpt", 2e-5, 1e-4, 768)),
)
DEFAULT = Family("unknown", 1e-5, 1e-4, 2000)
"""Any other family: a decade around 3e-5 at the Tinker cookbook's reference width."""


def local_config(model_name: str) -> dict[str, Any]:
    """A local model directory's ``config.json`` (empty when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(model_name) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_type_of(model_name: str) -> str | None:
    """``model_type`` from a local model directory's ``config.json``, if there is one."""
    return str(local_config(model_name).get("model_type") or "") or None


def hidden_size_of(model_name: str) -> int | None:
    """The width from a local model directory's ``config.json`` (multimodal models: their text model's)."""
    return hidden_size_of_config(local_config(model_name))


def hidden_size_of_config(config: dict[str, Any]) -> int | None:
    """The width in a model config's dict (a loaded model's ``config.to_dict()`` or a ``config.json``)."""
    for section in (config, config.get("text_config") or {}):
        for key in WIDTH_KEYS:
            value = section.get(key) if isinstance(section, dict) else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def family_of(model_name: str, model_type: str | None = None) -> Family:
    """The family by ``model_type`` when known, else by the model's name (``DEFAULT`` when none matches)."""
    names = [model_type or model_type_of(model_name), Path(model_name).name]
    if not Path(model_name).is_dir():
        names.append(model_name)  # a hub id's organisation can name the family; a local path's folders can't
    for key in (n.lower() for n in names if n):
        hit = next((f for keys, f in FAMILIES if any(k in key for k in keys)), None)
        if hit is not None:
            return hit
    return DEFAULT


def prior_for(
    model_name: str, adapter: str = "none", model_type: str | None = None, hidden_size: int | None = None
) -> Prior:
    """The prior for a model: its family's range scaled to its width, times ``LORA_FACTOR`` for adapters.

    ``hidden_size`` overrides the width read from a local model directory's ``config.json``; with neither,
    the range is the family's at its usual width.
    """
    if hidden_size is not None and hidden_size < 1:
        raise ValueError(f"hidden_size must be positive, got {hidden_size}")
    width = hidden_size if hidden_size is not None else hidden_size_of(model_name)
    prior = family_of(model_name, model_type).prior(width)
    if adapter in ("lora", "qlora"):
        return Prior(prior.family + "+lora", prior.low * LORA_FACTOR, prior.high * LORA_FACTOR, width)
    return prior


def widen_window(min_lr: float, max_lr: float, prior: Prior, span: float = 30.0) -> tuple[float, float]:
    """A range-test window that contains ``[min_lr, max_lr]`` and spans ``span``x either side of the prior."""
    return min(min_lr, prior.low / span), max(max_lr, prior.high * span)


def sanity_warning(lr: float | None, prior: Prior, factor: float = FAR_FACTOR) -> str | None:
    """A warning when ``lr`` is more than ``factor``x outside the prior's range; ``None`` when plausible."""
    if lr is None or prior.family == "unknown":
        return None
    if lr > prior.high * factor or lr < prior.low / factor:
        width = f" {prior.hidden_size} wide" if prior.hidden_size else ""
        return (
            f"recommended learning rate {lr:.3g} is far from the usual {prior.low:.3g}-{prior.high:.3g} for "
            f"{prior.family} models{width}; check the curve before trusting it"
        )
    return None
