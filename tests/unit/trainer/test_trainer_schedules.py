"""Every schedule shape follows its formula at warmup end, mid-decay and the last step."""

from __future__ import annotations

import math

import pytest
import torch

from finetune_trainer.config import ScheduleSpec
from finetune_trainer.schedules import (
    SHAPES,
    SchedulePlan,
    build_ramp,
    build_scheduler,
    lr_at,
    plan_from_spec,
    ramp_lr,
)

LR = 1e-3
TOTAL = 100
WARM = 10
MID = WARM + (TOTAL - WARM) // 2  # 55: progress 0.5 through the decay
END = TOTAL - 1  # the last optimizer step
P_END = (END - WARM) / (TOTAL - WARM)


def plan(kind: str, **kw: object) -> SchedulePlan:
    return SchedulePlan(type=kind, total_steps=TOTAL, warmup_steps=WARM, **kw)  # type: ignore[arg-type]


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("kind", sorted(SHAPES - {"constant"}))
def test_warmup_is_linear_from_zero_for_every_shape(kind: str) -> None:
    p = plan(kind)
    assert lr_at(p, LR, 0) == 0.0
    assert lr_at(p, LR, WARM // 2) == approx(LR * (WARM // 2) / WARM)
    assert lr_at(p, LR, WARM) == approx(LR)  # warmup end: the peak


def test_linear() -> None:
    p = plan("linear")
    assert lr_at(p, LR, MID) == approx(LR * 0.5)
    assert lr_at(p, LR, END) == approx(LR * (1 - P_END))


def test_cosine_half_wave() -> None:
    p = plan("cosine")
    assert lr_at(p, LR, MID) == approx(LR * 0.5)
    assert lr_at(p, LR, END) == approx(LR * 0.5 * (1 + math.cos(math.pi * P_END)))


def test_cosine_with_restarts_restarts_at_each_cycle() -> None:
    p = plan("cosine_with_restarts", num_cycles=2)
    assert lr_at(p, LR, MID) == approx(LR)  # progress 0.5 with 2 cycles = a restart
    quarter = WARM + (TOTAL - WARM) // 4  # progress 0.25 → half-way down the first cycle (0.5 of it)
    frac = ((quarter - WARM) / (TOTAL - WARM) * 2) % 1.0
    assert lr_at(p, LR, quarter) == approx(LR * 0.5 * (1 + math.cos(math.pi * frac)))
    assert lr_at(p, LR, TOTAL) == 0.0


def test_polynomial_decays_to_the_floor() -> None:
    p = plan("polynomial", power=2.0, min_lr=1e-5)
    assert lr_at(p, LR, MID) == approx((LR - 1e-5) * 0.5**2 + 1e-5)
    assert lr_at(p, LR, END) == approx((LR - 1e-5) * (1 - P_END) ** 2 + 1e-5)
    assert lr_at(p, LR, TOTAL + 5) == approx(1e-5)


def test_constant_and_constant_with_warmup() -> None:
    assert [lr_at(plan("constant"), LR, s) for s in (0, MID, END)] == [LR, LR, LR]
    p = plan("constant_with_warmup")
    assert lr_at(p, LR, MID) == approx(LR)
    assert lr_at(p, LR, END) == approx(LR)


def test_inverse_sqrt() -> None:
    p = plan("inverse_sqrt")  # timescale defaults to the warmup steps
    assert lr_at(p, LR, MID) == approx(LR / math.sqrt(MID / WARM))
    assert lr_at(p, LR, END) == approx(LR / math.sqrt(END / WARM))


def test_warmup_stable_decay() -> None:
    p = plan("warmup_stable_decay", decay_ratio=0.2, decay_type="linear", min_lr=1e-5)
    decay_steps = round(0.2 * (TOTAL - WARM))  # 18
    start = TOTAL - decay_steps
    assert lr_at(p, LR, MID) == approx(LR)  # the stable phase
    r = 1e-5 / LR
    assert lr_at(p, LR, start + decay_steps // 2) == approx(LR * (0.5 * (1 - r) + r))
    assert lr_at(p, LR, END) == approx(LR * ((1 - (decay_steps - 1) / decay_steps) * (1 - r) + r))


def test_cosine_with_min_lr_decays_to_min_lr() -> None:
    p = plan("cosine_with_min_lr", min_lr=1e-7)
    r = 1e-7 / LR
    assert lr_at(p, LR, MID) == approx(LR * (0.5 * (1 - r) + r))
    assert lr_at(p, LR, TOTAL) == approx(1e-7)


def test_step_decay() -> None:
    p = plan("step", step_size=30, gamma=0.5)
    assert lr_at(p, LR, WARM + 29) == approx(LR)
    assert lr_at(p, LR, MID) == approx(LR * 0.5)  # 45 steps after warmup: one drop
    assert lr_at(p, LR, END) == approx(LR * 0.5**2)  # 89 after warmup: two drops


def test_exponential_decay_to_gamma_and_floor() -> None:
    p = plan("exponential", gamma=0.01)  # gamma = the factor over the whole decay
    assert lr_at(p, LR, MID) == approx(LR * 0.1)
    assert lr_at(p, LR, END) == approx(LR * 0.01**P_END)
    assert lr_at(p, LR, TOTAL) == approx(LR * 0.01)
    q = plan("exponential", gamma=1e-6, min_lr=1e-5)  # the floor stops it
    assert lr_at(q, LR, END) == approx(1e-5)


def test_cyclical_triangle() -> None:
    half = (TOTAL - WARM) / 2  # one cycle = down for half the steps, up for the other half
    p = plan("cyclical", step_size=int(half), min_lr=LR * 0.1)
    assert lr_at(p, LR, WARM) == approx(LR)  # continues from the warmup peak
    assert lr_at(p, LR, WARM + 15) == approx(LR * (0.1 + 0.9 * (1 - 15 / half)))
    assert lr_at(p, LR, MID) == approx(LR * 0.1)  # the low end at half the cycle
    assert lr_at(p, LR, END) == approx(LR * (0.1 + 0.9 * ((END - WARM - half) / half)))
    assert lr_at(p, LR, TOTAL) == approx(LR)


def test_min_lr_floor_clamps_linear_decay() -> None:
    p = plan("linear", min_lr=1e-7)
    assert lr_at(p, 3e-4, TOTAL) == approx(1e-7)
    assert lr_at(p, 3e-4, 0) == 0.0  # the floor does not apply to warmup


def test_plan_from_spec_resolves_warmup_ratio() -> None:
    spec = ScheduleSpec(type="cosine_with_min_lr", warmupRatio=0.1, minLearningRate=1e-7)
    p = plan_from_spec(spec, 95)
    assert p.warmup_steps == 10  # ceil(9.5)
    assert p.min_lr == 1e-7
    assert lr_at(p, 3e-4, 95) == approx(1e-7)


def test_unknown_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown schedule type"):
        lr_at(plan("zigzag"), LR, 1)


def test_build_scheduler_drives_an_optimizer() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    sched = build_scheduler(opt, plan("linear"))
    seen = []
    for _ in range(TOTAL):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[WARM] == approx(LR)
    assert seen[MID] == approx(LR * 0.5)


def test_ramp_exponential_and_linear() -> None:
    assert ramp_lr(1e-7, 1e-1, 7, 0) == approx(1e-7)
    assert ramp_lr(1e-7, 1e-1, 7, 3) == approx(1e-4)  # geometric mid-point
    assert ramp_lr(1e-7, 1e-1, 7, 6) == approx(1e-1)
    assert ramp_lr(0.0, 1.0, 11, 5, "linear") == approx(0.5)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-1)
    sched = build_ramp(opt, 1e-7, 1e-1, 7, "exponential")
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[3] == approx(1e-4)
    assert lrs[-1] == approx(1e-1)
