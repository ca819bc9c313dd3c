"""Datasets: read (local files or a hub name), check, split, subset and tokenise.

Causal-LM rows are formatted by :mod:`finetune_trainer.formats` (text, chat, prompt-completion,
instruction) for every command alike; packing of chat and instruction data and batching use TRL
(``pack_dataset``, its language-modelling collator).

Everything here raises :class:`ConfigError` naming the ``dataset.*`` field at fault, and writes nothing
but the ``datasets`` cache, so it can run before any output exists.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from finetune_trainer.config import DatasetSpec, TrainerConfig
from finetune_trainer.exitcodes import ConfigError
from finetune_trainer.formats import check_chat_template, packs, resolve_type, standard_row, tokenize_row
from finetune_trainer.runtime import world_size

FORMAT_BY_SUFFIX = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
}


@dataclass
class PreparedData:
    """Tokenised splits ready for a ``Trainer``."""

    train: Any
    """Training split (a ``datasets.Dataset`` of model inputs)."""
    eval: Any | None
    """Validation split, or ``None`` when nothing is held out."""
    collator: Any
    """Batches examples (pads; builds causal-LM labels)."""
    num_labels: int | None = None
    label_names: list[str] | None = None
    tokens_per_example: int | None = None
    """Tokens per training example: exact for packed plain text, the mean when lengths vary."""
    columns: list[str] = field(default_factory=list)
    data_type: str = "text"
    """The resolved ``dataset.type`` (``text``, ``chat``, ``prompt-completion``, ``instruction``)."""
    packed: bool = False
    """Whether examples were packed into ``maxSeqLength`` sequences."""


def file_format(spec: DatasetSpec) -> str:
    """The ``datasets`` builder for the spec's files (``auto`` → by the first file's extension)."""
    if spec.format != "auto":
        return spec.format
    assert spec.files
    suffix = Path(spec.files[0]).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise ConfigError(
            "dataset.format",
            f"cannot tell the format of {spec.files[0]!r} from its extension",
            "set dataset.format to one of json, csv, parquet, text",
        )
    return FORMAT_BY_SUFFIX[suffix]


def check_files(spec: DatasetSpec) -> None:
    """Every local file (training and validation) exists and is readable; every glob matches something."""
    _check_paths(spec.files or [], "dataset.files")
    _check_paths(spec.validation_files or [], "dataset.validationFiles")
    if spec.validation_files and spec.format == "auto":
        _check_same_format(spec)


def _check_paths(names: list[str], field_name: str) -> None:
    for i, name in enumerate(names):
        if any(c in name for c in "*?["):
            if not glob.glob(name, recursive=True):
                raise ConfigError(f"{field_name}[{i}]", f"{name!r} matches no file", "fix the pattern")
            continue
        path = Path(name)
        if not path.is_file() or not os.access(path, os.R_OK):
            problem = "does not exist" if not path.exists() else "is not a readable file"
            raise ConfigError(f"{field_name}[{i}]", f"{name!r} {problem}", "point it at a readable data file")
        if path.stat().st_size == 0:
            raise ConfigError(f"{field_name}[{i}]", f"{name!r} is empty", "point it at a file with data")


def _check_same_format(spec: DatasetSpec) -> None:
    """Validation files are read with the training files' builder, so their extensions must agree."""
    builder = file_format(spec)
    for i, name in enumerate(spec.validation_files or []):
        other = FORMAT_BY_SUFFIX.get(Path(name).suffix.lower())
        if other is not None and other != builder:
            raise ConfigError(
                f"dataset.validationFiles[{i}]",
                f"{name!r} looks like {other} but dataset.files are {builder}",
                "give validation files the same format as dataset.files",
            )


def check_sample_by(spec: DatasetSpec, builder: str | None) -> None:
    """``sampleBy`` other than ``line`` needs local plain text (``builder`` is ``None`` for a hub dataset)."""
    if spec.sample_by != "line" and builder != "text":
        what = f"dataset.files are {builder}" if builder else "dataset.name is a hub dataset"
        raise ConfigError(
            "dataset.sampleBy",
            f"is {spec.sample_by!r} but {what}; it applies to local plain-text files only",
            "remove dataset.sampleBy, or use .txt files (or set dataset.format to text)",
        )


def _builder_kwargs(spec: DatasetSpec, builder: str) -> dict[str, Any]:
    assert spec.files
    if builder == "csv" and spec.files[0].endswith(".tsv"):
        return {"delimiter": "\t"}
    if builder == "text":
        return {"sample_by": spec.sample_by}  # the text builder splits lines, paragraphs or whole files
    return {}


def _read_files(builder: str, files: list[str], field_name: str, kwargs: dict[str, Any]) -> Any:
    import datasets

    try:
        return datasets.load_dataset(builder, data_files=files, split="train", **kwargs)
    except Exception as exc:  # the library raises many types for unreadable data
        raise ConfigError(
            field_name,
            f"cannot read {', '.join(files)} as {builder}: {_first_line(exc)}",
            "check the file contents or set dataset.format",
        ) from exc


def load_raw(spec: DatasetSpec) -> tuple[Any, Any | None]:
    """(train split, validation split or ``None``) as read, before any subsetting or tokenising.

    Local ``validationFiles`` are read with the training files' builder and become the validation split.
    """
    import datasets

    datasets.disable_progress_bars()
    if spec.files:
        check_files(spec)
        builder = file_format(spec)
        check_sample_by(spec, builder)
        if spec.validation_split:
            raise ConfigError(
                "dataset.validationSplit",
                "local files have a single split",
                "remove validationSplit and use validationFiles or validationFraction",
            )
        kwargs = _builder_kwargs(spec, builder)
        train = _read_files(builder, list(spec.files), "dataset.files", kwargs)
        val = None
        if spec.validation_files:
            val = _read_files(builder, list(spec.validation_files), "dataset.validationFiles", kwargs)
        return train, val
    assert spec.name
    check_sample_by(spec, None)
    source = {"path": spec.name, "name": spec.config, "revision": spec.revision}
    check_hub_config(spec)
    try:
        train = datasets.load_dataset(**source, split=spec.split)
        val = datasets.load_dataset(**source, split=spec.validation_split) if spec.validation_split else None
    except Exception as exc:
        raise ConfigError(
            "dataset.name",
            f"cannot load {spec.name!r} (config {spec.config!r}, split {spec.split!r}, revision "
            f"{spec.revision!r}): {_first_line(exc)}",
            "check the dataset name, dataset.split/validationSplit, dataset.revision, and network access to "
            "the hub",
        ) from exc
    return train, val


def check_hub_config(spec: DatasetSpec) -> None:
    """``dataset.config`` names one of the dataset's configurations (checked before any data is read)."""
    import datasets

    if spec.config is None:
        return
    try:
        names = datasets.get_dataset_config_names(spec.name, revision=spec.revision)
    except Exception as exc:
        raise ConfigError(
            "dataset.name",
            f"cannot read the configurations of {spec.name!r}: {_first_line(exc)}",
            "check the dataset name, dataset.revision, and network access to the hub",
        ) from exc
    if names and spec.config not in names:
        raise ConfigError(
            "dataset.config",
            f"{spec.name!r} has no configuration {spec.config!r} (it has: {', '.join(names)})",
            "set dataset.config to one of those, or remove it for the default",
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def check_columns(dataset: Any, spec: DatasetSpec, task: str) -> None:
    """The columns the data type needs (causal LM), or the text and label columns (classification)."""
    columns = list(dataset.column_names)
    if task == "causal-lm":
        resolve_type(spec, columns)
        return
    if spec.text_field not in columns:
        raise ConfigError(
            "dataset.textField",
            f"column {spec.text_field!r} not found (columns: {', '.join(columns)})",
            "set dataset.textField to the column holding the text",
        )
    if task == "sequence-classification":
        if spec.label_field is None:
            raise ConfigError("dataset.labelField", "is required for sequence-classification", "set it")
        if spec.label_field not in columns:
            raise ConfigError(
                "dataset.labelField",
                f"column {spec.label_field!r} not found (columns: {', '.join(columns)})",
                "set dataset.labelField to the column holding the class label",
            )


def label_mapping(values: Iterable[Any], num_labels: int | None) -> tuple[dict[Any, int], list[str]]:
    """Label value → id. Strings are sorted and numbered; integers are their own ids."""
    distinct = set(values)
    if all(isinstance(v, bool | int) for v in distinct):
        ints = sorted(int(v) for v in distinct)
        if ints and ints[0] < 0:
            raise ConfigError(
                "dataset.labelField", f"integer labels must be ≥ 0, found {ints[0]}", "renumber them"
            )
        count = max(num_labels or 0, (ints[-1] + 1) if ints else 0)
        return {v: int(v) for v in distinct}, [str(i) for i in range(count)]
    names = sorted(str(v) for v in distinct)
    if num_labels is not None and len(names) > num_labels:
        raise ConfigError(
            "model.numLabels",
            f"is {num_labels} but the data has {len(names)} distinct labels",
            "raise model.numLabels or leave it unset",
        )
    return {v: names.index(str(v)) for v in distinct}, names


def split_and_subset(train: Any, val: Any | None, cfg: TrainerConfig) -> tuple[Any, Any | None]:
    """Hold out validation (when there is no validation split or files), then take the seeded
    ``maxSamples`` subset of what is left (and ``evaluation.maxSamples`` of the validation rows)."""
    spec = cfg.dataset
    if val is None and spec.validation_fraction > 0 and len(train) >= 2:
        parts = train.train_test_split(test_size=spec.validation_fraction, seed=spec.seed)
        train, val = parts["train"], parts["test"]
    if spec.max_samples is not None and spec.max_samples < len(train):
        train = train.shuffle(seed=spec.seed).select(range(spec.max_samples))
    limit = cfg.evaluation.max_samples
    if val is not None and limit is not None and limit < len(val):
        val = val.shuffle(seed=spec.seed).select(range(limit))
    return train, val


def take_fraction(rows: Any, cfg: TrainerConfig) -> Any:
    """The seeded ``sampleFraction`` of the training rows, at least one optimiser batch of them (across
    every process)."""
    fraction = cfg.dataset.sample_fraction
    if fraction is None:
        return rows
    keep = max(cfg.optimization.effective_batch_size(world_size()), math.ceil(fraction * len(rows)))
    return rows.shuffle(seed=cfg.dataset.seed).select(range(keep)) if keep < len(rows) else rows


def _tokenize_causal(dataset: Any, tokenizer: Any, spec: DatasetSpec, max_len: int, packing: bool) -> Any:
    text = spec.text_field
    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        out = tokenizer([str(t) for t in batch[text]], truncation=not packing, max_length=max_len)
        if packing and eos is not None:
            out["input_ids"] = [ids if ids and ids[-1] == eos else [*ids, eos] for ids in out["input_ids"]]
        return {"input_ids": out["input_ids"]}

    tokenized = dataset.map(encode, batched=True, remove_columns=list(dataset.column_names))
    if not packing:
        return tokenized

    def pack(batch: dict[str, list[list[int]]]) -> dict[str, Any]:
        flat = [tok for ids in batch["input_ids"] for tok in ids]
        usable = (len(flat) // max_len) * max_len
        blocks = [flat[i : i + max_len] for i in range(0, usable, max_len)]
        return {"input_ids": blocks, "attention_mask": [[1] * max_len for _ in blocks], "labels": blocks}

    # One map batch over everything keeps the packing deterministic and loses at most one partial block.
    return tokenized.map(pack, batched=True, batch_size=max(1, len(tokenized)), remove_columns=["input_ids"])


def _tokenize_supervised(
    dataset: Any, tokenizer: Any, spec: DatasetSpec, kind: str, max_len: int, packing: bool, split: str
) -> Any:
    """Chat, prompt-completion and instruction rows: formatted, tokenised with completion-only labels,
    cut to ``max_len``, rows without a completion token dropped, then packed (TRL) when asked."""

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        out = tokenize_row(standard_row(row, spec, kind), tokenizer, spec.completion_only_loss)
        return {"input_ids": out["input_ids"][:max_len], "labels": out["labels"][:max_len]}

    tokenized = dataset.map(encode, remove_columns=list(dataset.column_names))
    kept = tokenized.filter(lambda row: any(t != -100 for t in row["labels"]))
    if len(kept) == 0 and len(tokenized) > 0:
        raise ConfigError(
            "optimization.maxSeqLength",
            f"every {split} example's completion lies past {max_len} tokens (or is empty): none has loss",
            "raise optimization.maxSeqLength, or shorten the prompts",
        )
    if not packing:
        return kept
    from trl.data_utils import pack_dataset

    return pack_dataset(kept, max_len, strategy="bfd")


def _mean_length(dataset: Any) -> int | None:
    if len(dataset) == 0:
        return None
    return round(sum(len(ids) for ids in dataset["input_ids"]) / len(dataset))


def _tokenize_classification(
    dataset: Any, tokenizer: Any, spec: DatasetSpec, max_len: int, mapping: dict[Any, int]
) -> Any:
    text, label = spec.text_field, spec.label_field

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        out = tokenizer([str(t) for t in batch[text]], truncation=True, max_length=max_len)
        return {
            "input_ids": out["input_ids"],
            "attention_mask": out["attention_mask"],
            "labels": [mapping[v] for v in batch[label]],
        }

    return dataset.map(encode, batched=True, remove_columns=list(dataset.column_names))


def prepare(cfg: TrainerConfig, tokenizer: Any) -> PreparedData:
    """Read, check, split, subset and tokenise the configured dataset."""
    spec, task = cfg.dataset, cfg.model.task
    train_raw, val_raw = load_raw(spec)
    if len(train_raw) == 0:
        raise ConfigError(
            "dataset", "the training split is empty", "point dataset.files/name at data with rows"
        )
    check_columns(train_raw, spec, task)
    if val_raw is not None:
        check_columns(val_raw, spec, task)
    rows, val_raw = split_and_subset(train_raw, val_raw, cfg)
    share = take_fraction(rows, cfg)
    data = _tokenized(cfg, tokenizer, share, val_raw)
    batch = cfg.optimization.effective_batch_size(world_size())
    if len(data.train) < batch and len(share) < len(rows):
        # the share's rows packed (or, without a completion, dropped) into less than a batch: the share is
        # then one batch of the examples that all the rows make, so a short trial on little data still runs
        whole = _tokenized(cfg, tokenizer, rows, val_raw)
        keep = min(batch, len(whole.train))
        data = replace(whole, train=whole.train.shuffle(seed=cfg.dataset.seed).select(range(keep)))
    return data


def _tokenized(cfg: TrainerConfig, tokenizer: Any, train_raw: Any, val_raw: Any | None) -> PreparedData:
    """The training rows and validation rows tokenised for the model's task and the data's type."""
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

    spec, task, max_len = cfg.dataset, cfg.model.task, cfg.optimization.max_seq_length
    if task == "sequence-classification":
        values = list(train_raw[spec.label_field]) + (
            list(val_raw[spec.label_field]) if val_raw is not None else []
        )
        if any(v is None for v in values):
            raise ConfigError("dataset.labelField", "some rows have no label", "fill or drop unlabelled rows")
        mapping, names = label_mapping(values, cfg.model.num_labels)
        train = _tokenize_classification(train_raw, tokenizer, spec, max_len, mapping)
        val = (
            _tokenize_classification(val_raw, tokenizer, spec, max_len, mapping)
            if val_raw is not None
            else None
        )
        collator = DataCollatorWithPadding(tokenizer)
        return PreparedData(
            train, val, collator, num_labels=cfg.model.num_labels or len(names), label_names=names
        )

    kind = resolve_type(spec, list(train_raw.column_names))
    packing = packs(spec, kind)
    if kind == "text":
        train = _tokenize_causal(train_raw, tokenizer, spec, max_len, packing)
        val = _tokenize_causal(val_raw, tokenizer, spec, max_len, packing) if val_raw is not None else None
        if val is not None and len(val) == 0:
            val = None
        if packing:
            from transformers import default_data_collator

            collator = default_data_collator
        else:
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        tokens = max_len if packing else None
        return PreparedData(train, val, collator, tokens_per_example=tokens, data_type=kind, packed=packing)

    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as CompletionCollator

    if kind == "chat" or (kind == "prompt-completion" and _conversational_prompt(train_raw, spec)):
        check_chat_template(tokenizer, spec)
    train = _tokenize_supervised(train_raw, tokenizer, spec, kind, max_len, packing, "training")
    val = (
        _tokenize_supervised(val_raw, tokenizer, spec, kind, max_len, packing, "validation")
        if val_raw is not None
        else None
    )
    if val is not None and len(val) == 0:
        val = None
    collator = CompletionCollator(pad_token_id=tokenizer.pad_token_id, return_position_ids=packing)
    return PreparedData(
        train, val, collator, tokens_per_example=_mean_length(train), data_type=kind, packed=packing
    )


def _conversational_prompt(dataset: Any, spec: DatasetSpec) -> bool:
    return len(dataset) > 0 and isinstance(dataset[0][spec.prompt_field], list)
