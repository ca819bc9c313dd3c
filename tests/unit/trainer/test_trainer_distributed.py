"""The trainer's side of a distributed run: FSDP options for TrainingArguments, and the config section."""

from __future__ import annotations

import pytest

from finetune_trainer import cli
from finetune_trainer.config import TrainerConfig
from finetune_trainer.exitcodes import ExitCode
from finetune_trainer.runsetup import fsdp_arguments

BASE = {"model": {"name": "/m"}, "dataset": {"files": ["/d.jsonl"]}}


def test_fsdp_only_when_asked_and_more_than_one_process():
    assert fsdp_arguments("ddp", 8) == {}
    assert fsdp_arguments("fsdp", 1) == {}
    options = fsdp_arguments("fsdp", 2)
    assert options["fsdp"] is True
    assert options["fsdp_config"]["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_fsdp_options_are_what_training_arguments_accepts():
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(output_dir="/tmp/unused", use_cpu=True, **fsdp_arguments("fsdp", 2))
    assert args.fsdp_config["version"] == 2 and args.fsdp_config["reshard_after_forward"] is True


def test_strategy_defaults_to_ddp_and_refuses_others():
    assert TrainerConfig.model_validate(BASE).distributed.strategy == "ddp"
    with pytest.raises(ValueError, match=r"distributed\.strategy"):
        TrainerConfig.model_validate({**BASE, "distributed": {"strategy": "zero3"}})


def test_the_model_card_counts_every_process_in_the_batch():
    from finetune_trainer.artifacts import model_card

    cfg = TrainerConfig.model_validate(
        {**BASE, "optimization": {"batchSize": 4, "gradientAccumulationSteps": 2}}
    )
    result = {"learningRate": 1e-4, "steps": 3, "totalSteps": 3, "effectiveBatchSize": 64, "worldSize": 8}
    card = model_card(cfg, result, "last")
    assert "| Effective batch size | 64 (4 per device x 2 accumulation x 8 processes) |" in card


def test_a_non_zero_rank_waits_for_rank_0_to_report_a_config_error(tmp_path, monkeypatch):
    """Rank 0 meets the same config error; a rank that exited first would have torchrun stop rank 0 before
    it wrote the error (its result then said INTERRUPTED)."""
    waited: list[float] = []
    monkeypatch.setattr(cli.time, "sleep", waited.append)
    bad = tmp_path / "c.yaml"
    bad.write_text("model: {name: /no/such/model}\noptimization: {batchSize: 0}\n")
    argv = ["train", "--config", str(bad), "--metrics-port", "0", "--result-file", str(tmp_path / "r.json")]
    monkeypatch.setenv("RANK", "1")
    assert cli.main(argv) == 2 and waited == [cli.RANK_REPORT_GRACE]
    assert not (tmp_path / "r.json").exists(), "only rank 0 reports"
    monkeypatch.setenv("RANK", "0")
    waited.clear()
    assert cli.main(argv) == 2 and waited == [] and (tmp_path / "r.json").exists()


def test_a_command_that_returns_leaves_its_process_group_and_one_that_raises_keeps_it(tmp_path, monkeypatch):
    """A rank that exits with its gloo group alive may abort in interpreter finalization (SIGABRT after a
    good run), so a command that returns destroys the group first. One that raised keeps it: a collective
    may still be pending on a lost peer, and destroying would wait out its timeout."""
    dist = pytest.importorskip("torch.distributed")
    from finetune_trainer.exitcodes import TrainerError
    from finetune_trainer.report import Progress

    args = cli.build_parser().parse_args(["train", "--config", str(tmp_path / "unused.yaml")])

    def fail(*_):
        raise TrainerError("lost a peer")

    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'a'}", rank=0, world_size=1)
        monkeypatch.setattr(cli, "_run", lambda *_: 6)
        assert cli._guarded(args, Progress(enabled=False), main_process=False) == 6
        assert not dist.is_initialized()

        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'b'}", rank=0, world_size=1)
        monkeypatch.setattr(cli, "_run", fail)
        assert cli._guarded(args, Progress(enabled=False), main_process=False) == int(ExitCode.ERROR)
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_failed_teardown_after_a_finished_command_only_warns(tmp_path, monkeypatch, capsys):
    """The command's result is written before the group is left; a teardown error must not turn it into a
    failure (exit code and result file stay the command's)."""
    dist = pytest.importorskip("torch.distributed")
    from finetune_trainer.report import Progress

    def broken(*_):
        raise RuntimeError("store gone")

    args = cli.build_parser().parse_args(["train", "--config", str(tmp_path / "unused.yaml")])
    monkeypatch.setattr(cli, "_run", lambda *_: 0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 's'}", rank=0, world_size=1)
    try:
        with monkeypatch.context() as m:
            m.setattr(dist, "destroy_process_group", broken)
            assert cli._guarded(args, Progress(enabled=False), main_process=False) == 0
        warned = "warning: leaving the process group failed: RuntimeError: store gone"
        assert warned in capsys.readouterr().err
    finally:
        dist.destroy_process_group()
