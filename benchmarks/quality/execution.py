"""Running the benchmark's jobs: the product's trainer in-process, torch-lr-finder and Prodigy on the
product's data pipeline and model, in a pool of worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import io
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.quality.peer_rules import lrfinder_steepest


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this worker once the process that spawned it is gone: a benchmark stopped by SIGTERM (``timeout``)
    or SIGKILL runs no clean-up, and its orphaned workers would otherwise idle on, each holding a model
    in memory (or on a GPU)."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def init_pool_worker() -> None:
    """A pool worker: the quiet set-up of :func:`init_worker`, and it leaves with its parent."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    init_worker()


def init_worker() -> None:
    """Quiet libraries; every worker runs the trainer in-process, one torch thread (the trainer's CPU
    default), so N workers use N cores."""
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def seed_everything(seed: int) -> None:
    """Seed every generator before a trainer call, so that nothing an earlier job left in this long-lived
    worker reaches the next. (It was also how the benchmark stayed reproducible while the trainer drew new
    heads and LoRA weights before seeding; since 8ebd67e the trainer seeds first itself.)"""
    from transformers import set_seed

    set_seed(seed)


def call_trainer(argv: list[str], out: Path) -> tuple[int, dict[str, Any], str]:
    """``finetune-trainer ARGV --metrics-port 0 --result-file ... --output-dir OUT`` in-process: exit code,
    the full result (``OUT/result.json``, else the compact result file), stderr's tail."""
    from finetune_trainer.cli import main

    compact = out / "result-file.json"
    err = io.StringIO()
    with (
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
        contextlib.redirect_stderr(err),
    ):
        code = main([*argv, "--metrics-port", "0", "--result-file", str(compact), "--output-dir", str(out)])
    full = out / "result.json"
    path = full if full.exists() else compact
    data = json.loads(path.read_text()) if path.exists() else {}
    return code, data, err.getvalue()[-2000:]


def _smoothed_curve(out: Path) -> tuple[list[float], list[float]]:
    """Every point of a range test's curve (``curve.csv``: lr and smoothed loss)."""
    lrs, losses = [], []
    with (out / "curve.csv").open() as fh:
        for row in csv.DictReader(fh):
            lrs.append(float(row["lr"]))
            losses.append(float(row["smoothedLoss"]))
    return lrs, losses


def lrfinder_run(task: dict[str, Any], seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """torch-lr-finder's own range test (its ramp, smoothing 0.05, divergence 5x, no clipping) on the
    product's data pipeline and model loader; its published suggestion."""
    import torch
    from torch_lr_finder import LRFinder

    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import prepare_run
    from finetune_trainer.settings import load_config

    cfg = load_config(task["config"], [f"optimization.seed={seed}"])
    plan = prepare_run(cfg, "range-test", None)
    net = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)

    class LossOf(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, inputs: dict[str, Any]) -> Any:
            return self.inner(**inputs).loss

    collator = plan.data.collator
    loader = torch.utils.data.DataLoader(
        plan.data.train,
        batch_size=cfg.optimization.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda rows: (dict(collator(rows)), 0),
    )
    lo, hi, steps = (float(settings[k]) for k in ("startLearningRate", "endLearningRate", "steps"))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lo, weight_decay=cfg.optimization.weight_decay, fused=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    finder = LRFinder(LossOf(net), opt, lambda loss, _labels: loss, device=device)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(loader, start_lr=lo, end_lr=hi, num_iter=int(steps), step_mode="exp")
    lrs, losses = list(finder.history["lr"]), [float(x) for x in finder.history["loss"]]
    return {"lr": lrfinder_steepest(lrs, losses), "steps": len(lrs)}


def prodigy_run(task: dict[str, Any], seed: int, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """The full fine-tune with Prodigy (LR-free: ``lr`` 1 under the task's warmup + cosine) in the product's
    ``Trainer`` (its data, model, clipping, schedule); the final eval loss and Prodigy's step size ``d``."""
    from prodigyopt import Prodigy

    from finetune_trainer.modeling import load_model
    from finetune_trainer.runsetup import build_trainer, prepare_run, training_arguments
    from finetune_trainer.settings import load_config
    from finetune_trainer.training import fine_tune_schedule

    lr = float(settings.get("learningRate", 1.0))
    cfg = load_config(task["config"], [f"optimization.seed={seed}"], learning_rate=lr)
    plan = prepare_run(cfg, "trial", lr)
    net = load_model(cfg, plan.tokenizer, plan.data.num_labels, plan.data.label_names)
    args = training_arguments(plan, out, max_steps=cfg.optimization.max_steps, evaluate=True, save=False)
    trainer = build_trainer(plan, net, args, fine_tune_schedule(plan), [])
    trainer.optimizer = Prodigy(
        [p for p in net.parameters() if p.requires_grad],
        lr=lr,
        weight_decay=cfg.optimization.weight_decay,
        safeguard_warmup=bool(settings.get("safeguardWarmup", True)),
        use_bias_correction=bool(settings.get("useBiasCorrection", True)),
    )
    trainer.train()
    loss = trainer.evaluate().get("eval_loss")
    d = float(trainer.optimizer.param_groups[0].get("d", math.nan))
    finite = loss is not None and math.isfinite(float(loss))  # a NaN loss: diverged
    return {"loss": float(loss) if finite else None, "d": d * lr, "steps": trainer.state.global_step}


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (in a worker); returns what scoring needs, its wall time, and any error."""
    started = time.monotonic()
    kind, seed = job["kind"], int(job["seed"])
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=job["scratch"]))
    res: dict[str, Any] = {}
    try:
        seed_everything(seed)
        base = ["--config", job["config"], "--set", f"optimization.seed={seed}"]
        for item in job.get("sets") or ():  # recommend_probe's overrides; Bench's journalled jobs have none
            base += ["--set", item]
        if kind == "trial":
            argv = ["trial", *base, "--learning-rate", repr(float(job["lr"]))]
            if job.get("steps"):
                argv += ["--set", f"optimization.maxSteps={int(job['steps'])}"]
            code, data, err = call_trainer(argv, out)
            if data.get("kind") != "trial":
                raise RuntimeError(f"trial exited {code}: {data.get('error') or err}")
            res = {"loss": data.get("evalLoss"), "steps": int(data.get("steps") or 0)}
        elif kind == "range-test":
            code, data, err = call_trainer(["range-test", *base], out)
            if data.get("kind") != "rangeTest":
                raise RuntimeError(f"range-test exited {code}: {data.get('error') or err}")
            lrs, losses = _smoothed_curve(out)
            res = {
                "suggestions": data.get("suggestions") or {},
                "rule": data.get("rule"),
                "steps": int(data.get("steps") or 0),
                "curve": [lrs, losses],
                "edge": data.get("divergenceLearningRate"),
                "window": [data.get("minLearningRate"), data.get("maxLearningRate")],
            }
        elif kind == "recommend":
            code, data, err = call_trainer(["recommend", *base], out)
            if data.get("kind") != "recommend":
                raise RuntimeError(f"recommend exited {code}: {data.get('error') or err}")
            res = {
                "lr": data.get("recommendedLearningRate"),
                "steps": int(data.get("stepsSpent") or 0),
                "decidedBy": data.get("decidedBy"),
                "evidence": data.get("evidence"),
                "interval": data.get("interval"),
                "trials": [
                    [t.get("stage"), t.get("learningRate"), t.get("steps"), t.get("evalLoss")]
                    for t in data.get("trials") or []
                ],
                "edge": (data.get("rangeTest") or {}).get("divergenceLearningRate"),
                "rangeTestSteps": (data.get("rangeTest") or {}).get("steps"),
            }
        elif kind == "lrfinder":
            res = lrfinder_run(job, seed, job["settings"])
        elif kind == "prodigy":
            res = prodigy_run(job, seed, job["settings"], out)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    except Exception as exc:  # a failed job is a result too (scored as no suggestion)
        res = {"error": f"{type(exc).__name__}: {str(exc)[:1500]}", "trace": traceback.format_exc()[-1500:]}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res["seconds"] = time.monotonic() - started
    return res


class Runner:
    """Jobs on ``workers`` processes (spawned, so no torch state is shared), or inline with one worker."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: cf.ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = cf.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=init_pool_worker
            )
        else:
            init_worker()
        self.pending: dict[cf.Future[dict[str, Any]], dict[str, Any]] = {}
        self.inline: list[dict[str, Any]] = []

    def submit(self, job: dict[str, Any]) -> None:
        if self.pool is None:
            self.inline.append(job)
        else:
            self.pending[self.pool.submit(execute, job)] = job

    def done(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Block until at least one job finished; return the finished (job, result) pairs."""
        if self.pool is None:
            if not self.inline:
                return []
            job = self.inline.pop(0)
            return [(job, execute(job))]
        if not self.pending:
            return []
        finished, _ = cf.wait(self.pending, return_when=cf.FIRST_COMPLETED)
        return [(self.pending.pop(f), f.result()) for f in finished]

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.inline)

    def drain(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Each submitted job's (job, result) as it finishes, until none is left. The runner then takes more
        jobs (a probe drains its recommendations, then their check runs) until :meth:`close`; a caller that
        stops early (an error, a break) shuts the workers down."""
        finished = False
        try:
            while self.busy:
                yield from self.done()
            finished = True
        finally:
            if not finished:
                self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
