"""The trainer as a real process: the shipped examples, kill/restart resumption, and DDP under torchrun.

Each test starts fresh interpreters (≈ 20-30 s of imports each on the CI machine), so all are ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_trainer.config import ExitCode, parse_result
from finetune_trainer.tiny_model import build_model_dir
from finetune_trainer.training import latest_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data" / "tiny-sentiment.jsonl"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("models") / "gpt2", "gpt2")


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "finetune_trainer", *args, "--metrics-port", "0"]


def events_of(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run(cmd: list[str], timeout: float = 300) -> tuple[int, list[dict[str, Any]], str, float]:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, events_of(proc.stdout), proc.stderr, time.monotonic() - started


def test_range_test_example(tiny_gpt2: Path, tmp_path: Path) -> None:
    result_file = tmp_path / "out.json"
    code, _, err, wall = run(
        trainer_cmd(
            "range-test",
            "--config",
            "examples/trainer/range-test-tiny.yaml",
            "--set",
            f"model.name={tiny_gpt2}",
            "--output-dir",
            str(tmp_path / "rt"),
            "--result-file",
            str(result_file),
        )
    )
    assert code == ExitCode.OK, err[-3000:]
    assert len(result_file.read_bytes()) <= 4096
    result = parse_result(json.loads(result_file.read_text()))
    assert result.recommended_learning_rate and all(v is not None for v in result.suggestions.values())
    assert (tmp_path / "rt" / "curve.png").exists()
    print(f"range-test example: {wall:.1f} s wall; suggestions {result.suggestions}")


def test_train_example_converges(tiny_gpt2: Path, tmp_path: Path) -> None:
    result_file = tmp_path / "out.json"
    code, events, err, wall = run(
        trainer_cmd(
            "train",
            "--config",
            "examples/trainer/train-tiny.yaml",
            "--set",
            f"model.name={tiny_gpt2}",
            "--output-dir",
            str(tmp_path / "train"),
            "--result-file",
            str(result_file),
        )
    )
    assert code == ExitCode.OK, err[-3000:]
    evals = [e["evalLoss"] for e in events if e["event"] == "eval"]
    assert evals[-1] < evals[0]
    print(f"train example: {wall:.1f} s wall; eval losses {evals}")


def test_recommend_example_recommends_a_learning_rate_with_its_evidence(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    """The README's laptop command: the adaptive stages in one process, trials on their share of the data."""
    result_file = tmp_path / "out.json"
    code, events, err, wall = run(
        trainer_cmd(
            "recommend",
            "--config",
            "examples/trainer/recommend-tiny.yaml",
            "--set",
            f"model.name={tiny_gpt2}",
            "--output-dir",
            str(tmp_path / "recommend"),
            "--result-file",
            str(result_file),
        ),
        timeout=600,
    )
    assert code == ExitCode.OK, err[-3000:]
    result = parse_result(json.loads(result_file.read_text()))
    assert result.kind == "recommend" and result.recommended_learning_rate, result
    assert not result.weak, result.message
    assert result.steps_spent == result.range_test.steps + sum(t.steps for t in result.trials)
    assert [e for e in events if e["event"] == "trial"], "each trial announced on stdout"
    print(f"recommend example: {wall:.1f} s wall; {result.recommended_learning_rate:.3g} ({result.message})")


def _config(tmp_path: Path, model: Path, out: Path, max_steps: int, strategy: str = "ddp") -> Path:
    cfg = {
        "distributed": {"strategy": strategy},
        "model": {"name": str(model)},
        "dataset": {"files": [str(DATA)], "validationFraction": 0.1},
        "optimization": {"batchSize": 8, "maxSeqLength": 32, "maxSteps": max_steps},
        "schedule": {"type": "linear", "warmupRatio": 0.05},
        "learningRate": 1e-3,
        "evaluation": {"everySteps": 100},
        "checkpoints": {"everySteps": 25, "keep": 3},
        "outputDir": str(out),
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_until(cmd: list[str], stop_when: Any, sig: int) -> tuple[int, list[dict[str, Any]]]:
    """Run ``cmd``, send ``sig`` once an event satisfies ``stop_when``; return (exit code, events)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events: list[dict[str, Any]] = []
    assert proc.stdout is not None
    sent = False
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if not sent and stop_when(event):
            proc.send_signal(sig)
            sent = True
    return proc.wait(timeout=120), events


def test_killed_run_resumes_from_its_checkpoint_without_repeating_steps(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = _config(tmp_path, tiny_gpt2, out, max_steps=300)
    cmd = trainer_cmd("train", "--config", str(config), "--result-file", str(tmp_path / "r.json"))

    # 1. SIGKILL right after the first checkpoint: no chance to clean up.
    code, _ = _run_until(cmd, lambda e: e["event"] == "checkpoint", signal.SIGKILL)
    assert code == -signal.SIGKILL
    newest = latest_checkpoint(out)  # a checkpoint the kill cut off mid-save would be skipped
    assert newest is not None
    resume_a = int(Path(newest).name.split("-")[1])
    assert resume_a % 25 == 0

    # 2. Restart: continues at the checkpoint's next step; SIGTERM later saves a checkpoint and exits 5.
    code, second = _run_until(
        cmd, lambda e: e["event"] == "step" and e["step"] >= resume_a + 10, signal.SIGTERM
    )
    assert code == ExitCode.INTERRUPTED
    start = next(e for e in second if e["event"] == "start")
    assert start["resumeFrom"] == f"checkpoint-{resume_a}"
    steps2 = [e["step"] for e in second if e["event"] == "step"]
    assert steps2[0] == resume_a + 1, "the restarted run must not redo finished steps"
    resume_b = steps2[-1]
    assert (out / f"checkpoint-{resume_b}").is_dir(), "SIGTERM saves a checkpoint at the step it stopped"

    # 3. Restart again: runs exactly the remaining steps.
    code, third = _run_until(cmd, lambda e: False, signal.SIGTERM)
    assert code == ExitCode.OK
    steps3 = [e["step"] for e in third if e["event"] == "step"]
    assert steps3[0] == resume_b + 1 and steps3[-1] == 300
    assert len(steps3) == 300 - resume_b
    result = parse_result(json.loads((tmp_path / "r.json").read_text()))
    assert result.kind == "train" and result.steps == 300 and result.resumed_from_step == resume_b


def _ranks_errors(stderr: str) -> str:
    """What the ranks said before they failed (torchrun's closing summary names only signals and exit
    codes): their error lines, then the tail."""
    marks = ("Error", "error:", "terminate", "Fatal", "Traceback", "what()", "Exception")
    said = [line for line in stderr.splitlines() if any(m in line for m in marks)]
    return "\n".join(said[:60]) + "\n…\n" + stderr[-2500:]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_train_under_torchrun(tiny_gpt2: Path, tmp_path: Path, strategy: str) -> None:
    """DDP on CPU: every process holds the model, only rank 0 reports, and the trainer says what accelerate
    set up. FSDP on CPU is refused as a config error naming the field (accelerate would quietly fall back
    to DDP; admission refuses CPU nodes with fsdp before a pod starts)."""
    out = tmp_path / "out"
    config = _config(tmp_path, tiny_gpt2, out, max_steps=10, strategy=strategy)
    result_file = tmp_path / "r.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # as the operator runs one pod: torchrun picks a free port itself
        "--nproc-per-node",
        "2",
        "-m",
        "finetune_trainer",
        "train",
        "--config",
        str(config),
        "--result-file",
        str(result_file),
        "--metrics-port",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=env, check=False)
    if strategy == "fsdp":
        assert proc.returncode != 0
        failure = json.loads(result_file.read_text())
        assert failure["exitCode"] == ExitCode.BAD_CONFIG, failure
        assert failure["error"].startswith("distributed.strategy: fsdp across 2 processes needs GPU"), failure
        return
    assert proc.returncode == 0, _ranks_errors(proc.stderr)
    events = events_of(proc.stdout)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1, "only rank 0 reports"
    assert starts[0]["effectiveBatchSize"] == 16  # 8 per device x 2 processes
    assert [(e["strategy"], e["worldSize"]) for e in events if e["event"] == "distributed"] == [(strategy, 2)]
    result = parse_result(json.loads(result_file.read_text()))
    assert result.kind == "train" and result.steps == 10
    assert (out / "final" / "model.safetensors").exists()
