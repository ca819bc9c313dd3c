"""One engine for every trial-based method: an Optuna study (grid: GridSampler, random: RandomSampler,
bayesian: TPESampler) rebuilt from the status on every reconcile, so the operator keeps no state.

The status lists each trial's params, intermediate validation losses and outcome; `rebuild` adds them to
a fresh in-memory study in index order (`create_trial`: COMPLETE with its eval loss, PRUNED, FAIL, or
RUNNING while its Job runs), and `ask` draws the next trials. Each ask uses a sampler seeded from
`seed` and the trial number (`trial_seed`; the grid keeps one seed: it is an order over fixed points),
so the n-th trial's params depend only on the spec and the trials before it: a restarted operator, or a
reconcile that repeats itself, asks exactly the same. `prune` replays the trials to the sweep's pruner the
same way. Pure functions; no storage but memory, no state between reconciles.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any, TypeVar

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.trial import TrialState, create_trial

from finetune_operator.api import LRSweepSpec, SearchSpace, TrialStatus
from finetune_operator.sweeps import trial_learning_rates
from finetune_trainer.config import TrainingSections

Params = dict[str, float]
"""A trial's searched parameters by their camelCase names (`learningRate`, `batchSize`, …)."""

T = TypeVar("T", bound=TrainingSections)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(sweep: LRSweepSpec) -> dict[str, BaseDistribution]:
    """The search space as Optuna distributions. The learning rate is always searched: from
    `searchSpace.learningRate`, else the explicit `learningRates` or the min/max window (log scale)."""
    t = sweep.trials
    out: dict[str, BaseDistribution] = {}
    if t.learning_rates:
        out["learningRate"] = CategoricalDistribution(sorted(t.learning_rates))
    else:
        out["learningRate"] = FloatDistribution(t.min_learning_rate, t.max_learning_rate, log=True)
    space = t.search_space or SearchSpace.model_construct()
    for name, field in SearchSpace.model_fields.items():
        value = getattr(space, name, None)
        key = field.alias or name
        if value is None:
            continue
        if isinstance(value, list):
            out[key] = CategoricalDistribution(sorted(set(value)))
        elif hasattr(value, "log"):
            out[key] = FloatDistribution(value.min, value.max, log=value.log or key == "learningRate")
        else:
            out[key] = IntDistribution(value.min, value.max)
    return out


def grid(sweep: LRSweepSpec) -> dict[str, list[Any]]:
    """The grid's points per parameter: categorical choices as they are, ranges cut into `count` points
    (log-spaced where the range is; the learning rate window as the grid method always spaced it)."""
    points: dict[str, list[Any]] = {}
    n = sweep.trials.count
    for key, d in distributions(sweep).items():
        if isinstance(d, CategoricalDistribution):
            points[key] = list(d.choices)
        elif key == "learningRate" and sweep.trials.search_space is None:
            points[key] = trial_learning_rates("grid", sweep.trials)
        elif isinstance(d, FloatDistribution):
            lo, hi = (math.log10(d.low), math.log10(d.high)) if d.log else (d.low, d.high)
            values = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
            points[key] = [10**v if d.log else v for v in values]
        elif isinstance(d, IntDistribution):
            points[key] = sorted({round(d.low + (d.high - d.low) * i / (n - 1)) for i in range(n)})
    return points


def budget(sweep: LRSweepSpec) -> int:
    """Trials the sweep runs in all: every grid point once, else `maxTrials` (default `count`)."""
    if sweep.method == "grid":
        return math.prod(len(v) for v in grid(sweep).values())
    return sweep.trials.max_trials or sweep.trials.count


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s sampler: a function of the sweep's seed and the trial number alone
    (hashed together, so sweeps with seeds 0 and 1 share no draws, as `seed + number` would)."""
    digest = hashlib.sha256(f"{seed}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def sampler(sweep: LRSweepSpec, number: int) -> BaseSampler:
    """The sampler that draws trial `number`."""
    seed = sweep.trials.seed
    if sweep.method == "grid":
        return GridSampler(grid(sweep), seed=seed)
    if sweep.method == "random":
        return RandomSampler(seed=trial_seed(seed, number))
    startup = max(2, min(10, budget(sweep) // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TPESampler(seed=trial_seed(seed, number), n_startup_trials=startup, multivariate=True)


def params_of(trial: TrialStatus, space: dict[str, BaseDistribution]) -> Params:
    """A recorded trial's params, typed as the space has them (a status written before params were
    recorded holds its learning rate alone)."""
    raw = dict(trial.params or {"learningRate": trial.learning_rate})
    return {k: int(v) if isinstance(space.get(k), IntDistribution) else v for k, v in raw.items()}


def state_of(trial: TrialStatus) -> tuple[TrialState, float | None]:
    """Optuna's view of a recorded trial: COMPLETE with its loss, PRUNED, FAIL, or RUNNING (Pending too)."""
    if trial.phase == "Succeeded" and trial.eval_loss is not None and math.isfinite(trial.eval_loss):
        return TrialState.COMPLETE, trial.eval_loss
    if trial.phase == "Pruned":
        return TrialState.PRUNED, None
    if trial.phase in ("Succeeded", "Failed"):
        return TrialState.FAIL, None
    return TrialState.RUNNING, None


def rebuild(sweep: LRSweepSpec, trials: list[TrialStatus]) -> optuna.Study:
    """A fresh in-memory study holding the recorded trials, in index order (their trial numbers)."""
    study = optuna.create_study(
        study_name="lrsweep", direction="minimize", sampler=sampler(sweep, len(trials))
    )  # a fixed name: hyperband's brackets hash it with the trial number
    space = distributions(sweep)
    for t in sorted(trials, key=lambda t: t.index):
        state, value = state_of(t)
        study.add_trial(create_trial(state=state, value=value, **_recorded(t, space)))
    return study


def _recorded(t: TrialStatus, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """A recorded trial's params (those the space still searches), their distributions and its
    intermediate values, as ``create_trial`` takes them."""
    params = params_of(t, space)
    dists = {k: space[k] for k in params if k in space}
    evals = {e.step: e.eval_loss for e in t.evals or [] if math.isfinite(e.eval_loss)}
    return {"params": {k: params[k] for k in dists}, "distributions": dists, "intermediate_values": evals}


def eval_every(sweep: LRSweepSpec, steps: int) -> int | None:
    """Trials' validation cadence in steps when a pruner judges them (None: only the final evaluation)."""
    p = sweep.trials.pruner
    if p.type == "none":
        return None
    return min(steps, p.eval_every_steps or max(1, steps // 4))


def pruner(sweep: LRSweepSpec) -> BasePruner:
    """The sweep's Optuna pruner."""
    p, steps = sweep.trials.pruner, sweep.trials.steps
    if sweep.trials.search_space is not None and sweep.trials.search_space.max_steps is not None:
        steps = sweep.trials.search_space.max_steps.max
    every = eval_every(sweep, steps) or steps
    if p.type == "median":
        return MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps)
    if p.type == "successiveHalving":
        return SuccessiveHalvingPruner(min_resource=every)
    if p.type == "hyperband":
        return HyperbandPruner(min_resource=every, max_resource=max(every, steps))
    return NopPruner()


def prune(sweep: LRSweepSpec, trials: list[TrialStatus], judge: set[int]) -> set[int]:
    """The trials (by index) among `judge` (running, with a new intermediate value) the pruner stops.

    The pruner sees a study replayed from `trials`: finished ones first, then running ones, each in index
    order, each shown to the pruner while running and then told its outcome (successive halving and
    hyperband keep their rungs in the study, so a fresh study learns them again this way). Only the
    decisions on the trials of `judge` count."""
    if sweep.trials.pruner.type == "none" or not judge:
        return set()
    chosen, space = pruner(sweep), distributions(sweep)
    replay = optuna.create_study(study_name="lrsweep", direction="minimize", sampler=RandomSampler(seed=0))
    ordered = sorted(trials, key=lambda t: (state_of(t)[0] == TrialState.RUNNING, t.index))
    stop: set[int] = set()
    for t in ordered:
        state, value = state_of(t)
        recorded = _recorded(t, space)
        replay.add_trial(create_trial(state=TrialState.RUNNING, **recorded))
        live = replay.trials[-1]
        if recorded["intermediate_values"] and chosen.prune(replay, live) and t.index in judge:
            stop.add(t.index)
        if state != TrialState.RUNNING:
            replay.tell(live.number, value, state=state)
    return stop


def ask(sweep: LRSweepSpec, study: optuna.Study, n: int) -> list[Params]:
    """The next `n` trials' params (each stays RUNNING in `study`, so the next ask sees it)."""
    space = distributions(sweep)
    drawn: list[Params] = []
    for _ in range(n):
        study.sampler = sampler(sweep, len(study.trials))
        drawn.append(dict(study.ask(space).params))
    return drawn


def with_params(spec: T, params: Params) -> T:
    """`spec` with the searched values put into its recipe (batch size, weight decay, warmup ratio, LoRA r
    and alpha; the learning rate and a trial's steps are the caller's)."""
    opt, schedule, adapter = spec.optimization, spec.schedule, spec.adapter
    if "batchSize" in params:
        opt = opt.model_copy(update={"batch_size": int(params["batchSize"])})
    if "weightDecay" in params:
        opt = opt.model_copy(update={"weight_decay": params["weightDecay"]})
    if "warmupRatio" in params:
        schedule = schedule.model_copy(update={"warmup_ratio": params["warmupRatio"], "warmup_steps": None})
    if "loraR" in params:
        adapter = adapter.model_copy(update={"r": int(params["loraR"])})
    if "loraAlpha" in params:
        adapter = adapter.model_copy(update={"alpha": int(params["loraAlpha"])})
    return spec.model_copy(update={"optimization": opt, "schedule": schedule, "adapter": adapter})
