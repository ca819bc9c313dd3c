"""Grid, random and bayesian LRSweeps: short fine-tunes whose params an Optuna study draws (`planning/study`),
`parallelism` at a time, then the best trial is the recommendation (refined by a parabola in log-LR when
the learning rate is all that is searched)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import ValidationError

from finetune_operator import distributed, naming, rendering
from finetune_operator.api import TRIALS_MAX, EvalPoint, LRSweepSpec, LRSweepStatus, Progress, TrialStatus
from finetune_operator.children import ChildState, never_started
from finetune_operator.planning import study
from finetune_operator.planning.adaptive import trial_record
from finetune_operator.planning.rangetest import RECOMMENDED, Samples, child_failed
from finetune_operator.planning.remembered import remembered
from finetune_operator.planning.status import (
    TERMINAL,
    ChildRequest,
    Event,
    StatusBuilder,
    finite,
    progress_from_sample,
)
from finetune_operator.sweeps import best_learning_rate
from finetune_trainer.adaptive import TrialRequest
from finetune_trainer.config import MAX_EVALS, TrainerConfig, TrialResult

ACTIVE = ("Pending", "Running")


def trial_config(sweep: LRSweepSpec, params: study.Params) -> TrainerConfig:
    """A short fine-tune at `params`: the sweep's recipe with the searched values put in, cut to its steps,
    validated every `eval_every` steps when a pruner judges it."""
    steps = int(params.get("maxSteps", sweep.trials.steps))
    config = rendering.trial_config(study.with_params(sweep, params), params["learningRate"], steps)
    every = study.eval_every(sweep, steps)
    if every is None:
        return config
    return config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"every_steps": every})}
    )


def plan(
    name: str,
    sweep: LRSweepSpec,
    b: StatusBuilder[LRSweepStatus],
    children: Mapping[str, ChildState],
    samples: Samples,
) -> None:
    """Follow the recorded trials (live progress while they run), ask the study for more up to
    `parallelism` running and the sweep's budget, then recommend. A trial whose Job is gone keeps the
    result the status recorded and is never run again (`remembered`)."""
    total = study.budget(sweep)
    if total > TRIALS_MAX:
        b.phase(
            "Failed",
            "TooManyTrials",
            f"the sweep would run {total} trials, more than {TRIALS_MAX}: "
            "shrink trials.searchSpace or trials.count",
        )
        return
    kept = remembered(b.status.trials, children)
    judge: set[int] = set()  # running trials with a new intermediate value
    trials: list[TrialStatus] = []
    requests: list[tuple[TrialStatus, study.Params]] = []
    for before in sorted((t for t in b.status.trials or [] if t.stage is None), key=lambda t: t.index):
        child = children.get(before.job_name or naming.trial_job(name, before.index))
        trial = before.model_copy(update={"progress": None})
        if before.phase == "Pruned":
            if child is not None:
                b.delete.append(child.name)  # not gone yet
        elif (last := kept.get((0, before.index))) is not None:
            trial = last  # final once recorded: a Job being deleted (TTL, foreground) may have lost its pods
        elif child is None:
            requests.append((trial, study.params_of(before, study.distributions(sweep))))  # not seen yet
        else:
            if _follow(trial, child, samples, b.now, before):
                judge.add(trial.index)
        trials.append(trial)
    _prune(sweep, b, trials, judge)
    # every trial shares the config: the first that fails on it says it all, and no more start
    config_error = next(
        (c for t in trials if (c := children.get(t.job_name or "")) and c.reason == "InvalidConfig"), None
    )
    active = sum(1 for t in trials if t.phase in ACTIVE)
    engine = None
    while (
        config_error is None
        and len(trials) < total
        and (active < sweep.trials.parallelism or _job(name, len(trials)) in children)
    ):
        engine = engine or study.rebuild(sweep, trials)
        params = study.ask(sweep, engine, 1)[0]
        index = len(trials)
        trial = TrialStatus(
            index=index,
            learning_rate=params["learningRate"],
            params=params,
            steps=int(params.get("maxSteps", sweep.trials.steps)),
            job_name=_job(name, index),
        )
        trials.append(trial)
        if (child := children.get(trial.job_name or "")) is not None:  # created, its status not written
            _follow(trial, child, samples, b.now, None)
            active += trial.phase in ACTIVE
            engine = None  # the study learns its outcome on the next rebuild
            if child.reason == "InvalidConfig":
                config_error = child
        else:
            requests.append((trial, params))
            active += 1
    if config_error is not None:
        b.status.trials = trials
        child_failed(b, config_error, "trial")
        return
    for trial, params in requests:
        try:
            config = trial_config(sweep, params)
        except ValidationError as e:
            b.invalid(e)
            return
        args = ["trial", "--learning-rate", repr(config.learning_rate)]
        b.children.append(ChildRequest(trial.job_name or "", "trial", args, config, trial=trial.index))
    if b.children:
        b.started()
    b.status.trials = trials
    _decide(sweep, b, trials, total, children)


def _job(name: str, index: int) -> str:
    return naming.trial_job(name, index)


def _follow(
    trial: TrialStatus, child: ChildState, samples: Samples, now: str, before: TrialStatus | None
) -> bool:
    """The trial as its Job says: phase, result once finished, live progress and intermediate validation
    losses while it runs. True when it reported a new intermediate value."""
    trial.phase = child.phase
    req = TrialRequest(1, trial.index, trial.learning_rate, trial.steps or 1)
    record = trial_record(req, child)
    if record is not None:
        trial.eval_loss, trial.diverged = record.eval_loss, record.diverged
        _add_evals(trial, _reported_evals(child))  # every step, also those no poll caught
    if child.phase != "Running":
        return False
    sample = samples.get(child.name) or {}
    last = before.progress if before is not None else None
    trial.progress = progress_from_sample(sample, child.start_time, now, last)
    step, loss = finite(sample.get("eval_step")), finite(sample.get("eval_loss"))
    if step is None or loss is None or any(e.step == int(step) for e in trial.evals or []):
        return False
    _add_evals(trial, [EvalPoint(step=int(step), eval_loss=loss)])
    return True


def _reported_evals(child: ChildState) -> list[EvalPoint]:
    """The intermediate validation losses a finished trial reported in its result (none if malformed)."""
    if not child.result or child.result.get("kind") != "trial":
        return []
    try:
        return TrialResult.model_validate(child.result).evals
    except ValidationError:
        return []


def _add_evals(trial: TrialStatus, points: list[EvalPoint]) -> None:
    """`points` merged into the trial's recorded validation losses by step (the latest `MAX_EVALS`)."""
    by_step = {e.step: e for e in trial.evals or []} | {p.step: p for p in points}
    trial.evals = [by_step[s] for s in sorted(by_step)][-MAX_EVALS:] or None


def _prune(
    sweep: LRSweepSpec, b: StatusBuilder[LRSweepStatus], trials: list[TrialStatus], judge: set[int]
) -> None:
    """Stop the running trials the pruner judges poor: Pruned in the status (step and why), their Jobs
    deleted, an event each."""
    for i in sorted(study.prune(sweep, trials, judge)):
        t = trials[i]
        point = (t.evals or [])[-1]
        t.phase, t.pruned_at_step, t.progress = "Pruned", point.step, None
        t.reason = "Pruned"
        t.message = (
            f"{sweep.trials.pruner.type} pruner: eval loss {point.eval_loss:.4g} at step {point.step} "
            "is worse than the trials before it"
        )
        b.delete.append(t.job_name or _job("", i))
        b.events.append(Event("Normal", "TrialPruned", f"trial {i} ({t.job_name}): {t.message}"))


def _decide(
    sweep: LRSweepSpec,
    b: StatusBuilder[LRSweepStatus],
    trials: list[TrialStatus],
    total: int,
    children: Mapping[str, ChildState],
) -> None:
    """Progress while trials remain; the best trial once all have finished."""
    finished = [t for t in trials if t.phase in TERMINAL or t.phase == "Pruned"]
    b.status.progress = Progress(
        step=len(finished), total_steps=total, percent=int(100 * len(finished) / total)
    )
    stuck = [
        c for t in trials if (c := children.get(t.job_name or "")) is not None and c.stuck_since is not None
    ]
    if failed := next((c for c in stuck if never_started(c)), None):
        child_failed(b, failed, "trial")  # a pod that cannot start says nothing about its learning rate
        return
    if len(finished) < total:
        running = sum(t.phase == "Running" for t in trials)
        if stuck and not running:
            b.phase(
                "Pending", stuck[0].reason or "PodPending", f"trial Job {stuck[0].name}: {stuck[0].message}"
            )
            return
        b.phase(
            "Running" if running else "Pending",
            "TrialsRunning",
            f"{len(finished)}/{total} trials finished, {running} running",
            event=False,
        )
        return
    scored = [t for t in finished if t.eval_loss is not None]
    if not scored:
        _no_trial_succeeded(b, [children[j] for t in finished if (j := t.job_name or "") in children])
        return
    best = min(scored, key=lambda t: t.eval_loss or 0.0)
    lr, loss = best.learning_rate, best.eval_loss or 0.0
    params = best.params or {"learningRate": lr}
    if set(params) == {"learningRate"}:  # the learning rate alone: refine it between the best's neighbours
        lr, loss = best_learning_rate([(t.learning_rate, t.eval_loss) for t in trials]) or (lr, loss)
    s = b.status
    s.recommended_learning_rate, s.rule, s.best_loss, s.best_params = lr, "best-trial", loss, params
    opt = study.with_params(sweep, params).optimization
    s.world_size = distributed.world_size(sweep.resources)
    s.effective_batch_size, s.adapter = opt.effective_batch_size(s.world_size), sweep.adapter.type
    message = f"recommended learning rate {lr:.3g} (best of {len(trials)} trials, eval loss {loss:.4g})"
    edge = at_window_edge(sweep, best.learning_rate, [t.learning_rate for t in trials])
    if edge is None:
        b.phase("Succeeded", RECOMMENDED, message)
        return
    reason, warning = edge
    s.warnings = [warning]
    b.phase("Succeeded", reason, f"{message}; {warning}")


EDGE_DECADES = 0.25
"""A random or bayesian sweep's best trial this close (in decades) to its learning-rate range's bound, and
below (above) every other trial, sits at the range's edge."""


def at_window_edge(sweep: LRSweepSpec, best: float, tried: list[float]) -> tuple[str, str] | None:
    """(reason, warning naming the bound to move) when the best trial's learning rate is the lowest or
    highest tried, at the edge of the learning rates the spec lets the sweep try; else None.

    A grid, random or bayesian sweep runs the trials its spec names, so its best trial stays its answer
    (`Succeeded`, usable by a FineTuneJob's `fromSweep`), but not as a plain `Recommended`: the optimum may
    lie past the edge. (`adaptive` and `rangeTest` choose their own window and fail instead.)"""
    if len(set(tried)) < 2 or min(tried) < best < max(tried):
        return None
    low = best <= min(tried)
    t = sweep.trials
    space = t.search_space.learning_rate if t.search_space is not None else None
    if space is not None:
        field = f"trials.searchSpace.learningRate.{'min' if low else 'max'}"
        bound = space.min if low else space.max
    elif t.learning_rates:
        field, bound = "trials.learningRates", None
    else:
        field = "trials.minLearningRate" if low else "trials.maxLearningRate"
        bound = t.min_learning_rate if low else t.max_learning_rate
    drawn = sweep.method != "grid"  # a random or bayesian range: the best drawn may sit well inside it
    if drawn and bound is not None and abs(math.log10(best / bound)) > EDGE_DECADES:
        return None
    side, move = ("lowest", "lower") if low else ("highest", "higher")
    fix = f"add a {move} value to {field}" if bound is None else f"set {field} {move}"
    warning = (
        f"the best trial is the {side} learning rate tried ({best:.3g}): the optimum may lie {move}; {fix}"
    )
    return ("BestAtLowerEdge" if low else "BestAtUpperEdge"), warning


def _no_trial_succeeded(b: StatusBuilder[LRSweepStatus], children: list[ChildState]) -> None:
    """No trial has a validation loss: a trial that failed for another reason than divergence (a bad
    config, out of memory) says why in its own words; only when every trial diverged is the window too
    high."""
    failed = [c for c in children if c.phase == "Failed" and c.reason != "Diverged"]
    if failed:
        first = next((c for c in failed if c.reason == "InvalidConfig"), failed[0])
        what = f"no trial produced a validation loss ({len(failed)} of {len(children)} failed); trial"
        child_failed(b, first, what)
        return
    b.phase(
        "Failed", "AllTrialsFailed", "no trial produced a validation loss; lower the learning-rate window"
    )
