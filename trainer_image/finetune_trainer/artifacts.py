"""What a fine-tune leaves behind: the final model (best or last weights), a merged LoRA model, the model
card, and the copy on the Hugging Face Hub.

:func:`check_outputs` runs before any training step (a push without a token fails at once);
:func:`finish` runs after training and returns the paths and URL the result reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.exitcodes import ConfigError
from finetune_trainer.modeling import looks_local

FINAL = "final"
MERGED = "merged"
MODEL_CARD = "README.md"


def _batch_text(batch: int, accumulation: int, result: dict[str, Any]) -> str:
    """`64 (4 per device x 1 accumulation x 16 processes)`: every process counts."""
    world = int(result.get("worldSize") or 1)
    total = int(result.get("effectiveBatchSize") or batch * accumulation * world)
    return f"{total} ({batch} per device x {accumulation} accumulation x {world} processes)"


def hub_token() -> str | None:
    """The Hugging Face token the trainer would push with (HF_TOKEN, else the login cache)."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def check_outputs(cfg: TrainerConfig) -> None:
    """Output settings the run cannot honour: fail before training."""
    out = cfg.output
    if out.merge_adapter and cfg.adapter.type not in ("lora", "qlora"):
        raise ConfigError(
            "output.mergeAdapter",
            f"there is no adapter to merge (adapter.type is {cfg.adapter.type})",
            "remove output.mergeAdapter, or set adapter.type to lora or qlora",
        )
    if out.merge_adapter and not cfg.checkpoints.save_final_model:
        raise ConfigError(
            "output.mergeAdapter", "needs the final adapter", "set checkpoints.saveFinalModel to true"
        )
    if out.push_to_hub:
        if not cfg.checkpoints.save_final_model:
            raise ConfigError(
                "output.pushToHub", "needs the final model", "set checkpoints.saveFinalModel to true"
            )
        if not hub_token():
            raise ConfigError(
                "output.pushToHub",
                "no Hugging Face token: the trainer has no HF_TOKEN",
                "set hubTokenSecret to a Secret holding a token with write access (or HF_TOKEN when run "
                "by hand), or remove output.pushToHub",
            )


@dataclass
class Artifacts:
    """Where the finished run's outputs are, relative to the output directory (and the hub URL)."""

    final_model: str | None = None
    merged_model: str | None = None
    model_card: str | None = None
    hub_url: str | None = None


def model_card(
    cfg: TrainerConfig, result: dict[str, Any], final_from: str | None, data_type: str | None = None
) -> str:
    """The model card (README.md): base model, data, adapter, learning rate and where it came from,
    schedule, and how training went."""
    sched, opt, data = cfg.schedule, cfg.optimization, cfg.dataset
    if sched.warmup_steps is not None:
        warmup = f"{sched.warmup_steps} steps"
    else:
        warmup = f"{(sched.warmup_ratio_or_default() or 0.0):.0%} of the steps"
    source = data.name or ", ".join(Path(f).name for f in data.files or [])
    base = cfg.model.name if not looks_local(cfg.model.name) else Path(cfg.model.name).name
    front = ["---", "library_name: " + ("peft" if cfg.adapter.type in ("lora", "qlora") else "transformers")]
    if not looks_local(cfg.model.name):
        front.append(f"base_model: {cfg.model.name}")
    front += ["tags:", "- finetune-operator", "---", ""]

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lora = cfg.adapter.type in ("lora", "qlora")
    losses = f"{fmt(result.get('evalLoss'))} / {fmt(result.get('bestEvalLoss'))}"
    saved = f"{final_from or 'last'} checkpoint"
    if final_from == "best" and result.get("bestCheckpoint"):
        saved += f" (`{result['bestCheckpoint']}`)"
    rows = [
        ("Base model", f"`{cfg.model.name}`" + (f" @ `{cfg.model.revision}`" if cfg.model.revision else "")),
        ("Data", f"`{source}` ({data_type or data.type} data, split `{data.split}`)"),
        ("Adapter", cfg.adapter.type + (f" (r={cfg.adapter.r}, alpha={cfg.adapter.alpha})" if lora else "")),
        ("Peak learning rate", fmt(result.get("learningRate"))),
        ("Learning rate from", cfg.learning_rate_source or "set by hand"),
        ("Schedule", f"{sched.type}, warmup {warmup}, floor {sched.min_learning_rate:g}"),
        ("Optimizer", f"{opt.optimizer}, weight decay {opt.weight_decay:g}"),
        ("Effective batch size", _batch_text(opt.batch_size, opt.gradient_accumulation_steps, result)),
        ("Sequence length", str(opt.max_seq_length)),
        ("Steps", f"{result.get('steps')} of {result.get('totalSteps')}"),
        ("Training loss", fmt(result.get("trainLoss"))),
        ("Validation loss (end / best)", losses),
        ("Weights saved", saved),
    ]
    lines = [
        *front,
        f"# {cfg.output.hub_model_id or base + ' (fine-tuned)'}",
        "",
        f"Fine-tuned from `{base}` by finetune-operator.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows),
        "",
    ]
    return "\n".join(lines)


def merge_adapter(
    cfg: TrainerConfig, adapter_dir: Path, target: Path, tokenizer: Any, num_labels: int | None = None
) -> Path:
    """Load the base model unquantized, apply the saved adapter, merge it and save full weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = cfg.model
    source = str(Path(spec.name).expanduser()) if looks_local(spec.name) else spec.name
    cls = (
        AutoModelForSequenceClassification if spec.task == "sequence-classification" else AutoModelForCausalLM
    )
    kwargs: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if cfg.adapter.type == "qlora":
        import torch

        kwargs["dtype"] = torch.bfloat16  # a 4-bit base cannot hold merged weights: merge into bf16
    if spec.task == "sequence-classification":
        kwargs["num_labels"] = num_labels or cfg.model.num_labels or 2  # the head itself is in the adapter
    base = cls.from_pretrained(source, **kwargs)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


def push(cfg: TrainerConfig, folder: Path, learning_rate: float) -> str:
    """Upload ``folder`` to the hub repository ``output.hubModelId`` (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    out = cfg.output
    assert out.hub_model_id
    api = HfApi(token=hub_token())
    repo = api.create_repo(out.hub_model_id, private=out.hub_private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=out.hub_model_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=f"finetune-operator: fine-tuned at learning rate {learning_rate:.3g}",
    )
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{out.hub_model_id}")


def finish(
    cfg: TrainerConfig,
    out: Path,
    result: dict[str, Any],
    tokenizer: Any,
    final_from: str | None,
    main_process: bool,
    num_labels: int | None = None,
    data_type: str | None = None,
) -> Artifacts:
    """After ``trainer.save_model(out/final)``: merge, write the model card, push (rank 0 only)."""
    found = Artifacts()
    final = out / FINAL
    if not main_process or not final.is_dir():
        return found
    found.final_model = FINAL
    card = model_card(cfg, result, final_from, data_type)
    (out / MODEL_CARD).write_text(card)
    (final / MODEL_CARD).write_text(card)
    found.model_card = MODEL_CARD
    upload = final
    if cfg.output.merge_adapter:
        merged = merge_adapter(cfg, final, out / MERGED, tokenizer, num_labels)
        (merged / MODEL_CARD).write_text(card.replace("library_name: peft", "library_name: transformers"))
        found.merged_model, upload = MERGED, merged
    if cfg.output.push_to_hub:
        found.hub_url = push(cfg, upload, float(result.get("learningRate") or 0.0))
    return found
