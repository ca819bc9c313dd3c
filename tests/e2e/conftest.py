"""Fixtures the end-to-end tests share: a tiny random-weight GPT-2 and a toy dataset on disk."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Any]:
    """The spec fields of a fine-tune of the tiny model on the toy data (seconds per trainer run on CPU)."""
    root = tmp_path_factory.mktemp("tiny")
    subprocess.run([sys.executable, "-m", "finetune_trainer.tiny_model", str(root / "model")], check=True)
    subprocess.run(
        [sys.executable, "-m", "finetune_trainer.tiny_model", "--data", str(root / "toy.jsonl")], check=True
    )
    return {
        "model": {"name": str(root / "model")},
        "dataset": {"files": [str(root / "toy.jsonl")]},
        "optimization": {"batchSize": 16, "maxSeqLength": 32},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
        "backoffLimit": 0,
    }
