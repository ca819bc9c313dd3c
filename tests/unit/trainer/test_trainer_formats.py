"""Data formats as a specification: which rows carry loss, how the type is picked, what packing keeps.

A byte-level chat tokenizer with a ChatML template is built here (no download).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.config import DatasetSpec, ModelSpec, TrainerConfig
from finetune_trainer.data import prepare
from finetune_trainer.exitcodes import ConfigError
from finetune_trainer.formats import IGNORE_INDEX, alpaca_prompt, resolve_type, standard_row, tokenize_row
from finetune_trainer.modeling import load_tokenizer
from finetune_trainer.tiny_model import build_chat_model_dir, build_chat_tokenizer, build_tokenizer, toy_chats


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_chat_tokenizer()


def trained_text(tok: Any, out: dict[str, list[int]]) -> str:
    """The text of the tokens that carry loss."""
    return tok.decode([t for t, label in zip(out["input_ids"], out["labels"], strict=True) if label != -100])


CHAT = [
    {"role": "system", "content": "be brief ."},
    {"role": "user", "content": "tell me about the cat ."},
    {"role": "assistant", "content": "the cat likes the ball ."},
    {"role": "user", "content": "and the dog ?"},
    {"role": "assistant", "content": "the dog sees the tree ."},
]


def test_chat_prompt_tokens_carry_no_loss_and_every_assistant_turn_does(tok: Any) -> None:
    out = tokenize_row({"messages": CHAT}, tok, completion_only=True)
    labels, ids = out["labels"], out["input_ids"]
    assert len(labels) == len(ids)
    assert tok.decode(ids).startswith("<|im_start|>system")
    trained = trained_text(tok, out)
    assert trained == "the cat likes the ball .<|im_end|>\nthe dog sees the tree .<|im_end|>\n"
    # the system and user turns, and the assistant header, are all -100
    first = ids.index(tok.convert_tokens_to_ids("<|im_start|>"))
    assert labels[first] == IGNORE_INDEX
    assert "tell me" not in trained and "<|im_start|>" not in trained


def test_completion_only_loss_off_trains_on_every_token(tok: Any) -> None:
    out = tokenize_row({"messages": CHAT}, tok, completion_only=False)
    assert out["labels"] == out["input_ids"]


def test_prompt_completion_masks_the_prompt_and_ends_with_eos(tok: Any) -> None:
    out = tokenize_row({"prompt": "tell me about the cat .", "completion": " the cat likes it ."}, tok, True)
    assert trained_text(tok, out) == " the cat likes it .<|im_end|>"
    assert out["input_ids"][-1] == tok.eos_token_id
    prompt_len = len(tok("tell me about the cat .")["input_ids"])
    assert out["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len


def test_instruction_rows_become_the_alpaca_prompt_and_response(tok: Any) -> None:
    spec = DatasetSpec(files=["x.jsonl"], type="instruction")
    row = standard_row({"instruction": "name a pet", "input": "", "output": "a cat"}, spec, "instruction")
    assert row == {"prompt": alpaca_prompt("name a pet", None), "completion": "a cat"}
    assert (
        "### Input:"
        in standard_row({"instruction": "name it", "input": "a dog", "output": "rex"}, spec, "instruction")[
            "prompt"
        ]
    )
    out = tokenize_row(row, tok, True)
    assert trained_text(tok, out) == "a cat<|im_end|>"


def test_auto_type_prefers_messages_then_prompt_completion_then_instruction_then_text() -> None:
    spec = DatasetSpec(files=["x.jsonl"])
    assert resolve_type(spec, ["messages", "text"]) == "chat"
    assert resolve_type(spec, ["prompt", "completion", "text"]) == "prompt-completion"
    assert resolve_type(spec, ["instruction", "input", "output"]) == "instruction"
    assert resolve_type(spec, ["text", "label"]) == "text"
    with pytest.raises(ConfigError, match=r"^dataset\.textField: column 'text' not found"):
        resolve_type(spec, ["body"])


def test_an_explicit_type_names_the_missing_field() -> None:
    spec = DatasetSpec(files=["x.jsonl"], type="prompt-completion", completion_field="answer")
    with pytest.raises(ConfigError, match=r"^dataset\.completionField.*'answer' not found"):
        resolve_type(spec, ["prompt", "completion"])


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_cfg(path: Path, **dataset: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "model": {"name": "tiny"},
            "dataset": {"files": [str(path)], "validationFraction": 0.1, **dataset},
            "optimization": {"maxSeqLength": 96},
        }
    )


def test_prepared_chat_data_is_unpacked_by_default_and_batches_with_minus_100_padding(
    tok: Any, tmp_path: Path
) -> None:
    data = prepare(chat_cfg(write_jsonl(tmp_path / "c.jsonl", toy_chats(40))), tok)
    assert data.data_type == "chat" and not data.packed
    assert len(data.train) == 36 and len(data.eval) == 4
    batch = data.collator([data.train[0], data.train[1]])
    labels, ids = batch["labels"], batch["input_ids"]
    assert labels.shape == ids.shape
    for row, mask in zip(labels.tolist(), batch["attention_mask"].tolist(), strict=True):
        assert row[0] == -100  # the conversation starts with a prompt
        assert all(label == -100 for label, m in zip(row, mask, strict=True) if m == 0)  # padding: no loss
        assert any(label != -100 for label in row)


def test_packed_chat_data_keeps_completion_only_labels(tok: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", toy_chats(40))
    plain = prepare(chat_cfg(path), tok)
    packed = prepare(chat_cfg(path, packing=True), tok)
    assert packed.packed and len(packed.train) < len(plain.train)
    assert all(len(ids) <= 96 for ids in packed.train["input_ids"])

    def loss_tokens(ds: Any) -> int:
        return sum(sum(1 for t in labels if t != -100) for labels in ds["labels"])

    assert loss_tokens(packed.train) == loss_tokens(plain.train)  # whole examples moved, none cut


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_a_tiny_chat_model_loads_back_the_tokenizer_it_was_built_with(
    tok: Any, arch: str, tmp_path: Path
) -> None:
    """The trainer loads a tiny chat model's tokenizer with AutoTokenizer, which picks the class by model type
    (a qwen2 folder's as a Qwen2Tokenizer that rebuilds the BPE from the file): the byte-level BPE comes
    back with the same ids and chat template, so the GPU QLoRA run and the demos train on their text."""
    loaded = load_tokenizer(ModelSpec(name=str(build_chat_model_dir(tmp_path / arch, arch))))
    text = "the teacher likes the awful river in the morning ."
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)


def test_chat_data_on_a_tokenizer_without_a_chat_template_names_the_fix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", toy_chats(20))
    with pytest.raises(ConfigError, match=r"^dataset\.type: .*no chat template.*chat_template"):
        prepare(chat_cfg(path), build_tokenizer())


def test_messages_that_are_not_role_content_lists_name_the_field(tok: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": ["hi", "there"]}] * 10)
    with pytest.raises(ConfigError, match=r"^dataset\.messagesField"):
        prepare(chat_cfg(path, type="chat"), tok)


def test_a_prompt_past_max_seq_length_leaves_no_loss_and_says_so(tok: Any, tmp_path: Path) -> None:
    rows = [{"prompt": "word " * 200, "completion": "end"}] * 10
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ConfigError, match=r"^optimization\.maxSeqLength"):
        prepare(chat_cfg(path), tok)


def test_the_best_checkpoint_needs_checkpoints_at_evaluation_steps_else_the_last_is_kept_with_a_warning() -> (
    None
):
    from finetune_trainer.runsetup import best_model_warning, keeps_best

    def cfg(every: int, final: str = "best") -> TrainerConfig:
        return TrainerConfig.model_validate(
            {
                "model": {"name": "m"},
                "dataset": {"files": ["d.jsonl"]},
                "evaluation": {"everySteps": 50},
                "checkpoints": {"everySteps": every, "finalModel": final},
            }
        )

    assert keeps_best(cfg(100), True) and best_model_warning(cfg(100), True) is None
    assert not keeps_best(cfg(100), False)  # no validation data: nothing to pick the best by
    assert not keeps_best(cfg(100, "last"), True) and best_model_warning(cfg(100, "last"), True) is None
    assert not keeps_best(cfg(25), True)
    assert "not a multiple of evaluation.everySteps" in (best_model_warning(cfg(25), True) or "")


def test_a_tracker_that_is_not_installed_or_has_no_server_names_tracking_report_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finetune_trainer import runsetup

    def cfg(report: str) -> TrainerConfig:
        return TrainerConfig.model_validate(
            {"model": {"name": "m"}, "dataset": {"files": ["d.jsonl"]}, "tracking": {"reportTo": report}}
        )

    runsetup.check_tracking(cfg("none"))
    monkeypatch.setitem(runsetup.TRACKER_PACKAGES, "tensorboard", ("finetune_no_such_package",))
    with pytest.raises(ConfigError, match=r"^tracking\.reportTo: is tensorboard but .* no finetune_no_such"):
        runsetup.check_tracking(cfg("tensorboard"))
    monkeypatch.setitem(runsetup.TRACKER_PACKAGES, "mlflow", ("json",))  # "installed"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"^tracking\.reportTo: is mlflow but MLFLOW_TRACKING_URI"):
        runsetup.check_tracking(cfg("mlflow"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    runsetup.check_tracking(cfg("mlflow"))


def test_config_paths_under_a_local_runners_mounts_map_to_its_folders(tmp_path: Path) -> None:
    from finetune_trainer.localpaths import map_config_paths

    cfg = TrainerConfig.model_validate(
        {
            "model": {"name": "/sources/models/m"},
            "dataset": {"files": ["/sources/data/*.jsonl", str(tmp_path)]},
        }
    )
    mounts = {"/sources": "/runner/pvc/ns/models", "/tmp": "/runner/pod/tmp"}
    mapped = map_config_paths(cfg, mounts)
    assert mapped.model.name == "/runner/pvc/ns/models/models/m"
    assert mapped.dataset.files == ["/runner/pvc/ns/models/data/*.jsonl", str(tmp_path)]  # exists: kept
    assert map_config_paths(cfg, {}) is cfg
