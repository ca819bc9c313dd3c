"""Learning-rate schedules: warmup, then a decay shape, then a floor.

Every shape Hugging Face's ``get_scheduler`` has comes from it (linear, cosine, cosine with restarts,
polynomial, constant, constant with warmup, inverse sqrt, warmup-stable-decay, cosine with min LR); this
module writes only what it lacks: step decay, exponential decay, cyclical (triangular) and the range test's
exponential or linear ramp.

A schedule is a *factor* of the optimizer's base learning rate as a function of the optimizer step
(0-based: the factor at step ``s`` is the one used by the ``s``-th update). :func:`factor_fn` returns that
pure function, :func:`build_scheduler` wraps it in a ``torch.optim.lr_scheduler.LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

from finetune_trainer.config import ScheduleSpec

HF_SHAPES = frozenset(
    {
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "warmup_stable_decay",
        "cosine_with_min_lr",
    }
)
"""Shapes delegated to ``transformers.get_scheduler``."""

OWN_SHAPES = frozenset({"step", "exponential", "cyclical"})
"""Shapes this module implements (``get_scheduler`` has no equivalent)."""

SHAPES = HF_SHAPES | OWN_SHAPES


@dataclass(frozen=True)
class SchedulePlan:
    """A fully resolved schedule: every count in optimizer steps, every rate absolute.

    Attributes:
        type: one of :data:`SHAPES`.
        total_steps: optimizer steps of the whole run.
        warmup_steps: linear warmup from 0 to the base LR over this many steps.
        min_lr: floor under the decay (absolute LR); 0 = none. ``cosine_with_min_lr``, ``polynomial`` and
            ``warmup_stable_decay`` decay *to* it, ``cyclical`` uses it as the triangle's low end, the other
            shapes are clamped at it after warmup.
        num_cycles: cosine waves (``cosine``, ``cosine_with_min_lr``: 0.5 = half wave) or hard restarts
            (``cosine_with_restarts``).
        power: polynomial decay exponent.
        decay_ratio: ``warmup_stable_decay``: fraction of the steps spent decaying.
        decay_type: ``warmup_stable_decay``: ``linear``, ``cosine`` or ``1-sqrt``.
        step_size: ``step``: steps between drops (default: a third of the decay); ``cyclical``: the
            half-period (default: a tenth of training).
        gamma: ``step``: factor per drop; ``exponential``: factor over the whole decay (per step
            ``gamma ** (1 / decay steps)``).
        timescale: ``inverse_sqrt`` time scale (defaults to the warmup steps).
    """

    type: str
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    num_cycles: float | None = None
    power: float = 1.0
    decay_ratio: float = 0.1
    decay_type: str = "cosine"
    step_size: int | None = None
    gamma: float = 0.1
    timescale: int | None = None


def plan_from_spec(spec: ScheduleSpec, total_steps: int) -> SchedulePlan:
    """Resolve a config ``ScheduleSpec`` against the run's length."""
    return SchedulePlan(
        type=spec.type,
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(total_steps, spec.warmup_steps, spec.warmup_ratio_or_default()),
        min_lr=spec.min_learning_rate,
        num_cycles=spec.num_cycles,
        power=spec.power,
        decay_ratio=spec.decay_ratio,
        step_size=spec.step_size,
        gamma=spec.gamma,
    )


def warmup_steps_for(
    total_steps: int, warmup_steps: int | None = None, warmup_ratio: float | None = None
) -> int:
    """Warmup in steps: explicit steps win, else ``ceil(ratio x total)``, else 0."""
    if warmup_steps is not None:
        return int(warmup_steps)
    if warmup_ratio:
        return math.ceil(warmup_ratio * total_steps)
    return 0


def _dummy_optimizer(base_lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)


def _hf_kwargs(plan: SchedulePlan, base_lr: float) -> dict[str, object]:
    decay_steps = max(1, plan.total_steps - plan.warmup_steps)
    match plan.type:
        case "cosine":
            return {} if plan.num_cycles is None else {"num_cycles": plan.num_cycles}
        case "cosine_with_restarts":
            return {"num_cycles": max(1, round(plan.num_cycles or 1))}
        case "cosine_with_min_lr":
            kw: dict[str, object] = {"min_lr_rate": min(1.0, plan.min_lr / base_lr)}
            if plan.num_cycles is not None:
                kw["num_cycles"] = plan.num_cycles
            return kw
        case "polynomial":
            return {"power": plan.power, "lr_end": min(plan.min_lr, base_lr * 0.999) if plan.min_lr else 0.0}
        case "inverse_sqrt":
            return {} if plan.timescale is None else {"timescale": plan.timescale}
        case "warmup_stable_decay":
            return {
                "num_decay_steps": max(1, round(plan.decay_ratio * decay_steps)),
                "decay_type": plan.decay_type,
                "min_lr_ratio": min(1.0, plan.min_lr / base_lr),
                **({} if plan.num_cycles is None else {"num_cycles": plan.num_cycles}),
            }
        case _:
            return {}


def _warmup(step: int, warmup_steps: int) -> float:
    return float(step) / float(max(1, warmup_steps))


def _own_decay(plan: SchedulePlan, base_lr: float) -> Callable[[int], float]:
    """The decay factor (1 at the end of warmup) for the shapes ``get_scheduler`` lacks."""
    decay_steps = max(1, plan.total_steps - plan.warmup_steps)
    if plan.type == "step":
        size = plan.step_size or max(1, decay_steps // 3)
        gamma = plan.gamma
        return lambda s: gamma ** (s // size)
    if plan.type == "exponential":
        per_step = plan.gamma ** (1.0 / decay_steps)
        return lambda s: per_step**s
    if plan.type == "cyclical":
        half = float(plan.step_size or max(1, plan.total_steps // 10))
        low = min(1.0, plan.min_lr / base_lr) if base_lr > 0 else 0.0

        def triangle(s: int) -> float:
            position = (s / half + 1.0) % 2.0  # starts at the peak warmup reached: down, then up
            height = position if position <= 1.0 else 2.0 - position
            return low + (1.0 - low) * height

        return triangle
    raise ValueError(f"unknown schedule type {plan.type!r}; expected one of {sorted(SHAPES)}")


def factor_fn(plan: SchedulePlan, base_lr: float) -> Callable[[int], float]:
    """The multiplier of ``base_lr`` at each optimizer step, floor included."""
    if plan.type not in SHAPES:
        raise ValueError(f"unknown schedule type {plan.type!r}; expected one of {sorted(SHAPES)}")
    if plan.type in HF_SHAPES:
        hf = get_scheduler(
            plan.type,
            optimizer=_dummy_optimizer(base_lr),
            num_warmup_steps=plan.warmup_steps,
            num_training_steps=plan.total_steps,
            scheduler_specific_kwargs=_hf_kwargs(plan, base_lr),
        )
        shape: Callable[[int], float] = hf.lr_lambdas[0]
    else:
        decay = _own_decay(plan, base_lr)
        warmup = plan.warmup_steps

        def shape(s: int) -> float:
            return _warmup(s, warmup) if s < warmup else decay(s - warmup)

    floor = plan.min_lr / base_lr if base_lr > 0 else 0.0
    if floor <= 0:
        return shape
    warmup = plan.warmup_steps

    def floored(s: int) -> float:
        value = shape(s)
        return value if s < warmup else max(value, floor)

    return floored


def build_scheduler(optimizer: torch.optim.Optimizer, plan: SchedulePlan) -> LambdaLR:
    """A ``LambdaLR`` on ``optimizer`` following ``plan`` (base LR = the optimizer's ``lr``)."""
    base_lr = float(optimizer.defaults.get("lr") or optimizer.param_groups[0]["lr"])
    return LambdaLR(optimizer, factor_fn(plan, base_lr))


def lr_at(plan: SchedulePlan, base_lr: float, step: int) -> float:
    """The absolute learning rate of optimizer step ``step`` (convenience for tests and plots)."""
    return base_lr * factor_fn(plan, base_lr)(step)


# --- the range test's ramp --------------------------------------------------------------------------------


def ramp_lr(
    min_lr: float,
    max_lr: float,
    num_steps: int,
    step: int,
    mode: str = "exponential",
    ceiling: float | None = None,
) -> float:
    """LR of ramp step ``step`` (0-based) going from ``min_lr`` at 0 to ``max_lr`` at ``num_steps - 1``.

    ``exponential`` spaces the LRs evenly in log space (``min x (max/min)^(s/(N-1))``), ``linear`` evenly.
    With a ``ceiling`` the ramp goes on past ``max_lr`` at the same rate (an extended range test), up to it.
    """
    if num_steps <= 1:
        return min_lr
    t = max(0.0, step / (num_steps - 1))
    if ceiling is None:
        t = min(1.0, t)
    if mode == "linear":
        lr = min_lr + (max_lr - min_lr) * t
    elif mode == "exponential":
        lr = min_lr * (max_lr / min_lr) ** t
    else:
        raise ValueError(f"unknown ramp mode {mode!r}; expected 'exponential' or 'linear'")
    return lr if ceiling is None else min(lr, ceiling)


def extension_steps(min_lr: float, max_lr: float, num_steps: int, mode: str, ceiling: float) -> int:
    """Steps an extended ramp needs past ``num_steps`` to reach ``ceiling`` (at most ``3 x num_steps``)."""
    if ceiling <= max_lr or num_steps <= 1:
        return 0
    if mode == "exponential":
        per_step = math.log(max_lr / min_lr) / (num_steps - 1)
        needed = math.log(ceiling / max_lr) / per_step
    else:
        needed = (ceiling - max_lr) / ((max_lr - min_lr) / (num_steps - 1))
    return min(3 * num_steps, math.ceil(needed))


def build_ramp(
    optimizer: torch.optim.Optimizer,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    mode: str,
    ceiling: float | None = None,
) -> LambdaLR:
    """A ``LambdaLR`` that ramps ``min_lr → max_lr`` (and on to ``ceiling`` when extended)."""
    base_lr = float(optimizer.defaults.get("lr") or optimizer.param_groups[0]["lr"])
    return LambdaLR(optimizer, lambda s: ramp_lr(min_lr, max_lr, num_steps, s, mode, ceiling) / base_lr)
