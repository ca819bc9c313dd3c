"""Data preparation: formats, labels, splits, subsets, packing, and the step arithmetic Trainer uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.config import DatasetSpec, TrainerConfig
from finetune_trainer.data import file_format, label_mapping, prepare
from finetune_trainer.exitcodes import ConfigError
from finetune_trainer.runsetup import steps_per_epoch
from finetune_trainer.tiny_model import build_tokenizer, toy_sentences, vocabulary


def test_steps_per_epoch_matches_trainer_counting() -> None:
    assert steps_per_epoch(100, 8, 1, 1) == 13  # ceil(100/8)
    assert steps_per_epoch(100, 8, 2, 1) == 7  # per rank: ceil(100/16)
    assert steps_per_epoch(100, 8, 1, 4) == 4  # 13 batches → 3 full accumulations + 1 partial
    assert steps_per_epoch(3, 8, 1, 4) == 1


def test_file_format_by_extension() -> None:
    assert file_format(DatasetSpec(files=["a.jsonl"])) == "json"
    assert file_format(DatasetSpec(files=["a.parquet"])) == "parquet"
    assert file_format(DatasetSpec(files=["a.txt"])) == "text"
    assert file_format(DatasetSpec(files=["a.weird"], format="csv")) == "csv"
    with pytest.raises(ConfigError, match=r"^dataset\.format"):
        file_format(DatasetSpec(files=["a.weird"]))


def test_label_mapping_strings_and_ints() -> None:
    mapping, names = label_mapping(["neg", "pos", "neg"], None)
    assert names == ["neg", "pos"] and mapping == {"neg": 0, "pos": 1}
    mapping, names = label_mapping([0, 2, 1], None)
    assert names == ["0", "1", "2"] and mapping[2] == 2
    with pytest.raises(ConfigError, match=r"^model\.numLabels"):
        label_mapping(["a", "b", "c"], 2)


def test_toy_data_is_all_in_vocabulary() -> None:
    words = set(vocabulary())
    for row in toy_sentences(50):
        assert set(row["text"].split()) <= words


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_sentences(100)))
    return path


def cfg_for(path: Path, **dataset: object) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "model": {"name": "tiny", "task": dataset.pop("task", "causal-lm")},
            "dataset": {"files": [str(path)], **dataset},
            "optimization": {"maxSeqLength": 16},
        }
    )


def test_causal_packing_makes_full_blocks_and_holds_out_validation(jsonl: Path) -> None:
    data = prepare(cfg_for(jsonl, validationFraction=0.2), build_tokenizer())
    assert len(data.eval) > 0
    row = data.train[0]
    assert len(row["input_ids"]) == 16 and row["labels"] == row["input_ids"]
    assert data.tokens_per_example == 16


def test_max_samples_is_a_seeded_subset(jsonl: Path) -> None:
    a = prepare(cfg_for(jsonl, maxSamples=10, packing=False), build_tokenizer())
    b = prepare(cfg_for(jsonl, maxSamples=10, packing=False), build_tokenizer())
    assert len(a.train) == 10 and a.train["input_ids"] == b.train["input_ids"]


def test_sample_fraction_is_a_seeded_subset_after_max_samples_and_at_least_one_batch(jsonl: Path) -> None:
    def train(**dataset: object) -> list[list[int]]:
        return prepare(cfg_for(jsonl, packing=False, **dataset), build_tokenizer()).train["input_ids"]

    assert len(train()) == 90  # 10% held out for validation
    quarter = train(sampleFraction=0.25)
    assert len(quarter) == 23 and quarter == train(sampleFraction=0.25)  # ceil(0.25 x 90), the same rows
    assert len(train(maxSamples=40, sampleFraction=0.5)) == 20
    assert len(train(sampleFraction=0.01)) == 8  # one batch (batchSize 8), not 1 row


def test_a_packed_share_is_at_least_one_batch_of_packed_sequences(jsonl: Path) -> None:
    """An adaptive trial on little data (the demo's `auto` job) gets a share of the rows that packs into
    fewer sequences than one batch: it trains on one batch of the sequences all the rows make instead."""

    def train(**dataset: object) -> list[list[int]]:
        return prepare(cfg_for(jsonl, **dataset), build_tokenizer()).train["input_ids"]

    every = train()
    share = train(sampleFraction=0.05)
    assert len(every) > 8 and len(share) == 8, "one batch (batchSize 8) of 16-token sequences"
    assert all(len(s) == 16 for s in share) and share == train(sampleFraction=0.05), "seeded"
    assert 8 < len(train(sampleFraction=0.5)) < len(every), "a share that packs into a batch or more stays"


def test_classification_labels_become_ids(jsonl: Path) -> None:
    data = prepare(cfg_for(jsonl, task="sequence-classification", labelField="label"), build_tokenizer())
    assert data.label_names == ["negative", "positive"] and data.num_labels == 2
    assert set(data.train["labels"]) == {0, 1}


def test_unreadable_dataset_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ConfigError, match=r"^dataset\.files"):
        prepare(cfg_for(bad), build_tokenizer())


def test_glob_patterns_are_accepted_when_they_match(jsonl: Path) -> None:
    from finetune_trainer.data import check_files

    check_files(DatasetSpec(files=[str(jsonl.parent / "*.jsonl")]))
    with pytest.raises(ConfigError, match=r"^dataset\.files\[0\]"):
        check_files(DatasetSpec(files=[str(jsonl.parent / "*.parquet")]))


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".parquet"])
def test_text_csv_and_parquet_files_load(tmp_path: Path, suffix: str) -> None:
    rows = toy_sentences(60)
    path = tmp_path / f"d{suffix}"
    if suffix == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows))
    else:
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    data = prepare(cfg_for(path, validationFraction=0.1), build_tokenizer())
    assert len(data.train) > 0 and len(data.eval) > 0


def test_latest_checkpoint_skips_ones_cut_off_mid_save(tmp_path: Path) -> None:
    from finetune_trainer.training import latest_checkpoint

    assert latest_checkpoint(tmp_path / "missing") is None
    for step, complete in ((25, True), (50, True), (75, False), (100, False)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(b"x")
        if complete:
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-100" / "trainer_state.json").write_text('{"global_st')  # torn write
    (tmp_path / "checkpoint-notanumber").mkdir()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-50")


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validation_files_are_the_eval_split_and_nothing_is_held_out(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", toy_sentences(40, seed=1))
    val = write_jsonl(tmp_path / "val.jsonl", toy_sentences(7, seed=2))
    cfg = cfg_for(train, validationFiles=[str(val)], validationFraction=0.5, packing=False)
    data = prepare(cfg, build_tokenizer())
    tokenizer = build_tokenizer()
    assert len(data.train) == 40  # validationFraction is ignored
    expected = [tokenizer(r["text"])["input_ids"] for r in toy_sentences(7, seed=2)]
    assert data.eval["input_ids"] == expected


@pytest.mark.parametrize(
    ("name", "problem"),
    [("missing.jsonl", "does not exist"), ("val.txt", "looks like text"), ("empty.jsonl", "is empty")],
)
def test_bad_validation_files_name_the_field(tmp_path: Path, name: str, problem: str) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", toy_sentences(20))
    (tmp_path / "val.txt").write_text("some text\n")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"^dataset\.validationFiles") as caught:
        prepare(cfg_for(train, validationFiles=[str(tmp_path / name)]), build_tokenizer())
    assert problem in str(caught.value)


PROSE = "def f(x):\n    return x\n\nclass A:\n    pass\n"


@pytest.mark.parametrize(
    ("sample_by", "rows"),
    [
        ("line", ["def f(x):", "    return x", "", "class A:", "    pass"]),
        ("paragraph", ["def f(x):\n    return x", "class A:\n    pass\n"]),
        ("document", [PROSE]),
    ],
)
def test_sample_by_splits_text_into_lines_paragraphs_or_documents(
    tmp_path: Path, sample_by: str, rows: list[str]
) -> None:
    from finetune_trainer.data import load_raw

    path = tmp_path / "code.txt"
    path.write_text(PROSE)
    train, val = load_raw(DatasetSpec(files=[str(path)], sample_by=sample_by))
    assert train["text"] == rows and val is None


def test_sample_by_document_applies_to_validation_files_too(tmp_path: Path) -> None:
    from finetune_trainer.data import load_raw

    (tmp_path / "a.txt").write_text(PROSE)
    (tmp_path / "b.txt").write_text("x = 1\ny = 2\n")
    spec = DatasetSpec(files=[str(tmp_path / "a.txt")], validation_files=[str(tmp_path / "b.txt")])
    _, val = load_raw(spec.model_copy(update={"sample_by": "document"}))
    assert val["text"] == ["x = 1\ny = 2\n"]


def test_sample_by_needs_plain_text(jsonl: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dataset\.sampleBy: is 'document' but dataset\.files are json"):
        prepare(cfg_for(jsonl, sampleBy="document"), build_tokenizer())


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune_trainer.tiny_model import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("model") / "gpt2")


def batch_order(model_dir: Path, data: Path, tmp_path: Path, dataset_seed: int, seed: int) -> list[list[int]]:
    """The first epoch's batches, as the run's ``Trainer`` deals them."""
    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import build_trainer, prepare_run, training_arguments
    from finetune_trainer.training import fine_tune_schedule

    cfg = TrainerConfig.model_validate(
        {
            "model": {"name": str(model_dir)},
            "dataset": {
                "files": [str(data)],
                "packing": False,
                "validationFraction": 0,
                "seed": dataset_seed,
            },
            "optimization": {"maxSeqLength": 16, "batchSize": 4, "seed": seed},
        }
    )
    plan = prepare_run(cfg, "trial", 1e-3)
    args = training_arguments(plan, tmp_path / "run", max_steps=None, evaluate=False, save=False)
    model = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)
    trainer = build_trainer(plan, model, args, fine_tune_schedule(plan), [])
    return [row for batch in trainer.get_train_dataloader() for row in batch["input_ids"][:, 0:6].tolist()]


def test_batch_order_follows_optimization_seed_not_dataset_seed(
    tiny_gpt2: Path, jsonl: Path, tmp_path: Path
) -> None:
    base = batch_order(tiny_gpt2, jsonl, tmp_path, dataset_seed=1, seed=1)
    assert batch_order(tiny_gpt2, jsonl, tmp_path, dataset_seed=2, seed=1) == base
    other = batch_order(tiny_gpt2, jsonl, tmp_path, dataset_seed=1, seed=2)
    assert other != base and sorted(other) == sorted(base)  # the same examples, dealt differently
