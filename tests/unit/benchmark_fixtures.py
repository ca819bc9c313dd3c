"""Helpers that the benchmark tests share: a small oracle and committed results written where a run reads
them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.quality import scoring  # noqa: E402


def oracle() -> scoring.Oracle:
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    losses = {1e-4: [2.0, 2.2], 1e-3: [1.0, 1.2], 1e-2: [1.5, 1.5], 1e-1: [None, None]}
    return scoring.Oracle(lrs, losses, penalty=5.0)


def committed_results(folder: Path, key: str) -> None:
    """A results file as lr_quality.py writes it (its own TaskReport), for a task named `probe`."""
    lrs = [1e-4, 1e-3, 1e-2]
    checks = {scoring.oracle_key(2e-3, 1): 0.6}
    losses = {1e-4: [3.0, 3.0], 1e-3: [0.5, 0.52], 1e-2: [0.8, 0.8]}
    grid = scoring.Oracle(lrs, losses, penalty=2.0, seeds=[0, 1], checks=checks)
    default = scoring.Row("adaptive", [1e-3, 1e-2], [300, 320], [1.0, 1.0])
    report = scoring.TaskReport("probe", "a task", 100, grid, 600, [default], 1.0, key=key)
    (folder / "lr_quality.json").write_text(json.dumps({"tasks": [report.to_json()]}))
