"""benchmarks/distributed_scaling.py: reading rates from step events, scaling efficiency, the torchrun
command; and (slow) both paths the GPU check compares, run here on CPU under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import distributed_scaling as ds  # noqa: E402


def test_rates_come_from_rank_zeros_step_events() -> None:
    out = "\n".join(
        [
            '{"event":"start","t":1.0}',
            *(f'{{"event":"step","t":{10 + s * 0.5},"step":{s},"loss":1.0}}' for s in range(1, 21)),
            "W1130 torch noise",
            '{"event":"result","t":30.0}',
        ]
    )
    times = ds.step_times(out)
    assert len(times) == 20 and times[1] == 10.5
    assert ds.steps_per_second(times, skip=10) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        ds.steps_per_second(times, skip=20)


def test_efficiency_is_relative_to_one_process_per_process() -> None:
    assert ds.efficiency({1: 100.0, 2: 150.0}) == {1: 1.0, 2: 0.75}


def test_runs_are_standalone_torchrun_with_the_process_count() -> None:
    cmd = ds.torchrun(2, ["-m", "finetune_trainer", "train"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:6] == ["--standalone", "--nnodes=1", "--nproc-per-node=2"]
    assert cmd[-3:] == ["-m", "finetune_trainer", "train"]


@pytest.mark.slow
def test_ours_and_the_bare_loop_both_train_under_torchrun_on_cpu(tmp_path: Path) -> None:
    cfg = ds._setup(tmp_path, "tiny", 12, "fp32")
    ours = ds.ours(1, cfg, tmp_path / "out", timeout=600)
    bare = ds.bare(cfg, timeout=600)
    assert sorted(ours) == sorted(bare) == list(range(1, 13))
    assert ds.steps_per_second(ours, 2) > 0 and ds.steps_per_second(bare, 2) > 0
