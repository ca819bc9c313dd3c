"""`kubectl finetune plot`: a PNG drawn by the trainer's own plot code (`finetune_trainer.plot`, which imports
matplotlib only when drawing; both are imported only here, so every other subcommand runs where neither is
installed, e.g. in the operator image).

An LRSweep: loss against LR from its status (range-test curve, rules, trials, interval). A FineTuneJob: its
loss against step from its training pod's log (the trainer's progress lines); when that log is gone, its
sweep's curve with the learning rate it used marked.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from finetune_operator.api import LRSWEEP
from finetune_operator.kubectl import style
from finetune_operator.kubectl.errors import ExitCode, PluginError
from finetune_operator.kubectl.resources import Found

PLOT_EXTRA = "pip install 'finetune-operator[plot]'"


def plot(found: Found, sweep: Found | None, out: Path, training_log: str | None = None) -> Path:
    """Write the PNG for `found` (see the module docstring); `training_log` is a FineTuneJob's pod log."""
    drawing = _drawing()
    try:
        if found.kind is LRSWEEP:
            return drawing.draw(drawing.sweep_figure(found.body), out)
        status = found.status
        curve = drawing.training_curve((training_log or "").splitlines())
        if curve.steps:
            title = (
                f"FineTuneJob {found.name} — learning rate {style.lr(status.learning_rate)} "
                f"({status.learning_rate_source or '-'}), eval loss {style.loss(status.eval_loss)}"
            )
            return drawing.draw_training(curve, title, out)
        if sweep is not None and status.learning_rate:
            figure = drawing.sweep_figure(sweep.body, {f"{found.ref} LR": status.learning_rate})
            return drawing.draw(figure, out)
    except ValueError as exc:
        raise PluginError(ExitCode.ERROR, f"{found.ref}: nothing to plot yet: {exc}") from exc
    except ImportError as exc:
        raise PluginError(ExitCode.MISSING_EXTRA, f"plot: {exc}") from exc
    raise PluginError(
        ExitCode.NOT_FOUND,
        f"{found.ref} has nothing to plot: no training log (its pod is gone or has not started) and no "
        f"LRSweep (its learning rate is from {found.status.learning_rate_source or '-'}); "
        f"`kubectl finetune describe {found.ref}` shows its losses",
    )


def _drawing() -> ModuleType:
    try:  # not in the operator image, which ships only the trainer's contract
        from finetune_trainer import plot as drawing
    except ImportError as exc:
        raise PluginError(
            ExitCode.MISSING_EXTRA, f"plot needs the trainer's drawing code and matplotlib: {PLOT_EXTRA}"
        ) from exc
    return drawing
