"""The set-up every command that trains shares (``range-test``, ``trial``, ``train``, ``recommend``).

:func:`prepare_run` checks everything a run needs (model source, hardware, data, batch and warmup against
the run's length) before anything is written and returns a :class:`RunPlan`; :func:`training_arguments`
turns the plan into ``TrainingArguments``; :func:`build_trainer` builds the ``Trainer`` whose schedule is
ours (:mod:`finetune_trainer.schedules`); :func:`callback_base` is the class our callbacks derive from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.artifacts import check_outputs
from finetune_trainer.config import OptimizationSpec, TrainerConfig
from finetune_trainer.data import PreparedData, prepare
from finetune_trainer.exitcodes import ConfigError, config_errors
from finetune_trainer.modeling import (
    check_hardware,
    check_model_source,
    cuda_available,
    load_tokenizer,
    resolve_precision,
)
from finetune_trainer.runtime import world_size
from finetune_trainer.schedules import warmup_steps_for

OPTIMIZERS = {"adamw": "adamw_torch_fused", "sgd": "sgd", "adafactor": "adafactor"}
OPTIMIZATION_FIX = "fix the optimization, evaluation or checkpoints field the error names"
SCHEDULE_FIX = "fix the schedule field the error names"


@dataclass
class RunPlan:
    """A checked run: data tokenised, lengths resolved. Nothing has been written yet."""

    cfg: TrainerConfig
    command: str
    learning_rate: float
    tokenizer: Any
    data: PreparedData
    precision: str
    world_size: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @property
    def effective_batch_size(self) -> int:
        return self.cfg.optimization.effective_batch_size(self.world_size)


def steps_per_epoch(examples: int, batch_size: int, world: int, accumulation: int) -> int:
    """Optimizer updates per epoch, as ``Trainer`` counts them."""
    batches = math.ceil(examples / (batch_size * world))
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


def fine_tune_steps(opt: OptimizationSpec, per_epoch: int) -> int:
    """Optimizer updates of the run a config describes: ``maxSteps``, else its epochs over the data."""
    return opt.max_steps or max(1, math.ceil(opt.epochs * per_epoch))


def prepare_run(cfg: TrainerConfig, command: str, learning_rate: float | None) -> RunPlan:
    """Validate fully and tokenise; raises :class:`ConfigError` naming the field at fault."""
    check_model_source(cfg.model)
    check_hardware(cfg)
    if command in ("train", "trial") and learning_rate is None:
        raise ConfigError(
            "learningRate",
            f"{command} needs a learning rate",
            "set learningRate in the config or --learning-rate",
        )
    floor = cfg.schedule.min_learning_rate
    if command == "train" and learning_rate is not None and floor >= learning_rate:
        raise ConfigError(
            "schedule.minLearningRate",
            f"{floor:g} is not below the learning rate {learning_rate:g} (the floor over the peak)",
            "lower schedule.minLearningRate",
        )
    tokenizer = load_tokenizer(cfg.model)
    data = prepare(cfg, tokenizer)
    opt = cfg.optimization
    world = world_size()
    if len(data.train) < opt.batch_size * world:
        unit = (
            "packed sequences of up to maxSeqLength tokens"
            if cfg.model.task == "causal-lm" and data.packed
            else "examples"
        )
        raise ConfigError(
            "optimization.batchSize",
            f"{opt.batch_size} per device x {world} processes exceeds the {len(data.train)} training {unit}",
            "lower optimization.batchSize (or maxSeqLength), or add data",
        )
    per_epoch = steps_per_epoch(len(data.train), opt.batch_size, world, opt.gradient_accumulation_steps)
    if command == "range-test":
        total, warmup = cfg.range_test.steps, 0
        if cfg.range_test.use_validation_loss and data.eval is None:
            raise ConfigError(
                "rangeTest.useValidationLoss",
                "there is no validation data",
                "set dataset.validationFraction above 0 or dataset.validationSplit",
            )
    else:
        total = fine_tune_steps(opt, per_epoch)
        warmup = warmup_steps_for(total, cfg.schedule.warmup_steps, cfg.schedule.warmup_ratio_or_default())
        if warmup >= total:
            raise ConfigError(
                "schedule.warmupSteps",
                f"warmup of {warmup} steps is not shorter than training ({total} steps)",
                "lower schedule.warmupSteps (or use warmupRatio), or train longer",
            )
    if cfg.distributed.strategy == "fsdp" and world > 1 and not cuda_available():
        raise ConfigError(
            "distributed.strategy",
            f"fsdp across {world} processes needs GPUs (accelerate shards CUDA processes only; on CPU it"
            " would quietly train with DDP)",
            "use ddp on CPU, or give the run GPUs (resources.gpus)",
        )
    if command == "train":
        check_outputs(cfg)
        check_tracking(cfg)
    if cfg.early_stopping.enabled and data.eval is None and command != "range-test":
        raise ConfigError(
            "earlyStopping.enabled", "needs validation data", "set dataset.validationFraction above 0"
        )
    return RunPlan(
        cfg=cfg,
        command=command,
        learning_rate=learning_rate if learning_rate is not None else cfg.range_test.max_learning_rate,
        tokenizer=tokenizer,
        data=data,
        precision=resolve_precision(cfg),
        world_size=world,
        steps_per_epoch=per_epoch,
        total_steps=total,
        warmup_steps=warmup,
    )


def keeps_best(cfg: TrainerConfig, has_eval: bool) -> bool:
    """Whether ``train`` keeps the best checkpoint and ends on its weights (``load_best_model_at_end``):
    with validation data, ``finalModel: best``, and checkpoints at evaluation steps (a multiple of
    ``evaluation.everySteps``, as Hugging Face requires; else :func:`best_model_warning` says why not)."""
    return (
        has_eval
        and cfg.checkpoints.final_model == "best"
        and cfg.checkpoints.every_steps % cfg.evaluation.every_steps == 0
    )


def best_model_warning(cfg: TrainerConfig, has_eval: bool) -> str | None:
    """Why the best checkpoint cannot be the final model although ``finalModel`` asks for it, if so."""
    if not has_eval or cfg.checkpoints.final_model != "best" or keeps_best(cfg, has_eval):
        return None
    return (
        f"checkpoints.everySteps ({cfg.checkpoints.every_steps}) is not a multiple of evaluation.everySteps "
        f"({cfg.evaluation.every_steps}), so checkpoints carry no validation loss to pick the best by: the "
        "final model is the last step's; make it a multiple to keep the best"
    )


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def check_tracking(cfg: TrainerConfig) -> None:
    """The tracker ``tracking.reportTo`` names is installed (and MLflow knows where to log)."""
    import importlib.util
    import os

    report = cfg.tracking.report_to
    if report == "none":
        return
    if not any(importlib.util.find_spec(m) for m in TRACKER_PACKAGES[report]):
        raise ConfigError(
            "tracking.reportTo",
            f"is {report} but the trainer image has no {TRACKER_PACKAGES[report][0]} package",
            f"install {TRACKER_PACKAGES[report][0]} in the trainer image, or set tracking.reportTo to none",
        )
    if report == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError(
            "tracking.reportTo",
            "is mlflow but MLFLOW_TRACKING_URI is not set",
            "set tracking.mlflowTrackingUri (a Secret or ConfigMap key) on the FineTuneJob, or export it",
        )


# --- Trainer ----------------------------------------------------------------------------------------------


def _trainer_class() -> type:
    from transformers import Trainer

    class FineTuneTrainer(Trainer):
        """``Trainer`` whose LR schedule comes from :mod:`finetune_trainer.schedules`."""

        def __init__(self, *args: Any, schedule_factory: Callable[[Any, int], Any], **kwargs: Any) -> None:
            self._schedule_factory = schedule_factory
            super().__init__(*args, **kwargs)

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                with config_errors("schedule", SCHEDULE_FIX):
                    schedule = self._schedule_factory(optimizer or self.optimizer, num_training_steps)
                self.lr_scheduler = schedule
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return FineTuneTrainer


def training_arguments(
    plan: RunPlan,
    output_dir: str | Path,
    *,
    max_steps: int | None,
    evaluate: bool,
    save: bool,
    logging_steps: int = 1,
    keep_best: bool = False,
) -> Any:
    """``TrainingArguments`` for the plan. ``keep_best`` (``train`` with validation data): keep the best
    checkpoint by validation loss beside the newest and end on its weights; ``train`` also reports to
    the configured tracker (TensorBoard event files under ``<outputDir>/runs``)."""
    from transformers import TrainingArguments

    cfg, opt = plan.cfg, plan.cfg.optimization
    cpu = not cuda_available()
    tracking = plan.command == "train" and cfg.tracking.report_to != "none"
    with config_errors("optimization", OPTIMIZATION_FIX):
        return TrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=opt.batch_size,
            per_device_eval_batch_size=opt.batch_size,
            gradient_accumulation_steps=opt.gradient_accumulation_steps,
            learning_rate=plan.learning_rate,
            weight_decay=opt.weight_decay,
            max_grad_norm=opt.max_grad_norm if opt.max_grad_norm > 0 else 0.0,
            num_train_epochs=opt.epochs,
            max_steps=max_steps if max_steps is not None else -1,
            optim=OPTIMIZERS[opt.optimizer],
            optim_args=f"momentum={opt.momentum}" if opt.optimizer == "sgd" else None,
            logging_strategy="steps",
            logging_steps=logging_steps,
            logging_nan_inf_filter=False,  # a NaN loss must reach us, not be averaged away
            eval_strategy="steps" if evaluate else "no",
            eval_steps=cfg.evaluation.every_steps if evaluate else None,
            metric_for_best_model="eval_loss" if evaluate else None,
            greater_is_better=False if evaluate else None,
            save_strategy="steps" if save else "no",
            save_steps=cfg.checkpoints.every_steps,
            # Hugging Face deletes the newest checkpoint at the end when the limit is 1 and the best differs
            save_total_limit=max(cfg.checkpoints.keep, 2) if keep_best else cfg.checkpoints.keep,
            bf16=plan.precision == "bf16",
            fp16=plan.precision == "fp16",
            use_cpu=cpu,
            ddp_backend="gloo" if cpu and plan.world_size > 1 else None,
            ddp_find_unused_parameters=False if plan.world_size > 1 else None,
            **fsdp_arguments(cfg.distributed.strategy, plan.world_size),
            seed=opt.seed,
            data_seed=opt.seed,  # data order follows optimization.seed; dataset.seed picks the split
            load_best_model_at_end=keep_best and evaluate and save,
            report_to=cfg.tracking.report_to if tracking else "none",
            run_name=cfg.tracking.run_name or Path(output_dir).name,
            disable_tqdm=True,
            log_level="warning",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            **_checkpointing(opt.gradient_checkpointing, TrainingArguments),
        )


def fsdp_arguments(strategy: str, world: int) -> dict[str, Any]:
    """TrainingArguments' FSDP options for `distributed.strategy: fsdp` across several processes: FSDP2,
    parameters resharded after each forward, each transformer block wrapped (the model's own
    `_no_split_modules`); nothing (DDP, or one process) otherwise."""
    if strategy != "fsdp" or world <= 1:
        return {}
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        },
    }


def _checkpointing(enabled: bool, arguments: type) -> dict[str, Any]:
    """Activation (gradient) checkpointing under the name this transformers version uses."""
    if not enabled:
        return {}
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in getattr(arguments, "__dataclass_fields__", {})
        else "gradient_checkpointing"
    )
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def build_trainer(
    plan: RunPlan,
    model: Any,
    args: Any,
    schedule_factory: Callable[[Any, int], Any],
    callbacks: list[Any],
) -> Any:
    from transformers.trainer_callback import PrinterCallback

    with config_errors("optimization", OPTIMIZATION_FIX):  # e.g. the seed numpy refuses
        trainer = _trainer_class()(
            model=model,
            args=args,
            data_collator=plan.data.collator,
            train_dataset=plan.data.train,
            eval_dataset=plan.data.eval if args.eval_strategy != "no" else None,
            processing_class=plan.tokenizer,
            callbacks=callbacks,
            schedule_factory=schedule_factory,
        )
    trainer.remove_callback(PrinterCallback)  # stdout is ours (JSON lines)
    return trainer


def callback_base() -> type:
    """``transformers.TrainerCallback``, imported only when a run starts (the CLI's help stays fast)."""
    from transformers import TrainerCallback

    return TrainerCallback
