"""Per-model-family learning-rate priors: where fine-tuning LRs usually land.

Used to centre or widen a range-test window and to sanity-check a recommendation: a recommendation far
from the prior is reported as a warning, never vetoed (the curve is the evidence; the prior is folklore).
Values are the customary full fine-tune peak LRs (BERT paper, RoBERTa paper, T5 paper, GPT-2/Llama
fine-tuning recipes); LoRA-style adapters train few weights and take about 10x higher rates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

LORA_FACTOR = 10.0
"""LoRA/QLoRA adapters usually want ~10x the full fine-tune LR."""
FAR_FACTOR = 30.0
"""A recommendation more than this factor away from the prior's range draws a warning."""


@dataclass(frozen=True)
class Prior:
    """A family's usual full fine-tune LR range (low == high for a point value)."""

    family: str
    low: float
    high: float

    @property
    def centre(self) -> float:
        return math.sqrt(self.low * self.high)


# Matched in order against the model type (config.json "model_type") or, failing that, the model name.
PRIORS: tuple[tuple[tuple[str, ...], Prior], ...] = (
    (("roberta", "xlm-roberta", "camembert"), Prior("roberta", 1e-5, 1e-5)),
    (("deberta",), Prior("roberta", 1e-5, 1e-5)),
    (("t5", "mt5", "bart", "flan"), Prior("t5", 1e-4, 1e-4)),
    (
        ("bert", "distilbert", "albert", "electra", "minilm", "mpnet", "ernie"),
        Prior("bert", 2e-5, 2e-5),
    ),
    (
        ("gpt", "llama", "mistral", "qwen", "phi", "gemma", "opt", "falcon", "bloom", "pythia", "smollm"),
        Prior("gpt", 1e-5, 3e-5),
    ),
)
DEFAULT = Prior("unknown", 1e-5, 1e-4)


def model_type_of(model_name: str) -> str | None:
    """``model_type`` from a local model directory's ``config.json``, if there is one."""
    path = Path(model_name) / "config.json"
    try:
        return str(json.loads(path.read_text()).get("model_type") or "") or None
    except (OSError, ValueError):
        return None


def prior_for(model_name: str, adapter: str = "none", model_type: str | None = None) -> Prior:
    """The prior for a model (by its ``model_type`` when known, else by name), scaled for adapters."""
    keys = [
        k.lower() for k in (model_type or model_type_of(model_name), Path(model_name).name, model_name) if k
    ]
    found = DEFAULT
    for key in keys:
        hit = next((p for names, p in PRIORS if any(n in key for n in names)), None)
        if hit is not None:
            found = hit
            break
    if adapter in ("lora", "qlora"):
        return Prior(found.family + "+lora", found.low * LORA_FACTOR, found.high * LORA_FACTOR)
    return found


def widen_window(min_lr: float, max_lr: float, prior: Prior, span: float = 30.0) -> tuple[float, float]:
    """A range-test window that contains ``[min_lr, max_lr]`` and spans ``span``x either side of the prior."""
    return min(min_lr, prior.low / span), max(max_lr, prior.high * span)


def sanity_warning(lr: float | None, prior: Prior, factor: float = FAR_FACTOR) -> str | None:
    """A warning when ``lr`` is more than ``factor``x outside the prior's range; ``None`` when plausible."""
    if lr is None or prior.family == "unknown":
        return None
    if lr > prior.high * factor or lr < prior.low / factor:
        return (
            f"recommended learning rate {lr:.3g} is far from the usual {prior.low:.3g}-{prior.high:.3g} for "
            f"{prior.family} models; check the curve before trusting it"
        )
    return None
