"""Chat and instruction fine-tuning through the CLI, in-process, on a tiny chat model built here (BPE
tokenizer + ChatML template, no download): training on `messages`, the range test on the same formatting,
the best checkpoint kept beside the last, the LoRA merge, the model card, the hub push (client methods
monkeypatched), and bad input that fails before any training step with the field named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_trainer import cli
from finetune_trainer.config import ExitCode, parse_result
from finetune_trainer.tiny_model import build_chat_model_dir, build_model_dir, toy_chats


def run_cli(tmp_path: Path, cfg: dict[str, Any], command: str) -> tuple[int, list[dict[str, Any]], Path]:
    """Run one command in-process; (exit code, progress events, result file)."""
    import contextlib
    import io

    config, result_file = tmp_path / f"{command}.yaml", tmp_path / f"{command}-result.json"
    config.write_text(yaml.safe_dump(cfg))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(
            [command, "--config", str(config), "--result-file", str(result_file), "--metrics-port", "0"]
        )
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()], result_file


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chat_model_dir(tmp_path_factory.mktemp("models") / "chat", "gpt2")


@pytest.fixture(scope="module")
def chats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_chats(200)))
    return path


def chat_config(model: Path, data: Path, out: Path, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": {"name": str(model)},
        "dataset": {"files": [str(data)], "validationFraction": 0.1},
        "optimization": {"batchSize": 8, "maxSeqLength": 64, "maxSteps": 30},
        "learningRate": 3e-3,
        "evaluation": {"everySteps": 10},
        "checkpoints": {"everySteps": 10, "keep": 1},
        "rangeTest": {"minLearningRate": 1e-5, "maxLearningRate": 1.0, "steps": 20, "extend": False},
        "outputDir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = (
            {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
        )
    return cfg


def test_chat_fine_tune_learns_and_writes_the_model_card(
    chat_model: Path, chats: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = chat_config(chat_model, chats, out, learningRateSource="LRSweep chat-lr (adaptive)")
    code, events, result_file = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.OK, events[-1]
    start = next(e for e in events if e["event"] == "start")
    assert start["warmupSteps"] == 2  # the default: 5% of 30 steps, rounded up
    evals = [e["evalLoss"] for e in events if e["event"] == "eval"]
    assert evals[-1] < evals[0] * 0.7, evals
    result = parse_result(json.loads(result_file.read_text()))
    assert result.final_model == "final" and result.model_card == "README.md"
    assert result.final_model_from == "best" and result.last_checkpoint == "checkpoint-30"
    card = (out / "final" / "README.md").read_text()
    assert "| Peak learning rate | 0.003 |" in card
    assert "| Learning rate from | LRSweep chat-lr (adaptive) |" in card
    assert "| Schedule | cosine, warmup 5% of the steps" in card
    assert "chat data" in card


def test_range_test_on_chat_data_uses_the_same_formatting(
    chat_model: Path, chats: Path, tmp_path: Path
) -> None:
    code, events, result_file = run_cli(
        tmp_path, chat_config(chat_model, chats, tmp_path / "o"), "range-test"
    )
    assert code == ExitCode.OK, events[-1]
    start = next(e for e in events if e["event"] == "start")
    assert start["trainExamples"] == 180  # one example per conversation: unpacked chat rows
    assert parse_result(json.loads(result_file.read_text())).steps >= 10


def test_the_best_checkpoint_by_eval_loss_is_kept_and_becomes_the_final_model(
    chat_model: Path, chats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation loss scripted per step (10: 2.0, 20: 1.0, 30: 3.0): Hugging Face's own best-model tracking
    must keep checkpoint-20 beside the newest, end on its weights, and the result must name both."""
    from safetensors.torch import load_file
    from transformers import Trainer

    scripted = {10: 2.0, 20: 1.0, 30: 3.0}
    real_evaluate = Trainer.evaluate

    def evaluate(self: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        metrics = real_evaluate(self, *args, **kwargs)
        metrics["eval_loss"] = scripted.get(self.state.global_step, metrics["eval_loss"])
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    out = tmp_path / "out"
    code, events, result_file = run_cli(tmp_path, chat_config(chat_model, chats, out), "train")
    assert code == ExitCode.OK, events[-1]
    result = parse_result(json.loads(result_file.read_text()))
    assert (result.best_checkpoint, result.last_checkpoint) == ("checkpoint-20", "checkpoint-30")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]
    assert result.final_model_from == "best"
    final = load_file(out / "final" / "model.safetensors")
    best = load_file(out / "checkpoint-20" / "model.safetensors")
    last = load_file(out / "checkpoint-30" / "model.safetensors")
    name = next(iter(final))
    assert (final[name] == best[name]).all() and not (final[name] == last[name]).all()


def test_lora_merge_and_push_to_hub(
    chat_model: Path, chats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merged model loads without peft and predicts what base + adapter predicts; the push uploads the
    merged folder with its model card through the real client code up to the HTTP call."""
    import torch
    from huggingface_hub import HfApi
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    calls: dict[str, Any] = {}

    def create_repo(self: Any, repo_id: str, **kw: Any) -> Any:
        calls["create"] = (repo_id, kw)
        return type("RepoUrl", (), {"url": f"https://huggingface.co/{repo_id}"})()

    def upload_folder(self: Any, **kw: Any) -> None:
        calls["upload"] = kw
        calls["files"] = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        calls["token"] = self.token

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out = tmp_path / "out"
    cfg = chat_config(
        chat_model,
        chats,
        out,
        adapter={"type": "lora", "r": 4, "alpha": 8},
        optimization={"maxSteps": 10},
        output={"mergeAdapter": True, "pushToHub": True, "hubModelId": "me/tiny-chat"},
    )
    code, events, result_file = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.OK, events[-1]
    result = parse_result(json.loads(result_file.read_text()))
    assert result.merged_model == "merged" and result.hub_url == "https://huggingface.co/me/tiny-chat"
    assert calls["create"] == ("me/tiny-chat", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"]["folder_path"] == str(out / "merged") and calls["token"] == "hf_test_token"
    assert "README.md" in calls["files"] and "model.safetensors" in calls["files"]
    assert "adapter_config.json" not in calls["files"]

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_model), out / "final")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)


# --- bad input: exit 2 before any training step, the field and the fix named ------------------------------


def bad(tmp_path: Path, cfg: dict[str, Any], field: str, command: str = "train") -> str:
    code, events, result_file = run_cli(tmp_path, cfg, command)
    error = json.loads(result_file.read_text())
    assert code == ExitCode.BAD_CONFIG and error["reason"] == "BAD_CONFIG", error
    assert error["error"].startswith(f"{field}:"), error["error"]
    assert not any(e["event"] == "step" for e in events)
    assert not list((tmp_path / "out").glob("checkpoint-*"))
    return str(error["error"])


def test_messages_on_a_tokenizer_without_a_chat_template(chats: Path, tmp_path: Path) -> None:
    plain = build_model_dir(tmp_path / "plain", "gpt2")
    message = bad(tmp_path, chat_config(plain, chats, tmp_path / "out"), "dataset.type", "range-test")
    assert "no chat template" in message and "chat_template" in message


def test_a_prompt_completion_field_missing_from_the_data(chat_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "pc.jsonl"
    data.write_text("".join(json.dumps({"prompt": "hi", "answer": "there"}) + "\n" for _ in range(20)))
    cfg = chat_config(chat_model, data, tmp_path / "out", dataset={"type": "prompt-completion"})
    assert "'completion' not found" in bad(tmp_path, cfg, "dataset.completionField", "trial")


def test_a_dataset_config_that_does_not_exist(chat_model: Path, tmp_path: Path) -> None:
    """A dataset folder laid out like a hub repository (README front matter lists its configurations) goes
    through the same loading code as a hub id."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in toy_chats(40)))
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: chat\n  data_files:\n  - split: train\n"
        "    path: data/chat.jsonl\n---\n"
    )
    cfg = chat_config(chat_model, Path("unused"), tmp_path / "out")
    cfg["dataset"] = {"name": str(repo), "config": "chta", "validationFraction": 0.1}
    message = bad(tmp_path, cfg, "dataset.config")
    assert "no configuration 'chta'" in message and "chat" in message
    cfg["dataset"]["config"] = "chat"
    cfg["optimization"]["maxSteps"] = 2
    code, events, _ = run_cli(tmp_path, cfg, "trial")
    assert code == ExitCode.OK, events[-1]


def test_push_to_hub_without_a_token(
    chat_model: Path, chats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login either
    cfg = chat_config(
        chat_model, chats, tmp_path / "out", output={"pushToHub": True, "hubModelId": "me/tiny-chat"}
    )
    assert "hubTokenSecret" in bad(tmp_path, cfg, "output.pushToHub")


def test_report_to_tensorboard_writes_event_files_to_the_output_volume(
    chat_model: Path, chats: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = chat_config(
        chat_model, chats, out, optimization={"maxSteps": 10}, tracking={"reportTo": "tensorboard"}
    )
    code, events, _ = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.OK, events[-1]
    files = list((out / "runs").rglob("events.out.tfevents.*"))
    assert files and all(f.stat().st_size > 0 for f in files), sorted((out / "runs").rglob("*"))
