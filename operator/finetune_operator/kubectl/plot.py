"""`kubectl finetune plot`: a loss-vs-LR PNG from the resource's status, drawn by the trainer's own plot
code (`finetune_trainer.plot`, which imports matplotlib only when drawing; both are imported only here,
so every other subcommand runs where neither is installed, e.g. in the operator image)."""

from __future__ import annotations

from pathlib import Path

from finetune_operator.api import LRSWEEP
from finetune_operator.kubectl.errors import ExitCode, PluginError
from finetune_operator.kubectl.resources import Found

PLOT_EXTRA = "pip install 'finetune-operator[plot]'"


def plot(found: Found, sweep: Found | None, out: Path) -> Path:
    """An LRSweep's curve, rules, trials and interval; a FineTuneJob's is its sweep's, with the learning
    rate it used marked (its status keeps the latest and final losses, not a loss curve)."""
    if found.kind is LRSWEEP:
        source, marks = found, {}
    elif sweep is not None and found.status.learning_rate:
        source, marks = sweep, {f"{found.ref} LR": found.status.learning_rate}
    else:
        raise PluginError(
            ExitCode.NOT_FOUND,
            f"{found.ref} has no LRSweep to plot (its learning rate is from "
            f"{found.status.learning_rate_source or '-'}); its status keeps the latest and final losses "
            f"only: `kubectl finetune describe {found.ref}` shows them",
        )
    try:  # not in the operator image, which ships only the trainer's contract
        from finetune_trainer import plot as drawing
    except ImportError as exc:
        raise PluginError(
            ExitCode.MISSING_EXTRA, f"plot needs the trainer's drawing code and matplotlib: {PLOT_EXTRA}"
        ) from exc
    try:
        figure = drawing.sweep_figure(source.body, marks)
    except ValueError as exc:
        raise PluginError(ExitCode.ERROR, f"{source.ref}: nothing to plot yet: {exc}") from exc
    try:
        return drawing.draw(figure, out)
    except ImportError as exc:
        raise PluginError(ExitCode.MISSING_EXTRA, f"plot: {exc}") from exc
