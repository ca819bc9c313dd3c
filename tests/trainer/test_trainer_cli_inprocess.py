"""The CLI as a specification, run in-process on a tiny random-weight model (imports are paid once).

Bad input exits 2 with the field named and nothing in the output directory; a range test yields a curve,
every rule's suggestion, a recommendation and curve.png; train converges; trial reports an eval loss or
divergence (exit 3); the result file always fits a termination message (≤ 4 KiB).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_trainer import cli
from finetune_trainer.adaptive import label_entropy, trial_steps
from finetune_trainer.config import ExitCode, TrainerConfig, parse_result
from finetune_trainer.runsetup import prepare_run
from finetune_trainer.tiny_model import build_model_dir

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data" / "tiny-sentiment.jsonl"


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("models") / "gpt2", "gpt2")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("models") / "bert", "bert")


def base_config(model_dir: Path, out: Path, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": {"name": str(model_dir), "task": "causal-lm"},
        "dataset": {"files": [str(DATA)], "textField": "text", "validationFraction": 0.1},
        "optimization": {"batchSize": 8, "maxSeqLength": 32, "maxSteps": 30},
        "schedule": {"type": "linear", "warmupSteps": 3},
        "learningRate": 3e-3,
        "evaluation": {"everySteps": 10},
        "checkpoints": {"everySteps": 10, "keep": 2},
        "rangeTest": {"minLearningRate": 1e-6, "maxLearningRate": 1.0, "steps": 40, "smoothing": 0.1},
        "outputDir": str(out),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def run_cli(
    tmp_path: Path, cfg: dict[str, Any], command: str, *extra: str
) -> tuple[int, list[dict[str, Any]], Path]:
    config = tmp_path / f"{command}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result_file = tmp_path / f"{command}-result.json"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(
            [
                command,
                "--config",
                str(config),
                "--result-file",
                str(result_file),
                "--metrics-port",
                "0",
                *extra,
            ]
        )
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return code, events, result_file


# --- bad input ----------------------------------------------------------------------------------------------


BAD_INPUTS = [
    pytest.param({"model": {"name": "/nonexistent/model"}}, "model.name", id="missing-model-path"),
    pytest.param(
        {"dataset": {"files": ["/nonexistent/data.jsonl"]}}, "dataset.files[0]", id="missing-dataset"
    ),
    pytest.param({"dataset": {"textField": "body"}}, "dataset.textField", id="text-field-absent"),
    pytest.param(
        {"model": {"task": "sequence-classification"}, "dataset": {"labelField": "sentiment"}},
        "dataset.labelField",
        id="label-field-absent",
    ),
    pytest.param(
        {"rangeTest": {"minLearningRate": 1e-2, "maxLearningRate": 1e-3}},
        "rangeTest",
        id="min-lr-not-below-max",
    ),
    pytest.param({"schedule": {"warmupSteps": 40}}, "schedule.warmupSteps", id="warmup-longer-than-training"),
    pytest.param(
        {"optimization": {"maxSteps": None, "epochs": 1}, "schedule": {"warmupSteps": 40}},
        "schedule.warmupSteps",
        id="warmup-longer-than-an-epoch-of-data",
    ),
    pytest.param({"adapter": {"type": "qlora"}}, "adapter.type", id="qlora-without-cuda"),
    pytest.param(
        {"optimization": {"batchSize": 4096}}, "optimization.batchSize", id="batch-larger-than-dataset"
    ),
    pytest.param({"optimizaton": {"batchSize": 8}}, "optimizaton", id="unknown-key"),
    pytest.param({"optimization": {"seed": 2**32}}, "optimization.seed", id="seed-numpy-refuses"),
    pytest.param({"schedule": {"minLearningRate": 3e-3}}, "schedule.minLearningRate", id="floor-at-the-peak"),
]


@pytest.mark.parametrize(("change", "field"), BAD_INPUTS)
def test_bad_input_exits_2_naming_the_field_and_writes_nothing(
    tiny_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], field: str
) -> None:
    out = tmp_path / "out"
    cfg = base_config(tiny_gpt2, out, **change)
    command = "range-test" if "rangeTest" in change else "train"
    code, events, result_file = run_cli(tmp_path, cfg, command)
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == ExitCode.BAD_CONFIG
    assert len(error_lines) == 1 and error_lines[0].startswith(f"error: {field}"), err[-2000:]
    assert not out.exists(), "nothing may be written to the output directory"
    error = json.loads(result_file.read_text())
    assert error["kind"] == "error" and error["exitCode"] == 2 and field in error["error"]
    assert events[-1]["event"] == "error"


@pytest.mark.parametrize("command", ["train", "trial"])
def test_a_config_the_libraries_refuse_exits_2_not_1_so_it_is_never_retried(
    tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """A value past the schema (here a seed numpy refuses, as from an older trainer's bounds) fails where
    transformers sets it up: a config error naming the section, not a crash the pod policy would retry."""
    real_load = cli.load_config

    def load_past_the_schema(*args: Any, **kwargs: Any) -> Any:
        cfg = real_load(*args, **kwargs)
        optimization = cfg.optimization.model_copy(update={"seed": 2**32})
        return cfg.model_copy(update={"optimization": optimization})

    monkeypatch.setattr(cli, "load_config", load_past_the_schema)
    code, _, result_file = run_cli(tmp_path, base_config(tiny_gpt2, tmp_path / "out"), command)
    error = json.loads(result_file.read_text())
    assert code == ExitCode.BAD_CONFIG, error
    assert error["reason"] == "BAD_CONFIG" and error["error"].startswith("optimization: "), error
    assert "2**32" in error["error"] and "fix the optimization" in error["error"]


def test_set_overrides_and_unknown_override(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(tiny_gpt2, tmp_path / "out")
    code, _, _ = run_cli(tmp_path, cfg, "train", "--set", "optimization.batchSiz=8")
    assert code == ExitCode.BAD_CONFIG
    code, _, _ = run_cli(tmp_path, cfg, "train", "--set", "optimization.batchSize=4096")
    assert code == ExitCode.BAD_CONFIG  # the override took effect (and is too large)


# --- range test ---------------------------------------------------------------------------------------------


def test_range_test_reports_curve_rules_recommendation_and_plot(tiny_gpt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, events, result_file = run_cli(tmp_path, base_config(tiny_gpt2, out), "range-test")
    assert code == ExitCode.OK
    compact = result_file.read_bytes()
    assert len(compact) <= 4096
    result = parse_result(json.loads(compact))
    assert result.kind == "rangeTest"
    assert set(result.suggestions) == {"ceiling", "steepest", "valley", "minimum-over-10", "max-over-3"}
    assert result.recommended_learning_rate is not None and 1e-6 <= result.recommended_learning_rate <= 1.0
    assert result.rule == "ceiling", "the rule the LR-quality benchmark ranks first is the default"
    assert result.recommended_learning_rate == result.suggestions["ceiling"]
    minimum = result.loss_minimum_learning_rate
    assert minimum is not None
    assert result.recommended_learning_rate == pytest.approx(minimum / 10**0.5, rel=1e-3)
    assert 10 <= len(result.curve) <= 100
    assert result.effective_batch_size == 8 and result.adapter == "none"
    assert result.baseline_loss is None, "a causal LM has no labels: its trials always move its loss"
    full = json.loads((out / "result.json").read_text())
    assert full["suggestions"] == pytest.approx(result.suggestions, rel=1e-3)
    assert (out / "curve.png").stat().st_size > 10_000
    assert (out / "curve.csv").read_text().startswith("step,lr,loss,smoothedLoss")
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["learningRate"] == pytest.approx(1e-6)
    assert all("smoothedLoss" in e for e in steps)
    assert not [
        p for p in out.iterdir() if p.name.startswith("checkpoint-")
    ]  # the test's weights are discarded


def test_a_range_test_that_trained_nothing_says_so_and_reports_no_minimum(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    """A window far too low (1e-9..1e-8, not extended): the loss never falls from its start, so there is no
    loss minimum and no ceiling, and a warning says every rule's value is noise (the operator then fails a
    `rangeTest` sweep `NothingTrained`)."""
    window = {"minLearningRate": 1e-9, "maxLearningRate": 1e-8, "extend": False, "steps": 20}
    cfg = base_config(tiny_gpt2, tmp_path / "out", rangeTest=window)
    code, _events, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_bytes()))
    assert result.kind == "rangeTest" and result.stop_reason == "completed"
    assert result.loss_minimum_learning_rate is None and result.suggestions["ceiling"] is None
    assert any("never fell from where the ramp started" in w for w in result.warnings)


def test_range_test_in_validation_loss_mode_with_lora(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(
        tiny_gpt2,
        tmp_path / "out",
        rangeTest={"useValidationLoss": True, "steps": 20, "widenByPrior": True},
        adapter={"type": "lora", "r": 4, "alpha": 8},
    )
    code, events, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_text()))
    assert result.adapter == "lora"
    start = next(e for e in events if e["event"] == "start")
    assert start["validationLoss"] is True
    assert start["maxLearningRate"] == 1.0  # widening never narrows


def test_plot_command_redraws_from_a_result(tiny_gpt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = base_config(tiny_gpt2, out, rangeTest={"steps": 20})
    code, _, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    png = tmp_path / "again.png"
    assert cli.main(["plot", str(result_file), "-o", str(png)]) == ExitCode.OK
    assert png.stat().st_size > 10_000
    assert cli.main(["plot", str(tmp_path / "missing.json"), "-o", str(png)]) == ExitCode.BAD_CONFIG


# --- train and trial ----------------------------------------------------------------------------------------


def test_train_converges_and_saves_the_final_model(tiny_gpt2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = base_config(tiny_gpt2, out, schedule={"type": "cosine_with_min_lr", "minLearningRate": 1e-5})
    code, events, result_file = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.OK
    evals = [e["evalLoss"] for e in events if e["event"] == "eval"]
    assert len(evals) == 3 and evals[-1] < evals[0] * 0.8, evals
    result = parse_result(json.loads(result_file.read_text()))
    assert result.kind == "train" and result.steps == 30 and result.resumed_from_step is None
    assert result.eval_loss == pytest.approx(evals[-1], rel=1e-3)
    assert (out / "final" / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]  # keep 2


def test_train_classification_with_top_layers(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = base_config(
        tiny_bert,
        tmp_path / "out",
        model={"task": "sequence-classification"},
        dataset={"labelField": "label"},
        adapter={"type": "top-layers", "topLayers": 1},
        optimization={"maxSteps": 20, "optimizer": "sgd", "momentum": 0.9},
        checkpoints={"saveFinalModel": False},
        learningRate=0.05,
    )
    code, events, _ = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.OK
    start = next(e for e in events if e["event"] == "start")
    assert 0 < start["trainableParameters"] < start["parameters"]


def test_a_classifiers_range_test_reports_its_validation_labels_entropy(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """The best that a trial ignoring its input can score on the validation rows the trials are judged on
    (the file has 213 positive and 187 negative rows, and 40 of them are held out)."""
    cfg = base_config(
        tiny_bert,
        tmp_path / "out",
        model={"task": "sequence-classification"},
        dataset={"labelField": "label"},
        rangeTest={"steps": 20},
    )
    code, _, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_bytes()))
    plan = prepare_run(TrainerConfig.model_validate(cfg), "range-test", None)
    held_out = list(plan.data.eval["labels"])
    assert len(held_out) == 40 and len(plan.data.train) == 360
    assert result.baseline_loss == pytest.approx(label_entropy(held_out))
    share = 213 / 400
    entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))
    assert abs(result.baseline_loss - entropy) < 0.05  # type: ignore[operator]


def test_trial_reports_eval_loss(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(
        tiny_gpt2, tmp_path / "out", optimization={"maxSteps": 15}, evaluation={"everySteps": 4}
    )
    code, _, result_file = run_cli(tmp_path, cfg, "trial", "--learning-rate", "3e-3")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_text()))
    assert result.kind == "trial" and result.learning_rate == 3e-3 and not result.diverged
    assert result.eval_loss is not None and result.steps == 15
    # every intermediate validation loss, the final one last (what a pruner compares running trials with)
    assert [e.step for e in result.evals] == [4, 8, 12, 15]
    assert result.evals[-1].eval_loss == result.eval_loss
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_trial_at_an_absurd_lr_diverges_with_exit_3(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(tiny_gpt2, tmp_path / "out", optimization={"maxSteps": 15, "maxGradNorm": 0})
    code, _, result_file = run_cli(tmp_path, cfg, "trial", "--learning-rate", "10")
    assert code == ExitCode.DIVERGED
    result = parse_result(json.loads(result_file.read_text()))
    assert result.diverged and result.eval_loss is None


def test_default_result_file_is_none_outside_kubernetes() -> None:
    from finetune_trainer.report import default_result_file

    expected = "/dev/termination-log" if os.access("/dev/termination-log", os.W_OK) else None
    assert default_result_file() == expected


def test_early_stopping_ends_the_run(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(
        tiny_gpt2,
        tmp_path / "out",
        optimization={"maxSteps": 60},
        evaluation={"everySteps": 5},
        earlyStopping={"enabled": True, "patience": 1, "minDelta": 100.0},  # nothing counts as improvement
        checkpoints={"saveFinalModel": False},
    )
    code, events, result_file = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_text()))
    assert (
        result.early_stopped and result.steps == 10
    )  # first eval sets the best, the second runs out of patience
    assert [e["event"] for e in events].count("earlyStop") == 1


@pytest.mark.parametrize(
    "optimization",
    [{"optimizer": "adafactor"}, {"optimizer": "sgd", "momentum": 0.5}, {"precision": "bf16"}],
    ids=["adafactor", "sgd", "bf16-on-cpu"],
)
def test_trial_with_other_optimizers_and_precisions(
    tiny_gpt2: Path, tmp_path: Path, optimization: dict[str, Any]
) -> None:
    cfg = base_config(tiny_gpt2, tmp_path / "out", optimization={"maxSteps": 8, **optimization})
    code, events, _ = run_cli(tmp_path, cfg, "trial", "--learning-rate", "1e-3")
    assert code == ExitCode.OK
    lrs = [e["learningRate"] for e in events if e["event"] == "step"]
    assert max(lrs) == pytest.approx(1e-3)  # the warmup reaches the peak, then the schedule decays it
    assert lrs[-1] < 1e-3


def test_train_that_diverges_exits_3(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(
        tiny_gpt2, tmp_path / "out", optimization={"maxSteps": 30, "maxGradNorm": 0}, learningRate=10.0
    )
    code, events, _ = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.DIVERGED
    assert events[-1]["event"] == "error" and "learning rate" in events[-1]["message"]


@pytest.mark.parametrize("command", ["train", "trial"])
def test_train_and_trial_stop_on_their_own_divergence_factor_not_the_range_tests(
    tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from finetune_trainer import training

    factors: list[float | None] = []
    real = training.make_callbacks

    def spy(*args: Any, **kwargs: Any) -> list[Any]:
        factors.append(kwargs.get("divergence_factor"))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "make_callbacks", spy)
    cfg = base_config(
        tiny_gpt2,
        tmp_path / "out",
        optimization={"maxSteps": 4, "divergenceFactor": 7.5},
        schedule={"warmupSteps": 1},
        rangeTest={"divergenceFactor": 3.0},
        checkpoints={"saveFinalModel": False},
    )
    code, _, _ = run_cli(tmp_path, cfg, command, "--learning-rate", "1e-3")
    assert code == ExitCode.OK
    assert factors == [7.5]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        ("oom", ExitCode.OUT_OF_MEMORY),
        ("interrupt", ExitCode.INTERRUPTED),
        ("bug", ExitCode.ERROR),
    ],
)
def test_failures_map_to_exit_codes(
    tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: str, code: ExitCode
) -> None:
    import torch

    from finetune_trainer import training
    from finetune_trainer.exitcodes import Interrupted

    errors = {
        "oom": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "interrupt": Interrupted("stopped by SIGTERM"),
        "bug": RuntimeError("something else"),
    }

    def boom(*_a: object, **_k: object) -> None:
        raise errors[exc]

    monkeypatch.setattr(training, "run_train", boom)
    got, _, result_file = run_cli(tmp_path, base_config(tiny_gpt2, tmp_path / "out"), "train")
    assert got == code
    assert json.loads(result_file.read_text())["exitCode"] == int(code)


def test_lora_train_saves_only_the_adapter(tiny_gpt2: Path, tmp_path: Path) -> None:
    """GPT-2's projections are Conv1D: LoRA is set up for them (fan_in_fan_out), so peft has nothing to
    correct and warns nothing."""
    import warnings

    out = tmp_path / "out"
    cfg = base_config(
        tiny_gpt2,
        out,
        adapter={"type": "lora", "r": 4, "alpha": 8, "targetModules": ["c_attn"]},
        optimization={"maxSteps": 10},
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, events, _ = run_cli(tmp_path, cfg, "train")
    assert code == ExitCode.OK
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    start = next(e for e in events if e["event"] == "start")
    assert start["trainableParameters"] < start["parameters"] / 10
    final = out / "final"
    assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()
    assert not (final / "model.safetensors").exists()


# --- trial learning rate, range-test window, recommend ----------------------------------------------------


def test_trial_takes_the_learning_rate_from_the_config(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(tiny_gpt2, tmp_path / "out", optimization={"maxSteps": 5}, learningRate=2e-3)
    code, _, result_file = run_cli(tmp_path, cfg, "trial")
    assert code == ExitCode.OK
    assert parse_result(json.loads(result_file.read_text())).learning_rate == 2e-3


def test_trial_without_any_learning_rate_names_the_field(tiny_gpt2: Path, tmp_path: Path) -> None:
    cfg = base_config(tiny_gpt2, tmp_path / "out")
    del cfg["learningRate"]
    code, _, result_file = run_cli(tmp_path, cfg, "trial")
    assert code == ExitCode.BAD_CONFIG
    error = parse_result(json.loads(result_file.read_text()))
    assert error.kind == "error" and error.error.startswith("learningRate")


def test_a_window_set_too_low_is_extended_until_the_loss_diverges(tiny_gpt2: Path, tmp_path: Path) -> None:
    window = {"minLearningRate": 1e-6, "maxLearningRate": 1e-4, "steps": 20, "smoothing": 0.3}
    cfg = base_config(tiny_gpt2, tmp_path / "out", rangeTest=window)
    code, _, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_text()))
    assert result.max_learning_rate is not None and result.max_learning_rate > 1e-2
    assert result.divergence_learning_rate is not None and result.divergence_learning_rate > 1e-4
    assert result.steps > 20

    fixed = base_config(tiny_gpt2, tmp_path / "fixed", rangeTest={**window, "extend": False})
    code, _, result_file = run_cli(tmp_path, fixed, "range-test")
    result = parse_result(json.loads(result_file.read_text()))
    assert code == ExitCode.OK and result.max_learning_rate == pytest.approx(1e-4) and result.steps == 20


def test_a_ramp_told_to_stop_past_its_minimum_keeps_the_minimum_in_fewer_steps(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    """The same seeded ramp, once to divergence and once stopped a decade past its loss minimum (adaptive
    sweeps stop at half a decade): the same curve up to the stop, so the same minimum, in fewer steps."""
    from finetune_trainer.adaptive import curve_minimum, loss_minimum

    window = {"minLearningRate": 1e-6, "maxLearningRate": 1e-4, "steps": 20, "smoothing": 0.3}
    full = base_config(tiny_gpt2, tmp_path / "full", rangeTest=window)
    code, _, result_file = run_cli(tmp_path, full, "range-test")
    whole = parse_result(json.loads(result_file.read_text()))
    assert code == ExitCode.OK and whole.stop_reason in ("diverged", "nan")
    cut = base_config(tiny_gpt2, tmp_path / "cut", rangeTest={**window, "stopPastMinimum": 1.0})
    code, events, result_file = run_cli(tmp_path, cut, "range-test")
    assert code == ExitCode.OK
    stopped = parse_result(json.loads(result_file.read_text()))
    assert stopped.stop_reason == "past-minimum" and not stopped.diverged
    assert 20 <= stopped.steps < whole.steps
    minimum = curve_minimum(stopped.curve)
    assert minimum == pytest.approx(curve_minimum(whole.curve), rel=1e-6)
    lowest = loss_minimum([p.lr for p in stopped.curve], [p.loss for p in stopped.curve])
    assert lowest is not None and abs(math.log10(minimum / lowest)) <= 0.5  # the basin's vertex, near it
    assert stopped.max_learning_rate == pytest.approx(lowest * 10, rel=0.15)  # a ramp step is 0.1 decade
    assert any(e["event"] == "stop" and e["reason"] == "past-minimum" for e in events)


def test_a_dense_ramp_reports_the_minimum_of_every_step_beside_its_thinned_curve(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    """The result file (a pod's termination message) carries at most 100 curve points; the loss minimum that
    an adaptive sweep's ceiling hangs from is read from every step, so the operator and `recommend` agree."""
    import csv

    from finetune_trainer.adaptive import basin_minimum, ramp_minimum

    window = {"minLearningRate": 1e-6, "maxLearningRate": 1e-4, "steps": 200, "stopPastMinimum": 0.5}
    cfg = base_config(tiny_gpt2, tmp_path / "out", rangeTest={**window, "smoothing": 0.05})
    code, _, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_text()))
    with (tmp_path / "out" / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.steps > 2 * len(result.curve), "the result's curve is thinned"
    every_step = basin_minimum([float(r["lr"]) for r in rows], [float(r["smoothedLoss"]) for r in rows])
    assert result.loss_minimum_learning_rate == pytest.approx(every_step, rel=1e-9)  # exact, as decided on
    assert ramp_minimum(result.loss_minimum_learning_rate, result.curve) == result.loss_minimum_learning_rate


def test_an_unset_window_is_centred_on_the_models_prior(tiny_gpt2: Path, tmp_path: Path) -> None:
    from finetune_trainer.priors import prior_for
    from finetune_trainer.rangetest import PRIOR_ABOVE, PRIOR_BELOW

    cfg = base_config(tiny_gpt2, tmp_path / "out")
    cfg["rangeTest"] = {"steps": 20, "extend": False}
    code, events, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    result = parse_result(json.loads(result_file.read_text()))
    prior = prior_for(str(tiny_gpt2)).centre
    assert result.prior_learning_rate == pytest.approx(prior, rel=1e-9)  # the result file's scalars: exact
    assert result.min_learning_rate == pytest.approx(prior / PRIOR_BELOW, rel=1e-9)
    assert result.max_learning_rate == pytest.approx(prior * PRIOR_ABOVE, rel=1e-9)
    first = next(e for e in events if e["event"] == "step")
    assert first["learningRate"] == pytest.approx(prior / PRIOR_BELOW, rel=1e-3)


def test_recommend_reports_the_lr_its_evidence_and_every_step_it_spent(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    cfg = base_config(
        tiny_gpt2,
        tmp_path / "out",
        optimization={"maxSteps": 48},
        rangeTest={"minLearningRate": 1e-5, "maxLearningRate": 1.0, "steps": 20, "smoothing": 0.3},
        adaptive={"candidates": 3, "spacing": 0.7, "finalists": 2, "maxExtensions": 1},
    )
    code, events, result_file = run_cli(tmp_path, cfg, "recommend")
    compact = result_file.read_bytes()
    assert len(compact) <= 4096
    result = parse_result(json.loads(compact))
    assert result.kind == "recommend"
    full = parse_result(json.loads((tmp_path / "out" / "result.json").read_text()))
    assert code == (ExitCode.OK if full.trusted else ExitCode.NO_RECOMMENDATION)
    trials = full.trials
    assert {t.stage for t in trials} <= {1, 2} and sum(t.stage == 1 for t in trials) >= 3
    assert {t.steps for t in trials if t.stage == 1 and not t.diverged} == {20}  # 48/8, at least 20
    assert full.range_test is not None and full.range_test.divergence_learning_rate is not None
    assert all(t.learning_rate < full.range_test.divergence_learning_rate for t in trials)
    assert full.steps_spent == full.range_test.steps + sum(t.steps for t in trials)
    assert len([e for e in events if e["event"] == "trial"]) == len(trials)
    if full.recommended_learning_rate is not None:
        tried = [t.learning_rate for t in trials]
        assert min(tried) <= full.recommended_learning_rate <= max(tried)
    if full.weak:
        assert "adaptive." in full.message or "rangeTest." in full.message
    else:
        assert full.interval is not None
        assert full.interval.low <= full.recommended_learning_rate <= full.interval.high


def test_a_fine_tune_sized_in_epochs_is_counted_by_the_range_test_and_sizes_recommend(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    """No `maxSteps`: the range test reports the fine-tune's steps (its epochs over the data, counted as
    `train` counts them), and `recommend` sizes its trials and its `adaptive.maxFineTunes` budget by them."""
    cfg = base_config(
        tiny_gpt2,
        tmp_path / "out",
        optimization={"maxSteps": None, "epochs": 40},
        rangeTest={"minLearningRate": 1e-5, "maxLearningRate": 1.0, "steps": 20, "smoothing": 0.3},
    )
    config = TrainerConfig.model_validate(cfg)
    fine_tune = prepare_run(config, "train", 1e-3).total_steps
    code, _, result_file = run_cli(tmp_path, cfg, "range-test")
    assert code == ExitCode.OK
    ramp = parse_result(json.loads(result_file.read_text()))
    assert ramp.fine_tune_steps == fine_tune and fine_tune != ramp.steps
    code, _, _ = run_cli(tmp_path, cfg, "recommend")
    full = parse_result(json.loads((tmp_path / "out" / "result.json").read_text()))
    assert code == (ExitCode.OK if full.trusted else ExitCode.NO_RECOMMENDATION)
    assert full.range_test is not None and full.range_test.fine_tune_steps == fine_tune
    first, _ = trial_steps(config.adaptive, fine_tune)
    assert first > 20 and {t.steps for t in full.trials if t.stage == 1 and not t.diverged} == {first}
    assert full.steps_spent <= 2 * fine_tune, "adaptive.maxFineTunes bounds a sweep sized in epochs"


def test_recommend_without_a_trusted_learning_rate_exits_6_and_still_writes_its_result(
    tiny_gpt2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A window that starts where the loss already diverges gives no LR: a script that reads the exit code
    does not take the result for an answer, and the result still says which bound to move."""
    cfg = base_config(
        tiny_gpt2,
        tmp_path / "out",
        rangeTest={"minLearningRate": 2.0, "maxLearningRate": 10.0, "steps": 12, "extend": False},
    )
    code, events, result_file = run_cli(tmp_path, cfg, "recommend")
    assert code == ExitCode.NO_RECOMMENDATION == 6
    result = parse_result(json.loads(result_file.read_text()))
    assert result.kind == "recommend" and result.recommended_learning_rate is None
    assert result.evidence == "DivergedAtMinimumLearningRate" and not result.trusted
    assert "rangeTest.minLearningRate" in result.message
    assert not [e for e in events if e["event"] == "trial"]  # nothing ran past the range test
    assert "no recommendation (DivergedAtMinimumLearningRate)" in capsys.readouterr().err


def test_recommend_stops_at_the_first_trial_that_fails_on_configuration(
    tiny_gpt2: Path, tmp_path: Path
) -> None:
    cfg = base_config(
        tiny_gpt2,
        tmp_path / "out",
        dataset={"validationFraction": 0.0},
        rangeTest={"minLearningRate": 1e-5, "maxLearningRate": 1.0, "steps": 10},
    )
    code, events, result_file = run_cli(tmp_path, cfg, "recommend")
    assert code == ExitCode.BAD_CONFIG
    error = parse_result(json.loads(result_file.read_text()))
    assert error.kind == "error" and "dataset.validationFraction" in error.error
    assert len([e for e in events if e["event"] == "trial"]) == 1


def test_the_same_seed_gives_the_same_trial_and_another_seed_another(tiny_bert: Path, tmp_path: Path) -> None:
    """`optimization.seed` decides the new classification head and LoRA weights too, whatever the process's
    random state was before: two trials in one process, as `recommend` runs its trials one after another."""
    cfg = base_config(
        tiny_bert,
        tmp_path / "out",
        model={"task": "sequence-classification"},
        dataset={"labelField": "label"},
        adapter={"type": "lora", "r": 4},
        optimization={"maxSteps": 16, "seed": 3},
        evaluation={"everySteps": 16},
    )

    def eval_loss(config: dict[str, Any], name: str) -> float:
        (tmp_path / name).mkdir()
        code, _, result_file = run_cli(tmp_path / name, config, "trial", "--learning-rate", "1e-2")
        assert code == ExitCode.OK
        loss = parse_result(json.loads(result_file.read_text())).eval_loss
        assert loss is not None
        return loss

    first = eval_loss(cfg, "a")
    assert eval_loss(cfg, "b") == first, "same config and seed, another result"
    other = {**cfg, "optimization": {**cfg["optimization"], "seed": 4}}
    assert eval_loss(other, "c") != first
