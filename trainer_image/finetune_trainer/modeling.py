"""Models: load the tokenizer and model (hub id or local directory), then decide what is trained.

Full fine-tune, LoRA and QLoRA (peft), or the top N transformer blocks. Checks that need no weights
(:func:`check_model_source`, :func:`check_hardware`) run before anything is loaded or written.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from finetune_trainer.config import AdapterSpec, ModelSpec, TrainerConfig
from finetune_trainer.exitcodes import ConfigError, config_errors


def looks_local(name: str) -> bool:
    """A path rather than a hub id: absolute, ``./``/``../``/``~``, or an existing directory."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists() or name.count("/") > 1


def check_model_source(spec: ModelSpec) -> None:
    """A local model directory exists and holds a ``config.json``; hub ids are checked when loaded."""
    if not looks_local(spec.name):
        return
    path = Path(spec.name).expanduser()
    if not path.is_dir():
        raise ConfigError(
            "model.name", f"{spec.name!r} does not exist", "point it at a model directory or use a hub id"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            "model.name",
            f"{spec.name!r} has no config.json",
            "point it at a directory written by save_pretrained (config.json + weights)",
        )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_hardware(cfg: TrainerConfig) -> None:
    """Adapter and precision choices the machine cannot run: fail before any work."""
    if cfg.adapter.type == "qlora":
        if not cuda_available():
            raise ConfigError(
                "adapter.type",
                "qlora needs a CUDA GPU and none is visible",
                "use adapter.type: lora on CPU, or run on a GPU node",
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "adapter.type",
                "qlora needs the bitsandbytes package",
                "pip install bitsandbytes, or use lora",
            )
    if cfg.optimization.precision == "fp16" and not cuda_available():
        raise ConfigError("optimization.precision", "fp16 needs a CUDA GPU", "use bf16 or fp32 on CPU")


def resolve_precision(cfg: TrainerConfig) -> str:
    """``fp32``, ``bf16`` or ``fp16``: ``auto`` is bf16 on a GPU that supports it, else fp32."""
    if cfg.optimization.precision != "auto":
        return cfg.optimization.precision
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def load_tokenizer(spec: ModelSpec) -> Any:
    """The model's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(Path(spec.name).expanduser()) if looks_local(spec.name) else spec.name,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
        )
    except Exception as exc:
        raise ConfigError(
            "model.name",
            f"cannot load a tokenizer from {spec.name!r}: {_first_line(exc)}",
            "point it at a model directory with tokenizer files, or a hub id reachable from here",
        ) from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "model.name", "the tokenizer has neither a pad nor an EOS token", "add a pad token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _dtype(spec: ModelSpec) -> Any:
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        spec.dtype
    ]


def load_model(
    cfg: TrainerConfig, tokenizer: Any, num_labels: int | None = None, label_names: list[str] | None = None
) -> Any:
    """The pretrained model for the task, with the configured adapter applied. New weights (a classification
    head, LoRA adapters) are drawn after seeding with ``optimization.seed``, so the same config starts
    from the same weights (the RNG is otherwise seeded per process)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    spec = cfg.model
    source = str(Path(spec.name).expanduser()) if looks_local(spec.name) else spec.name
    kwargs: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if cfg.adapter.type == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if resolve_precision(cfg) == "bf16" else torch.float16,
        )
    else:
        kwargs["dtype"] = _dtype(spec)
    with config_errors("optimization", "fix the optimization.seed field the error names"):  # numpy's bound
        set_seed(cfg.optimization.seed)
    try:
        if spec.task == "sequence-classification":
            names = label_names or [str(i) for i in range(num_labels or 2)]
            model = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=num_labels or len(names),
                id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)},
                **kwargs,
            )
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            "model.name",
            f"cannot load {spec.name!r} as {spec.task}: {_first_line(exc)}",
            "check the path/id and that the architecture supports this task",
        ) from exc
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return apply_adapter(model, cfg.adapter, spec.task)


def apply_adapter(model: Any, adapter: AdapterSpec, task: str) -> Any:
    """Make only the configured part of ``model`` trainable."""
    if adapter.type == "none":
        return model
    if adapter.type == "top-layers":
        return freeze_all_but_top(model, adapter.top_layers or 1)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if adapter.type == "qlora":
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules or "all-linear",
        task_type="SEQ_CLS" if task == "sequence-classification" else "CAUSAL_LM",
        fan_in_fan_out=_conv1d(model),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(
            "adapter.targetModules", str(exc).splitlines()[0][:200], "name modules that exist in the model"
        ) from exc


def _conv1d(model: Any) -> bool:
    """Whether the model's projections are transformers' ``Conv1D`` (GPT-2 and its kin), whose weights are
    stored (in, out): LoRA must then be told ``fan_in_fan_out``, which peft would otherwise correct with a
    warning on every run."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def transformer_blocks(model: Any) -> tuple[str, Any]:
    """The model's stack of transformer blocks: the longest ``ModuleList`` (e.g. ``transformer.h``)."""
    import torch

    best: tuple[str, Any] | None = None
    for name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and len(module) > 0
            and (best is None or len(module) > len(best[1]))
        ):
            best = (name, module)
    if best is None:
        raise ConfigError(
            "adapter.type", "top-layers: the model has no list of transformer blocks", "use lora"
        )
    return best


def freeze_all_but_top(model: Any, n: int) -> Any:
    """Train only the last ``n`` transformer blocks and whatever sits outside the base model (the head)."""
    _, blocks = transformer_blocks(model)
    if n > len(blocks):
        raise ConfigError(
            "adapter.topLayers", f"is {n} but the model has {len(blocks)} blocks", f"use 1..{len(blocks)}"
        )
    for p in model.parameters():
        p.requires_grad = False
    for block in list(blocks)[-n:]:
        for p in block.parameters():
            p.requires_grad = True
    base_ids = {id(p) for p in model.base_model.parameters()} if model.base_model is not model else set()
    for p in model.parameters():
        if id(p) not in base_ids and base_ids:
            p.requires_grad = True  # the task head
    return model


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
