"""The loss-vs-learning-rate plot of a range test (matplotlib, headless)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from finetune_trainer.config import RangeTestResult, parse_result

RULE_COLOURS = {
    "steepest": "tab:orange",
    "valley": "tab:green",
    "minimum-over-10": "tab:purple",
    "max-over-3": "tab:red",
}


def plot_range_test(
    result: RangeTestResult, path: str | Path, raw_curve: Sequence[dict[str, float]] | None = None
) -> Path:
    """Smoothed (and raw, when given) loss against LR on a log axis, each rule's suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    if raw_curve:
        ax.plot(
            [p["lr"] for p in raw_curve], [p["loss"] for p in raw_curve], color="0.8", lw=0.8, label="loss"
        )
    ax.plot(
        [p.lr for p in result.curve],
        [p.loss for p in result.curve],
        color="tab:blue",
        lw=1.6,
        label="smoothed",
    )
    for name, lr in result.suggestions.items():
        if lr is not None:
            style = "-" if name == result.rule else "--"
            ax.axvline(lr, color=RULE_COLOURS.get(name, "k"), ls=style, lw=1.2, label=f"{name} {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    recommended = result.recommended_learning_rate
    title = (
        f"LR range test — recommended {recommended:.2e} ({result.rule})" if recommended else "LR range test"
    )
    ax.set_title(
        f"{title}\nbatch {result.effective_batch_size}, adapter {result.adapter}, {result.stop_reason}"
    )
    losses = [p.loss for p in result.curve] + [p["loss"] for p in raw_curve or [] if math.isfinite(p["loss"])]
    if losses:
        # Frame the interesting part: from the lowest loss to a little above the start; the blow-up is cut.
        low, first = min(losses), result.curve[0].loss if result.curve else losses[0]
        span = abs(first - low) or 1.0
        ax.set_ylim(low - 0.1 * span, first + 0.6 * span)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_file(result_path: str | Path, out: str | Path) -> Path:
    """Plot a saved range-test result (``result.json`` or a compact result file).

    The raw loss is drawn too when ``curve.csv`` lies beside the result."""
    data = json.loads(Path(result_path).read_text())
    result = parse_result(data)
    if not isinstance(result, RangeTestResult):
        raise ValueError(f"{result_path} holds a {result.kind} result; only range-test results have a curve")
    raw = None
    csv = Path(result_path).with_name("curve.csv")
    if csv.is_file():
        lines = csv.read_text().split()
        keys = lines[0].split(",")
        raw = [dict(zip(keys, map(float, line.split(",")), strict=True)) for line in lines[1:]]
    return plot_range_test(result, out, raw)
