"""Grid and random LRSweeps: short fine-tunes at fixed learning rates, `parallelism` at a time, then the
best trial (refined by a parabola in log-LR) is the recommendation."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from finetune_operator import naming, rendering
from finetune_operator.api import LRSweepSpec, LRSweepStatus, Progress, TrialStatus
from finetune_operator.children import ChildState, never_started
from finetune_operator.planning.adaptive import trial_record
from finetune_operator.planning.rangetest import RECOMMENDED, Samples, child_failed
from finetune_operator.planning.status import TERMINAL, ChildRequest, StatusBuilder, progress_from_sample
from finetune_operator.sweeps import best_learning_rate, trial_learning_rates
from finetune_trainer.adaptive import TrialRequest


def plan(
    name: str,
    sweep: LRSweepSpec,
    b: StatusBuilder[LRSweepStatus],
    children: Mapping[str, ChildState],
    samples: Samples,
) -> None:
    """Start trials up to `parallelism`, follow them (live progress while they run), then recommend. A
    finished trial whose Job is gone (deleted after its TTL) is remembered from the status, not re-run."""
    lrs = trial_learning_rates(sweep.method, sweep.trials)
    steps = sweep.trials.steps
    remembered = {t.index: t for t in b.status.trials or [] if t.stage is None}
    jobs = [naming.trial_job(name, i) for i in range(len(lrs))]
    active = sum(1 for job in jobs if (c := children.get(job)) and c.phase in ("Pending", "Running"))
    trials: list[TrialStatus] = []
    for i, (lr, job) in enumerate(zip(lrs, jobs, strict=True)):
        child, before = children.get(job), remembered.get(i)
        trial = TrialStatus(index=i, learning_rate=lr, steps=steps, job_name=job)
        if child is None and before is not None and before.phase in TERMINAL:
            trial = before
        elif child is None:
            if active < sweep.trials.parallelism:
                try:
                    config = rendering.trial_config(sweep, lr, steps)
                except ValidationError as e:
                    b.invalid(e)
                    return
                args = ["trial", "--learning-rate", repr(lr)]
                b.children.append(ChildRequest(job, "trial", args, config, trial=i))
                active += 1
        else:
            trial.phase = child.phase
            record = trial_record(TrialRequest(1, i, lr, steps), child)
            if record is not None:
                trial.eval_loss, trial.diverged = record.eval_loss, record.diverged
            if child.phase == "Running":
                last = before.progress if before is not None else None
                trial.progress = progress_from_sample(samples.get(job), child.start_time, b.now, last)
        trials.append(trial)
    if b.children:
        b.started()
    b.status.trials = trials
    finished = [t for t in trials if t.phase in TERMINAL]
    b.status.progress = Progress(
        step=len(finished), total_steps=len(trials), percent=int(100 * len(finished) / len(trials))
    )
    stuck = [c for job in jobs if (c := children.get(job)) is not None and c.stuck_since is not None]
    if failed := next((c for c in stuck if never_started(c)), None):
        child_failed(b, failed, "trial")  # a pod that cannot start says nothing about its learning rate
        return
    if len(finished) < len(trials):
        running = sum(t.phase == "Running" for t in trials)
        if stuck and not running:
            b.phase(
                "Pending", stuck[0].reason or "PodPending", f"trial Job {stuck[0].name}: {stuck[0].message}"
            )
            return
        b.phase(
            "Running" if running else "Pending",
            "TrialsRunning",
            f"{len(finished)}/{len(trials)} trials finished, {running} running",
            event=False,
        )
        return
    best = best_learning_rate([(t.learning_rate, t.eval_loss) for t in trials])
    if best is None:
        b.phase(
            "Failed", "AllTrialsFailed", "no trial produced a validation loss; lower the learning-rate window"
        )
        return
    lr, loss = best
    s = b.status
    s.recommended_learning_rate, s.rule, s.best_loss = lr, "best-trial", loss
    s.effective_batch_size, s.adapter = sweep.optimization.effective_batch_size(), sweep.adapter.type
    b.phase(
        "Succeeded",
        RECOMMENDED,
        f"recommended learning rate {lr:.3g} (best of {len(trials)} trials, eval loss {loss:.4g})",
    )
