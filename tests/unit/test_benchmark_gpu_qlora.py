"""benchmarks/gpu_qlora.py: the GPU run's recipe (a Qwen2-0.5B-shaped model, QLoRA, chat data, packing)
as a specification, and the whole script on CPU with ``--tiny`` (plain LoRA; bitsandbytes needs CUDA)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import gpu_qlora  # noqa: E402


def test_the_gpu_recipe_is_qlora_bf16_chat_packed_with_checkpointing() -> None:
    cfg = gpu_qlora.trainer_config(Path("/m"), Path("/d.jsonl"), Path("/o"), 60, tiny=False)
    assert cfg["adapter"]["type"] == "qlora" and cfg["optimization"]["precision"] == "bf16"
    assert cfg["optimization"]["gradientCheckpointing"] and cfg["optimization"]["maxSteps"] == 60
    assert cfg["dataset"]["type"] == "chat" and cfg["dataset"]["packing"]
    from finetune_trainer.config import TrainerConfig

    TrainerConfig.model_validate(cfg)  # the trainer accepts it as it is


def test_the_gpu_model_has_qwen2_0_5b_shape() -> None:
    assert gpu_qlora.QWEN2_05B["hidden_size"] == 896 and gpu_qlora.QWEN2_05B["num_hidden_layers"] == 24
    assert pytest.approx(136e6, rel=0.01) == gpu_qlora.QWEN2_VOCAB * 896  # tied embeddings: 136M of 494M


@pytest.mark.slow
def test_tiny_run_on_cpu_trains_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    code = gpu_qlora.main(["--tiny", "--steps", "12", "--out", str(out), "--workdir", str(tmp_path / "w")])
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["ok"] and report["lossFell"] and report["lossEnd"] < report["lossStart"]
    assert report["steps"] == 12 and report["tokensPerSecond"] > 0
    assert report["peakGpuMemoryBytes"] is None and report["device"] == "cpu"
    assert {"torch", "transformers", "peft", "trl"} <= set(report["versions"])
    assert json.loads(capsys.readouterr().out) == report
