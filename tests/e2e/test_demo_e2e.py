"""`make demo`, the README's first command, end to end: its own local control plane, the operator, the
adaptive LRSweep and the `auto` FineTuneJob from `examples/demo/`, real trainer pods, exit status 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_its_sweep_and_its_auto_finetune_to_success(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "finetune_tooling.demo", "--dir", str(tmp_path / "demo"), "--timeout", "600"]
    # under the suite's 600-s test timeout, so a hung demo fails here with its output, not in pytest-timeout
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL)
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-3000:]
    assert "[demo] FineTuneJob tiny-gpt2-auto: Succeeded" in out, out[-6000:]
    assert "[demo] LRSweep tiny-gpt2-lr (adaptive): Succeeded: recommended learning rate" in out, out[-6000:]
    assert re.search(r"\[demo\]     trial 2-\d+: lr", out), out[-6000:]  # both stages: its finalists ran
    assert "Recommended:" in out and "kubectl finetune describe lrs/tiny-gpt2-lr" in out, "the plugin's view"
    hinted = re.search(r"kubectl finetune logs lrs/tiny-gpt2-lr --trial (\d+) --stage (\d+)", out)
    assert hinted, "a logs command for one of the sweep's trials"
    trial, stage = hinted.groups()
    assert f"trial {stage}-{trial}: lr" in out, "the hinted trial is one the sweep ran"
