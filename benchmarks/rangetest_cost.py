"""Range-test cost: steps and wall time of the range test relative to the fine-tune it precedes.

    python benchmarks/rangetest_cost.py [--repeats 1]

Takes ``examples/demo/finetunejob-auto.yaml`` (a FineTuneJob with ``learningRate: auto``), builds the demo's
tiny GPT-2 and toy data, and runs what its two Jobs run, as processes (``finetune-trainer range-test`` then
``finetune-trainer train`` at the recommended LR), each timed from process start to exit (imports, loading
and tokenising included, as in a pod; scheduling and image pull excluded). Also with the product's default
range test (``RangeTestSpec`` defaults for steps) in the same window.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from benchmarks.common import REPO, median, table, write_results

EXAMPLE = REPO / "examples" / "demo" / "finetunejob-auto.yaml"
SECTIONS = ("model", "dataset", "adapter", "optimization", "schedule", "evaluation", "checkpoints")


def trainer_config(job: dict[str, Any], out: Path, range_test: dict[str, Any]) -> dict[str, Any]:
    """The TrainerConfig a FineTuneJob's Jobs get: its training sections plus the range-test settings."""
    spec = job["spec"]
    cfg = {k: spec[k] for k in SECTIONS if k in spec}
    cfg["rangeTest"] = range_test
    cfg["outputDir"] = str(out)
    return cfg


def run_cli(command: str, cfg: dict[str, Any], work: Path, lr: float | None = None) -> tuple[float, dict]:
    """Run ``finetune-trainer <command>`` as a process; (wall seconds, result)."""
    config = work / f"{command}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    result = work / f"{command}-result.json"
    args = [sys.executable, "-m", "finetune_trainer", command, "--config", str(config)]
    args += ["--result-file", str(result), "--metrics-port", "0"]
    if lr is not None:
        args += ["--learning-rate", str(lr)]
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{command} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (medians)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from finetune_trainer.config import RangeTestSpec
    from finetune_trainer.tiny_model import build_model_dir, write_dataset

    work = Path(tempfile.mkdtemp(prefix="rangetest-cost-"))
    build_model_dir(work / "tiny-gpt2", "gpt2")
    write_dataset(work / "toy.jsonl")
    job = yaml.safe_load(string.Template(EXAMPLE.read_text()).substitute(DEMO_DIR=str(work)))
    example_rt = job["spec"]["learningRate"]["auto"]["rangeTest"]
    default_steps = RangeTestSpec().steps
    variants = {
        f"example ({example_rt.get('steps', default_steps)} steps)": example_rt,
        f"product default steps ({default_steps})": {**example_rt, "steps": default_steps},
    }
    rows = []
    train_walls: list[float] = []
    train_steps = 0
    for label, rt in variants.items():
        rt_walls, train_result = [], None
        for i in range(args.repeats):
            wall, res = run_cli("range-test", trainer_config(job, work / f"rt-{i}", rt), work)
            rt_walls.append(wall)
            lr = res.get("recommendedLearningRate") or 1e-3
            if not train_walls or len(train_walls) < args.repeats:
                t_wall, train_result = run_cli(
                    "train", trainer_config(job, work / f"train-{i}", rt), work, lr
                )
                train_walls.append(t_wall)
                train_steps = int(train_result.get("steps", 0))
            print(f"{label}: range test {wall:.1f}s ({res.get('steps')} steps), lr {lr:.3g}", file=sys.stderr)
        rows.append(
            [label, res.get("steps"), median(rt_walls), res.get("recommendedLearningRate"), res.get("rule")]
        )
    t_med = median(train_walls)
    table_rows = [
        [label, steps, wall, steps / train_steps if train_steps else None, wall / t_med, lr, rule]
        for label, steps, wall, lr, rule in rows
    ]
    body = "\n".join(
        [
            "## Results",
            "",
            f"Fine-tune ({EXAMPLE.relative_to(REPO)}): {train_steps} steps, {t_med:.1f} s wall "
            f"(median of {len(train_walls)}), process start to exit.",
            "",
            table(
                ["range test", "steps", "wall (s)", "steps / fine-tune", "wall / fine-tune", "LR", "rule"],
                table_rows,
            ),
            "",
            "Wall times include Python/torch start-up, model load and tokenising in each process (what each "
            "Job's pod pays), not pod scheduling. The fine-tune also evaluates and checkpoints; the range "
            "test does neither.",
        ]
    )
    print(body)
    if not args.no_write:
        path = write_results("rangetest_cost", "Range-test cost", body, argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
