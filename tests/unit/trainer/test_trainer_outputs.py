"""Result file ≤ 4 KiB, JSON-lines progress, config loading/overrides, metrics names, step arithmetic."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pytest

from finetune_trainer.config import CurvePoint, RangeTestResult, TrainResult
from finetune_trainer.exitcodes import ConfigError, ExitCode
from finetune_trainer.metrics import TrainerMetrics, default_address
from finetune_trainer.report import Progress, compact_json, downsample_indices, round_bulk, round_sig
from finetune_trainer.settings import apply_override, load_config


def big_result(points: int = 200, warnings: int = 16) -> RangeTestResult:
    return RangeTestResult(
        recommended_learning_rate=1.23456789e-4,
        rule="valley",
        suggestions={
            "steepest": 1.1111111e-3,
            "valley": 1.23456789e-4,
            "minimum-over-10": None,
            "max-over-3": 0.3,
        },
        curve=[CurvePoint(lr=1e-7 * 1.07**i, loss=3.14159265 - i * 1e-3) for i in range(points)],
        steps=10000,
        best_loss=1.23456789,
        effective_batch_size=64,
        adapter="lora",
        warnings=["w" * 300 for _ in range(warnings)],
    )


def test_compact_result_always_fits_a_termination_message() -> None:
    text = compact_json(big_result())
    assert len(text.encode()) <= 4096
    data = json.loads(text)
    assert data["recommendedLearningRate"] == 1.23456789e-4, (
        "a scalar stays exact: the operator decides on it"
    )
    assert data["bestLoss"] == 1.23456789
    rounded = {round_sig(p.loss) for p in big_result().curve}
    assert {p["loss"] for p in data["curve"]} <= rounded, "curve points: 4 significant digits"
    assert data["suggestions"]["minimum-over-10"] is None or "minimum-over-10" not in data["suggestions"]
    assert 10 <= len(data["curve"]) <= 100
    assert data["curve"][0]["lr"] == 1e-7  # first point kept


def test_compact_result_keeps_a_small_curve_whole() -> None:
    data = json.loads(compact_json(big_result(points=50, warnings=0)))
    assert len(data["curve"]) == 50


def test_compact_train_result() -> None:
    text = compact_json(TrainResult(learning_rate=3e-4, steps=10, total_steps=10, eval_loss=float("nan")))
    assert json.loads(text)["kind"] == "train"
    assert "NaN" not in text


def test_round_and_downsample() -> None:
    assert round_sig(0.000123456) == 0.0001235
    assert round_sig({"a": [1.23456, 7]}) == {"a": [1.235, 7]}
    bulk = {"curve": [{"lr": 1.23456}], "trials": [[1, 2.34567]], "evals": [{"evalLoss": 3.45678}]}
    assert round_bulk({**bulk, "c": 1.23456}) == {
        "curve": [{"lr": 1.235}],
        "trials": [[1, 2.346]],
        "evals": [{"evalLoss": 3.45678}],
        "c": 1.23456,
    }, "curves and trial tables rounded; a pruner's intermediate values and every scalar exact"
    assert downsample_indices(5, 10) == [0, 1, 2, 3, 4]
    idx = downsample_indices(1000, 100)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 999


def test_progress_is_json_lines() -> None:
    stream = io.StringIO()
    Progress(stream).emit("step", step=3, loss=float("nan"), lr=1e-4, skipped=None)
    record = json.loads(stream.getvalue())
    assert record["event"] == "step" and record["step"] == 3 and record["loss"] is None
    assert "skipped" not in record


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = "model: {name: gpt2}\ndataset: {files: [a.jsonl]}\n"


def test_load_config_yaml_json_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), ["optimization.batchSize=4", "schedule.warmup_ratio=0.1"])
    assert cfg.optimization.batch_size == 4 and cfg.schedule.warmup_ratio == 0.1
    as_json = write(tmp_path, json.dumps({"model": {"name": "gpt2"}, "dataset": {"name": "imdb"}}), "c.json")
    cfg = load_config(as_json, output_dir="/x", learning_rate=2e-5)
    assert cfg.output_dir == "/x" and cfg.learning_rate == 2e-5


@pytest.mark.parametrize(
    ("text", "overrides", "field"),
    [
        (MINIMAL + "optimisation: {batchSize: 4}\n", [], "optimisation"),
        (MINIMAL, ["optimization.batchSise=4"], "optimization.batchSise"),
        (MINIMAL, ["optimization.batchSize=0"], "optimization.batchSize"),
        (
            MINIMAL,
            ["rangeTest.minLearningRate=0.1", "rangeTest.maxLearningRate=0.01"],
            "rangeTest.minLearningRate",
        ),
        ("dataset: {files: [a.jsonl]}\n", [], "model"),
        ("model: [1, 2]\n: :\n", [], "--config"),
        (MINIMAL, ["noequals"], "--set"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, text: str, overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    assert str(info.value).startswith(field)
    assert info.value.exit_code == ExitCode.BAD_CONFIG
    assert "\n" not in str(info.value)


def test_override_creates_sections_and_parses_values() -> None:
    data: dict[str, object] = {"optimization": {"batch_size": 2}}
    apply_override(data, "optimization.batchSize=16")
    apply_override(data, "adapter.targetModules=[q_proj, v_proj]")
    assert data == {"optimization": {"batch_size": 16}, "adapter": {"targetModules": ["q_proj", "v_proj"]}}


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "nope.yaml")


def test_metrics_are_served_with_prefix_and_base_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    assert default_address() == "127.0.0.1"
    metrics = TrainerMetrics.create("train")
    metrics.set(step=5, learning_rate=3e-4, loss=2.5, eval_loss=None, samples_per_second=100.0)
    metrics.set_phase("training")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(port)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.stop()
    assert 'finetune_trainer_step{command="train"} 5.0' in body
    assert 'finetune_trainer_learning_rate{command="train"} 0.0003' in body
    assert 'finetune_trainer_phase{command="train",phase="training"} 1.0' in body
    for name in (
        "loss",
        "smoothed_loss",
        "eval_loss",
        "samples_per_second",
        "tokens_per_second",
        "epoch",
        "total_steps",
    ):
        assert f"# TYPE finetune_trainer_{name} gauge" in body
    assert "python_gc" not in body  # private registry: no default collectors


def test_metrics_port_zero_serves_nothing() -> None:
    metrics = TrainerMetrics.create("range-test")
    metrics.serve(0)
    assert metrics.server is None


def test_compact_result_under_a_tiny_limit_is_still_json() -> None:
    text = compact_json(big_result(), limit=400)
    assert len(text.encode()) <= 400
    assert json.loads(text)["rule"] == "valley"


def test_metrics_port_in_use_is_a_config_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=r"^--metrics-port"):
            TrainerMetrics.create("train").serve(port, "127.0.0.1")
