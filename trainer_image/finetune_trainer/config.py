"""The trainer's contract: what it reads (``TrainerConfig``) and what it reports (the result models).

Pure pydantic, no torch: the operator imports this module to render trainer configs and to read results,
and generates its CRDs from these models. Field names are camelCase on the wire (YAML, JSON, Kubernetes)
and snake_case in Python. Unknown fields are errors.

Cross-field rules are declared once as ``Rule``s: each is both a CEL expression (``x-kubernetes-validations``
in the CRD, enforced by the API server) and a Python check (enforced by pydantic), with one message.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "finetune.dev"
MAX_NAME_LENGTH = 253
"""Bound of names, revisions, splits and column names (a Kubernetes object name's limit)."""
MAX_PATH_LENGTH = 4096
"""Bound of file paths, model directories and hub ids (Linux's PATH_MAX)."""
MAX_SEED = 2**32 - 1
"""Largest seed numpy and torch accept."""
MAX_STEPS = 10_000_000
"""Bound of every step count and cadence (far beyond any fine-tune)."""
MAX_SAMPLES = 2**31 - 1
"""Bound of every example count."""


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: ``cel`` for the API server, ``check`` for pydantic, one ``message`` for both."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None


def rules_of(cls: type) -> list[Rule]:
    """Every rule of ``cls`` and of the classes it derives from (a class that sets ``__rules__`` adds to
    its bases' rules, never hides them), each once, bases first."""
    rules: list[Rule] = []
    seen: set[tuple[str, str]] = set()
    for klass in reversed(cls.__mro__):
        for rule in klass.__dict__.get("__rules__", []):
            if (rule.cel, rule.message) not in seen:
                seen.add((rule.cel, rule.message))
                rules.append(rule)
    return rules


def _add_cel_rules(schema: dict[str, Any], cls: type) -> None:
    rules = rules_of(cls)
    if rules:
        schema["x-kubernetes-validations"] = [
            {"rule": r.cel, "message": r.message} | ({"fieldPath": r.field_path} if r.field_path else {})
            for r in rules
        ]


class Spec(BaseModel):
    """Base of every contract model: camelCase aliases, unknown fields forbidden, docs as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra=_add_cel_rules,
        validate_default=False,
    )
    __rules__: ClassVar[list[Rule]] = []

    @model_validator(mode="after")
    def _check_rules(self) -> Spec:
        for rule in rules_of(type(self)):
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON-able dict, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------- inputs

PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_LENGTH)]
"""A file or directory path (bounded, so the API server can cost CEL rules over lists of them)."""


class ModelSpec(Spec):
    """Which pretrained model to fine-tune."""

    name: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    """Hugging Face model id (e.g. `distilbert-base-uncased`) or a local directory with config and weights."""
    revision: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    """Hub revision (branch, tag or commit) to load; ignored for local directories."""
    task: Literal["causal-lm", "sequence-classification"] = "causal-lm"
    """What the model is trained to do: next-token prediction, or classifying a text into labels."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype when loading; `auto` keeps the checkpoint's dtype (float32 on CPU)."""
    num_labels: int | None = Field(default=None, ge=2, le=100000)
    """Number of classes for sequence classification; inferred from the label field when unset."""
    trust_remote_code: bool = False
    """Allow model code from the hub repository to run. Leave off unless you trust the repository."""


DataType = Literal["auto", "text", "chat", "prompt-completion", "instruction"]


class DatasetSpec(Spec):
    """Where the training text comes from, and how it is split."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="has(self.name) != (has(self.files) && size(self.files) > 0)",
            message="set exactly one of dataset.name (a hub dataset) or dataset.files (local files)",
            check=lambda s: (s.name is not None) != bool(s.files),
        ),
        Rule(
            cel="!has(self.config) || has(self.name)",
            message="dataset.config needs dataset.name (a hub dataset); local files have no configurations",
            check=lambda s: s.config is None or s.name is not None,
        ),
        Rule(
            cel="!has(self.validationFiles) || has(self.files)",
            message="dataset.validationFiles needs dataset.files (a hub dataset uses validationSplit)",
            check=lambda s: not s.validation_files or bool(s.files),
        ),
    ]

    name: str | None = Field(default=None, max_length=MAX_PATH_LENGTH)
    """Hugging Face dataset name (e.g. `imdb`) or a local dataset folder. Exclusive with `files`."""
    config: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    """Hub dataset configuration (subset) name, e.g. `wikitext-2-raw-v1`; unset uses the default one."""
    revision: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    """Hub dataset revision (branch, tag or commit) to read; unset reads the default branch."""
    files: list[PathText] | None = Field(default=None, max_length=256)
    """Local data files (JSONL, JSON, CSV, Parquet or plain text). Exclusive with `name`."""
    validation_files: list[PathText] | None = Field(default=None, max_length=256)
    """Local files to evaluate on (same format as `files`); when set, nothing is held out of `files`."""
    format: Literal["auto", "json", "csv", "parquet", "text"] = "auto"
    """File format; `auto` picks it from the first file's extension (`.jsonl` is json)."""
    sample_by: Literal["line", "paragraph", "document"] = "line"
    """Plain text only: one example per line (line breaks dropped), per blank-line-separated paragraph,
    or per whole file (`document`: code and prose keep their line breaks)."""
    split: str = Field(default="train", min_length=1, max_length=MAX_NAME_LENGTH)
    """Split to train on."""
    validation_split: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    """Split to evaluate on; when unset, `validationFraction` of the training split is held out."""
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Fraction of the training split held out for validation when there is no `validationSplit`."""
    type: DataType = "auto"
    """How rows become training text. `text`: one column (`textField`) of plain text. `chat`: a column of
    messages (`messagesField`, a list of `{role, content}`) rendered with the tokenizer's chat template.
    `prompt-completion`: two columns (`promptField`, `completionField`). `instruction`: Alpaca-style
    `instructionField`, optional `inputField`, and `outputField`, rendered as the Alpaca prompt and its
    response. `auto` picks by the columns present, in that order of preference: messages, prompt and
    completion, instruction and output, else text. The range test, trials and the fine-tune all format data
    this one way, so a recommended learning rate is for the data actually trained on."""
    text_field: str = Field(default="text", min_length=1, max_length=MAX_NAME_LENGTH)
    """Column holding the input text (`type: text`)."""
    messages_field: str = Field(default="messages", min_length=1, max_length=MAX_NAME_LENGTH)
    """Column holding the conversation (`type: chat`): a list of `{role, content}` messages."""
    prompt_field: str = Field(default="prompt", min_length=1, max_length=MAX_NAME_LENGTH)
    """Column holding the prompt (`type: prompt-completion`)."""
    completion_field: str = Field(default="completion", min_length=1, max_length=MAX_NAME_LENGTH)
    """Column holding the completion (`type: prompt-completion`)."""
    instruction_field: str = Field(default="instruction", min_length=1, max_length=MAX_NAME_LENGTH)
    """Column holding the instruction (`type: instruction`)."""
    input_field: str = Field(default="input", min_length=1, max_length=MAX_NAME_LENGTH)
    """Column holding the optional input/context (`type: instruction`); rows without it use the
    instruction-only Alpaca prompt."""
    output_field: str = Field(default="output", min_length=1, max_length=MAX_NAME_LENGTH)
    """Column holding the response (`type: instruction`)."""
    completion_only_loss: bool = True
    """Chat, prompt-completion and instruction data: compute the loss on the completion (the assistant's
    turns, the response) only; prompt tokens get label -100. Off trains on every token."""
    label_field: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    """Column holding the class label (sequence classification only)."""
    max_samples: int | None = Field(default=None, ge=1, le=MAX_SAMPLES)
    """Use at most this many training examples (a seeded random subset): fast tuning on a slice."""
    sample_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    """Train on this fraction of the training examples (a seeded random subset, taken after `maxSamples`,
    never less than one optimiser batch: where the fraction's rows pack into fewer sequences, one batch
    of the sequences all rows make). An adaptive sweep's trials set it themselves (`adaptive.matchEpochs`)."""
    packing: bool | None = None
    """Causal LM: put several examples into each `maxSeqLength` sequence instead of padding each one. Plain
    text is concatenated and cut into full blocks; chat and instruction examples are packed whole (best-fit
    decreasing, TRL's `pack_dataset`), keeping their completion-only labels. Unset: on for plain text,
    off for chat, prompt-completion and instruction data."""
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    """Seed for the validation split, the `maxSamples` and `sampleFraction` subsets of the training rows,
    and `evaluation.maxSamples`' subset of the validation rows (data order follows `optimization.seed`)."""

    def has_validation(self) -> bool:
        """Whether there is validation data: a split, files, or a held-out fraction (see `HAS_VALIDATION`)."""
        has_split = self.validation_split is not None or bool(self.validation_files)
        return self.validation_fraction > 0 or has_split


HAS_VALIDATION = (
    "(self.dataset.validationFraction > 0.0 || has(self.dataset.validationSplit)"
    " || (has(self.dataset.validationFiles) && size(self.dataset.validationFiles) > 0))"
)
"""CEL over a spec with a `dataset`: `DatasetSpec.has_validation` for the API server."""


class AdapterSpec(Spec):
    """What is trained: every weight, a LoRA/QLoRA adapter (peft), or only the top layers."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="self.type != 'top-layers' || has(self.topLayers)",
            message="adapter.topLayers is required when adapter.type is top-layers",
            check=lambda s: s.type != "top-layers" or s.top_layers is not None,
        ),
    ]

    type: Literal["none", "lora", "qlora", "top-layers"] = "none"
    """`none` trains all weights; `lora`/`qlora` train a low-rank adapter (QLoRA: 4-bit base, CUDA only);
    `top-layers` trains only the last `topLayers` transformer blocks and the head."""
    r: int = Field(default=16, ge=1, le=1024)
    """LoRA rank."""
    alpha: int = Field(default=32, ge=1, le=4096)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch."""
    target_modules: list[Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]] | None = Field(
        default=None, max_length=64
    )
    """Module names to adapt (e.g. `q_proj`, `v_proj`); unset means every linear layer."""
    top_layers: int | None = Field(default=None, ge=1, le=1000)
    """With `top-layers`: how many of the last transformer blocks are trained."""


class OptimizationSpec(Spec):
    """Optimiser, batch, length of training, and when a run counts as diverged."""

    optimizer: Literal["adamw", "sgd", "adafactor"] = "adamw"
    """Optimiser."""
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """Decoupled weight decay."""
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    """SGD momentum (ignored by the other optimisers)."""
    max_grad_norm: float = Field(default=1.0, ge=0.0, le=1e6)
    """Clip gradients to this global norm; 0 disables clipping."""
    batch_size: int = Field(default=8, ge=1, le=65536)
    """Examples per device per step."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096)
    """Steps whose gradients are summed before an optimiser update."""
    max_seq_length: int = Field(default=512, ge=8, le=131072)
    """Tokens per example (longer texts are cut; packed blocks have this length)."""
    epochs: float = Field(default=1.0, gt=0.0, le=1000.0)
    """Passes over the training data (ignored when `maxSteps` is set)."""
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    """Stop after this many optimiser updates; overrides `epochs`."""
    divergence_factor: float = Field(default=4.0, gt=1.0, le=1000.0)
    """A fine-tune or trial stops as diverged once its smoothed training loss exceeds this many times its
    first logged loss (a NaN/inf loss always stops it). The range test has `rangeTest.divergenceFactor`."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Compute precision; `auto` is bf16 on GPUs that support it, else fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them: much less GPU memory for long
    sequences or big models (QLoRA on a small GPU), about a third more compute per step."""
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    """Seed for weight init of new heads and adapters, data order and dropout."""

    def effective_batch_size(self, world_size: int = 1) -> int:
        """Examples per optimiser update across all processes."""
        return self.batch_size * self.gradient_accumulation_steps * world_size


ScheduleType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "warmup_stable_decay",
    "step",
    "exponential",
    "cyclical",
]


DEFAULT_WARMUP_RATIO = 0.05
"""Warmup as a fraction of the steps when a schedule sets neither `warmupRatio` nor `warmupSteps`."""


class ScheduleSpec(Spec):
    """How the learning rate moves: warmup, then the decay shape."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="!(has(self.warmupRatio) && has(self.warmupSteps))",
            message="set at most one of schedule.warmupRatio or schedule.warmupSteps",
            check=lambda s: s.warmup_ratio is None or s.warmup_steps is None,
        ),
    ]

    type: ScheduleType = "cosine"
    """Shape after warmup; the default is cosine decay to `minLearningRate` after a warmup of 5% of the
    steps. Hugging Face shapes: linear, cosine, cosine_with_restarts, cosine_with_min_lr,
    polynomial, constant, constant_with_warmup, inverse_sqrt, warmup_stable_decay. Ours: step (multiply by
    `gamma` every `stepSize` steps), exponential (multiply by `gamma` per step), cyclical (triangular
    between `minLearningRate` and the learning rate, half-period `stepSize`)."""
    warmup_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Warmup length as a fraction of all steps. Exclusive with `warmupSteps`. When neither is set the
    warmup is 5% of the steps (`DEFAULT_WARMUP_RATIO`); set 0 for none."""
    warmup_steps: int | None = Field(default=None, ge=0, le=MAX_STEPS)
    """Warmup length in steps. Exclusive with `warmupRatio`."""
    min_learning_rate: float = Field(default=0.0, ge=0.0, le=10.0)
    """Floor under the schedule (e.g. 3e-4 decaying to 1e-7); also the low end of `cyclical`."""
    num_cycles: float | None = Field(default=None, gt=0.0, le=1000.0)
    """cosine: half-waves (default 0.5); cosine_with_restarts: hard restarts (default 1)."""
    power: float = Field(default=1.0, gt=0.0, le=100.0)
    """polynomial: decay exponent."""
    step_size: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    """step: steps between drops; cyclical: half-period (default: a tenth of training)."""
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    """step: factor per drop; exponential: factor per step is `gamma ** (1 / decay steps)`."""
    decay_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """warmup_stable_decay: fraction of training spent in the final decay."""

    def warmup_ratio_or_default(self) -> float | None:
        """The warmup ratio to use: the set one, none when `warmupSteps` is set, else the 5% default."""
        if self.warmup_ratio is not None or self.warmup_steps is not None:
            return self.warmup_ratio
        return DEFAULT_WARMUP_RATIO


RuleName = Literal["ceiling", "steepest", "valley", "minimum-over-10", "max-over-3"]
SUGGESTION_RULES: tuple[str, ...] = get_args(RuleName)
"""Every range-test rule name (the trainer reports each rule's suggestion under its name)."""


class RangeTestSpec(Spec):
    """Learning-rate range test: ramp the LR up over a short run and read the loss curve."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.minLearningRate) || !has(self.maxLearningRate)"
            " || self.minLearningRate < self.maxLearningRate",
            message="rangeTest.minLearningRate must be below rangeTest.maxLearningRate",
            check=lambda s: (
                s.min_learning_rate is None
                or s.max_learning_rate is None
                or s.min_learning_rate < s.max_learning_rate
            ),
        ),
    ]

    min_learning_rate: float | None = Field(default=None, gt=0.0, le=10.0)
    """Where the ramp starts; unset: 100x below the model's prior learning rate (family, width, adapter)."""
    max_learning_rate: float | None = Field(default=None, gt=0.0, le=10.0)
    """Where the ramp is planned to end; unset: 10x above the prior. With `extend` the ramp goes on past
    it, at the same steps per decade, until the loss diverges."""
    steps: int = Field(default=60, ge=10, le=10000)
    """Optimiser steps from `minLearningRate` to `maxLearningRate` (an extension adds steps)."""
    extend: bool = True
    """Keep ramping past `maxLearningRate` (up to `ceilingLearningRate`) until the loss diverges, so a window
    set too low never decides the answer."""
    ceiling_learning_rate: float = Field(default=10.0, gt=0.0, le=100.0)
    """Highest learning rate an extended ramp may reach."""
    mode: Literal["exponential", "linear"] = "exponential"
    """Ramp shape; exponential spends equal steps per decade."""
    smoothing: float = Field(default=0.1, gt=0.0, le=1.0)
    """Weight of the newest loss in the bias-corrected exponential moving average (1 = no smoothing)."""
    divergence_factor: float = Field(default=4.0, gt=1.0, le=1000.0)
    """Stop once the smoothed loss exceeds this many times the best smoothed loss."""
    use_validation_loss: bool = False
    """Evaluate on a validation batch at each step instead of using the training loss (slower, less noisy)."""
    rule: RuleName = "ceiling"
    """Suggestion rule whose value becomes the recommendation of a `rangeTest` sweep; every rule's value
    is reported. `ceiling` (the default; the LR an `adaptive` sweep's trials start from: half a decade
    below the loss minimum and below the divergence edge) is the rule the LR-quality benchmark ranks
    first; `minimum-over-10` is fastai's `minimum`. A ramp whose loss never fell from its start by more
    than 0.5% trained nothing: every rule's value is noise, and the sweep fails `NothingTrained`."""
    widen_by_prior: bool = False
    """Widen the window so it spans 30x around the model's prior learning rate."""
    stop_past_minimum: float | None = Field(default=None, gt=0.0, le=10.0)
    """Stop the ramp once it has passed `maxLearningRate` and run this many decades past the smoothed loss's
    minimum without finding a lower one (stop reason `past-minimum`): the minimum is then known, and only
    the `rangeTest` rules read the curve above it. Unset: half a decade, or `adaptive.spacing` if wider, for
    the `adaptive` method (its trials sit below the minimum), off for `rangeTest` (the ramp runs until the
    loss diverges)."""


class AdaptiveSpec(Spec):
    """The adaptive recommender: a range test finds the divergence edge, short trials at log-spaced
    candidates below it find the basin, longer trials narrow it, and a parabola in log-LR picks the LR."""

    candidates: int = Field(default=3, ge=3, le=12)
    """Stage-1 trials: log-spaced learning rates from the ceiling down (half a decade below the range
    test's loss minimum, and `spacing` below its divergence edge). While the lowest is the best, two
    more go below it (`maxExtensions` times at most), so the first row can be short without losing reach."""
    spacing: float = Field(default=0.5, ge=0.1, le=2.0)
    """Decades between stage-1 candidates."""
    trial_steps: int | None = Field(default=None, ge=4, le=100000)
    """Optimiser steps of a stage-1 trial; unset: an eighth of `optimization.maxSteps` (at least 20; a
    fine-tune sized in epochs counts as the steps its range test counted), or 50 when no count is known."""
    finalists: int = Field(default=3, ge=2, le=8)
    """Stage-2 trials around the stage-1 fit's minimum, each `narrowingFactor` times longer."""
    narrowing_factor: float = Field(default=2.0, ge=1.0, le=16.0)
    """How many times longer a stage-2 trial runs than a stage-1 trial."""
    match_epochs: bool = True
    """Each trial trains on the share of the training examples that its length is of the fine-tune's
    (`optimization.maxSteps`), so it passes over its data as often as the fine-tune will: a short trial on
    the whole set sees each example once and never reaches the later epochs in which a high LR memorises
    (noisy labels, small sets). On a fine-tune of one epoch or less a trial still sees each example at
    most once, from a fixed subset. A fine-tune sized in epochs counts as the steps its range test
    counted (left alone where no count is known). Off: trials draw from the whole training set."""
    max_extensions: int = Field(default=3, ge=0, le=8)
    """How often stage 1 may add candidates past its lowest or highest one when the best trial sits there,
    and stage 2 a finalist past its end."""
    parallelism: int = Field(default=2, ge=1, le=64)
    """Trials running at once (Jobs in a cluster)."""
    max_fine_tunes: float = Field(default=2.0, gt=0.0, le=100.0)
    """The most optimiser steps the sweep spends, range test and trials together, in fine-tunes' worth
    (`optimization.maxSteps`, or, for a fine-tune sized in epochs, its steps as the range test counted
    them). Stage 1's first candidates always run; an extension runs only where it fits; stage 2's trials are
    shortened to fit, and skipped (stage 1 decides) where they would not be at least 1.5 times a stage-1
    trial's length. Raise it for more or longer trials on a short fine-tune."""


class EvaluationSpec(Spec):
    """When validation loss is measured."""

    every_steps: int = Field(default=50, ge=1, le=MAX_STEPS)
    """Evaluate every this many optimiser steps (and at the end)."""
    max_samples: int | None = Field(default=None, ge=1, le=MAX_SAMPLES)
    """Evaluate on at most this many validation examples."""


class EarlyStoppingSpec(Spec):
    """Stop when validation loss stops improving."""

    enabled: bool = False
    """Turn early stopping on."""
    patience: int = Field(default=3, ge=1, le=1000)
    """Evaluations without improvement before stopping."""
    min_delta: float = Field(default=0.0, ge=0.0, le=1e6)
    """Smallest drop in validation loss that counts as improvement."""


class CheckpointSpec(Spec):
    """Checkpoints: how often, how many, and whether the final model is saved."""

    every_steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    """Save a checkpoint every this many steps; a restarted run resumes from the newest one."""
    keep: int = Field(default=2, ge=1, le=100)
    """Checkpoints kept on disk (the oldest are removed); the best by validation loss is always kept too,
    beside the newest (so at least 2 while `finalModel` is best)."""
    save_final_model: bool = True
    """Save the final model (or adapter) to `<outputDir>/final`: the best checkpoint's weights by validation
    loss when there is validation data (see `finalModel`), else the last step's."""
    final_model: Literal["best", "last"] = "best"
    """Which weights `<outputDir>/final` holds when there is validation data: `best` (the checkpoint with
    the lowest validation loss, kept on disk beside the newest; Hugging Face `load_best_model_at_end`;
    needs `everySteps` to be a multiple of `evaluation.everySteps`, else the last step's are kept, with a
    warning) or `last` (the weights after the last step). The status names both checkpoints either way."""


class ArtifactSpec(Spec):
    """What the fine-tune leaves behind besides checkpoints: a merged model, a model card, a hub copy."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.pushToHub) || !self.pushToHub || has(self.hubModelId)",
            message="output.hubModelId is required when output.pushToHub is true (e.g. my-org/my-model)",
            check=lambda s: not s.push_to_hub or s.hub_model_id is not None,
        ),
    ]

    merge_adapter: bool = False
    """LoRA/QLoRA: also write the adapter merged into the base model to `<outputDir>/merged` (full weights
    that load without peft; a QLoRA adapter is merged into the base reloaded unquantized)."""
    push_to_hub: bool = False
    """Upload the final model (the merged one when `mergeAdapter` is set) and its model card to the
    Hugging Face Hub as `hubModelId`; needs a token (`hubTokenSecret`, HF_TOKEN for the trainer)."""
    hub_model_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", max_length=200)
    """Hub repository to push to, `owner/name`."""
    hub_private: bool = True
    """Create the hub repository as private (when it does not exist yet)."""


class TrackingSpec(Spec):
    """Experiment tracking of a fine-tune (Hugging Face `report_to`)."""

    report_to: Literal["none", "tensorboard", "mlflow"] = "none"
    """`tensorboard`: event files under `<outputDir>/runs` (on the output volume); `mlflow`: runs logged to
    the server in MLFLOW_TRACKING_URI (the FineTuneJob takes it from a Secret or ConfigMap). The trainer
    image needs the `tensorboard` or `mlflow` package."""
    run_name: str | None = Field(default=None, max_length=200)
    """Run name shown by the tracker; unset uses the output folder's name."""


# Rules over sections shared by every config that trains (TrainerConfig, LRSweep, FineTuneJob).
TRAINING_RULES: list[Rule] = [
    Rule(
        cel="self.model.task != 'sequence-classification' || has(self.dataset.labelField)",
        message="dataset.labelField is required when model.task is sequence-classification",
        check=lambda s: s.model.task != "sequence-classification" or s.dataset.label_field is not None,
    ),
    Rule(
        cel="!has(self.schedule.warmupSteps) || !has(self.optimization.maxSteps)"
        " || self.schedule.warmupSteps < self.optimization.maxSteps",
        message="schedule.warmupSteps must be below optimization.maxSteps (warmup longer than training)",
        check=lambda s: (
            s.schedule.warmup_steps is None
            or s.optimization.max_steps is None
            or s.schedule.warmup_steps < s.optimization.max_steps
        ),
    ),
]


class DistributedSpec(Spec):
    """How several processes (GPUs of one pod, or pods of a multi-node run) share the training."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """`ddp`: every process holds the whole model and averages gradients (the default); `fsdp`: parameters,
    gradients and optimiser state are sharded across processes, for models that do not fit on one GPU.
    Only matters when the world size (nodes x processes per node) is above 1; `fsdp` needs GPUs (accelerate
    shards CUDA processes only, so the trainer refuses it on CPU rather than quietly running DDP)."""


class TrainingSections(Spec):
    """The sections every config that trains shares: the trainer's config, LRSweep and FineTuneJob."""

    __rules__: ClassVar[list[Rule]] = TRAINING_RULES

    model: ModelSpec
    """The pretrained model."""
    dataset: DatasetSpec
    """The training (and validation) data."""
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    """Full fine-tune, LoRA/QLoRA, or top layers only: an LR found for one does not fit the others."""
    optimization: OptimizationSpec = Field(default_factory=OptimizationSpec)
    """Optimiser, batch size, training length, precision, divergence stop."""
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    """Warmup and decay of the learning rate (range tests use their own ramp)."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Validation cadence."""
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    """Data-parallel strategy when the run spans several processes (`torchrun`)."""


class TrainerConfig(TrainingSections):
    """Everything the trainer needs for `range-test`, `trial` and `train`."""

    range_test: RangeTestSpec = Field(default_factory=RangeTestSpec)
    """Range-test settings (used by `range-test`)."""
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    """Early stopping on validation loss."""
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpoint cadence and retention."""
    adaptive: AdaptiveSpec = Field(default_factory=AdaptiveSpec)
    """Adaptive-recommender settings (used by `recommend`)."""
    learning_rate: float | None = Field(default=None, gt=0.0, le=10.0)
    """Peak learning rate for `train` and `trial` (the CLI's `--learning-rate` overrides it)."""
    output_dir: str = Field(default="./output", min_length=1, max_length=MAX_PATH_LENGTH)
    """Where checkpoints, the final model, the full result and plots are written."""
    output: ArtifactSpec = Field(default_factory=ArtifactSpec)
    """Merged model and hub upload (used by `train`)."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment tracking (used by `train`)."""
    learning_rate_source: str | None = Field(default=None, max_length=1000)
    """Where the learning rate came from (e.g. `LRSweep my-sweep (adaptive, ...)`), recorded in the
    model card; the operator fills it in."""


# ---------------------------------------------------------------------------------------------- results


class ExitCode(enum.IntEnum):
    """The trainer's exit codes; the operator's pod failure policy keys on them."""

    OK = 0
    ERROR = 1
    BAD_CONFIG = 2
    DIVERGED = 3
    OUT_OF_MEMORY = 4
    INTERRUPTED = 5
    NO_RECOMMENDATION = 6


class CurvePoint(Spec):
    """One point of the range test's curve."""

    lr: float
    """Learning rate at this step."""
    loss: float
    """Smoothed loss at this step."""


CURVE_MAX = 200
"""Range-test curve points a range test's result and an LRSweep's status hold at most (the trainer thins its
curve evenly over the whole ramp to fit)."""


class EvalPoint(Spec):
    """A trial's validation loss at one step."""

    step: int = Field(ge=0)
    """Optimiser step of the evaluation."""
    eval_loss: float
    """Validation loss."""


MAX_EVALS = 16
"""Intermediate validation losses a trial reports and its status keeps: the latest ones."""


StopReason = Literal["completed", "diverged", "nan", "past-minimum"]
DIVERGED_STOPS: tuple[StopReason, ...] = ("diverged", "nan")
"""The stop reasons that mean the loss broke down (the divergence edge is where the ramp stopped)."""


class RangeTestResult(Spec):
    """What `range-test` reports."""

    kind: Literal["rangeTest"] = "rangeTest"
    """Result type tag."""
    recommended_learning_rate: float | None = None
    """The recommended learning rate (the value of `rule`), unset when no rule could decide."""
    rule: str
    """The rule the recommendation comes from."""
    suggestions: dict[str, float | None] = Field(default_factory=dict)
    """Every rule's suggestion by rule name (unset where a rule found nothing)."""
    curve: list[CurvePoint] = Field(default_factory=list, max_length=CURVE_MAX)
    """Downsampled (learning rate, smoothed loss) curve."""
    stop_reason: StopReason = "completed"
    """Why the ramp ended: it reached its last learning rate, the loss diverged or became NaN, or it ran
    `stopPastMinimum` decades past the loss minimum."""
    steps: int = Field(default=0, ge=0)
    """Steps the ramp ran."""
    fine_tune_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    """Optimiser steps of the fine-tune the config describes: `optimization.maxSteps`, else its epochs over
    the training data as the trainer counts them (an adaptive sweep sizes its trials and its
    `adaptive.maxFineTunes` budget from it)."""
    best_loss: float | None = None
    """Lowest smoothed loss seen."""
    effective_batch_size: int = Field(default=1, ge=1)
    """Examples per optimiser update during the test: scale the LR from here for other batch sizes."""
    world_size: int = Field(default=1, ge=1)
    """Processes the test ran on (its effective batch size counts each one's batch)."""
    adapter: str = "none"
    """Adapter type the test ran with (a LoRA LR does not transfer to a full fine-tune)."""
    warnings: list[str] = Field(default_factory=list, max_length=16)
    """Sanity-check warnings (e.g. far from the model family's usual learning rate)."""
    min_learning_rate: float | None = None
    """Where the ramp started."""
    max_learning_rate: float | None = None
    """The highest learning rate the ramp reached (past the planned end when it was extended)."""
    divergence_learning_rate: float | None = None
    """The divergence edge: the first LR past the loss minimum where the smoothed loss climbed back above
    its start, or where the ramp stopped on divergence; unset when the loss never turned up, or never fell
    from its start by more than the noise floor (a rise of a loss that has not come down is noise)."""
    loss_minimum_learning_rate: float | None = None
    """Where the smoothed loss bottomed out (the smoothing's start-up skipped): the vertex of a parabola in
    log-LR through the ramp's points within half a decade of its lowest one, read from every step of the
    ramp, not from the thinned `curve`: an adaptive sweep's trials stay half a decade below it. Unset while
    the loss has not fallen from its start by more than the noise floor (0.5%): nothing has trained yet."""
    prior_learning_rate: float | None = None
    """The model's prior learning rate (family, width and adapter) the window was centred on."""
    baseline_loss: float | None = None
    """Classification: the entropy of the validation labels, the lowest loss that a prediction ignoring the
    input scores (adaptive trials not below it learned nothing); unset for a causal LM."""

    @property
    def diverged(self) -> bool:
        """Whether the loss broke down before the ramp ended."""
        return self.stop_reason in DIVERGED_STOPS


class TrialResult(Spec):
    """What `trial` reports: one short fine-tune at one learning rate."""

    kind: Literal["trial"] = "trial"
    """Result type tag."""
    learning_rate: float
    """The learning rate tried."""
    eval_loss: float | None = None
    """Final validation loss (unset when the run diverged)."""
    train_loss: float | None = None
    """Mean training loss over the last steps."""
    steps: int = Field(default=0, ge=0)
    """Optimiser steps run."""
    diverged: bool = False
    """True when the loss became NaN/inf or exploded."""
    effective_batch_size: int = Field(default=1, ge=1)
    """Examples per optimiser update."""
    evals: list[EvalPoint] = Field(default_factory=list, max_length=MAX_EVALS)
    """Validation losses at the evaluation steps, the final one included (the latest 16): what a
    pruner compares running trials against."""
    world_size: int = Field(default=1, ge=1)
    """Processes the trial ran on."""


class TrainResult(Spec):
    """What `train` reports."""

    kind: Literal["train"] = "train"
    """Result type tag."""
    learning_rate: float
    """Peak learning rate used."""
    steps: int = Field(default=0, ge=0)
    """Optimiser steps completed."""
    total_steps: int = Field(default=0, ge=0)
    """Optimiser steps planned."""
    epochs: float = 0.0
    """Epochs completed."""
    train_loss: float | None = None
    """Mean training loss."""
    eval_loss: float | None = None
    """Final validation loss."""
    best_eval_loss: float | None = None
    """Best validation loss seen."""
    best_checkpoint: str | None = None
    """The checkpoint with the lowest validation loss, relative to the output directory."""
    last_checkpoint: str | None = None
    """The newest checkpoint (the last step saved), relative to the output directory."""
    final_model: str | None = None
    """Where the final model (or adapter) was saved, relative to the output directory."""
    final_model_from: Literal["best", "last"] | None = None
    """Whose weights the final model holds: the best checkpoint's or the last step's."""
    merged_model: str | None = None
    """Where the adapter merged into the base model was saved, relative to the output directory."""
    model_card: str | None = None
    """The model card (README.md), relative to the output directory."""
    hub_url: str | None = None
    """The hub repository the model was pushed to."""
    early_stopped: bool = False
    """True when early stopping ended the run."""
    resumed_from_step: int | None = None
    """Step of the checkpoint this run resumed from, if any."""
    runtime_seconds: float | None = None
    """Wall time of this run."""
    effective_batch_size: int = Field(default=1, ge=1)
    """Examples per optimiser update: per-device batch x accumulation x world size."""
    world_size: int = Field(default=1, ge=1)
    """Processes the run trained on (nodes x processes per node)."""


EvidenceReason = Literal[
    "Fitted",
    "BestTrial",
    "FlatCurve",
    "BestAtLowerEdge",
    "BestAtUpperEdge",
    "AllTrialsDiverged",
    "NothingTrained",
    "DivergedAtMinimumLearningRate",
    "OutsideTestedWindow",
    "NoEdge",
]
WEAK_EVIDENCE: tuple[str, ...] = (
    "FlatCurve",
    "BestAtLowerEdge",
    "BestAtUpperEdge",
    "AllTrialsDiverged",
    "NothingTrained",
    "DivergedAtMinimumLearningRate",
    "OutsideTestedWindow",
)
"""Evidence reasons under which a recommendation must not be trained with unchecked."""


class TrialRecord(Spec):
    """One trial of the adaptive recommender: a short fine-tune at one LR, judged after its decay."""

    stage: int = Field(ge=1, le=2)
    """1: a candidate at or below the ceiling; 2: a longer finalist around the stage-1 minimum."""
    index: int = Field(ge=0, le=63)
    """Trial number within its stage."""
    learning_rate: float = Field(gt=0.0)
    """Peak learning rate tried."""
    steps: int = Field(ge=0)
    """Optimiser steps the trial ran."""
    eval_loss: float | None = None
    """Validation loss after the trial's decay (unset when it diverged or failed)."""
    diverged: bool = False
    """True when the loss became NaN/inf or exploded."""


class LossFit(Spec):
    """The parabola ``loss = a x^2 + b x + c`` in ``x = log10(learning rate)`` through the best points."""

    a: float
    """Curvature (positive: a basin)."""
    b: float
    """Linear term."""
    c: float
    """Constant term."""
    low_learning_rate: float
    """Lowest learning rate among the fitted points."""
    high_learning_rate: float
    """Highest learning rate among the fitted points."""
    points: int = Field(ge=3)
    """Trials fitted."""
    noise: float = Field(ge=0.0)
    """Loss noise assumed for the interval: the fit's residual, or a floor of 0.5% of the best loss."""


class Interval(Spec):
    """Learning rates whose predicted loss is within noise of the best."""

    low: float = Field(gt=0.0)
    """Lowest such learning rate."""
    high: float = Field(gt=0.0)
    """Highest such learning rate."""


class Recommendation(Spec):
    """What the adaptive stages decided; the same in `recommend`'s result and an LRSweep's status."""

    recommended_learning_rate: float | None = None
    """The recommended peak learning rate (unset when the evidence supports none)."""
    interval: Interval | None = None
    """Learning rates within noise of the recommendation's predicted loss."""
    decided_by: str = "fit"
    """Which stage decided: `stage-2-fit`, `stage-2-horizon` (the stage-2 fit moved to the fine-tune's
    length), `stage-2-best`, `stage-1-fit`, `stage-1-best`, or `range-test` (it ended the sweep before any
    trial)."""
    evidence: EvidenceReason = "Fitted"
    """How well the trials support the recommendation; see `WEAK_EVIDENCE`."""
    message: str = ""
    """The evidence in words, naming the bound to move when the evidence is weak."""
    fit: LossFit | None = None
    """The parabola that decided (unset when a best trial decided)."""
    best_loss: float | None = None
    """Best validation loss among the deciding stage's trials."""

    @property
    def weak(self) -> bool:
        return self.evidence in WEAK_EVIDENCE

    @property
    def trusted(self) -> bool:
        """A learning rate on evidence that supports it: what an LRSweep reports as Succeeded."""
        return self.recommended_learning_rate is not None and not self.weak


class RecommendResult(Recommendation):
    """What `recommend` reports: the recommendation, its evidence, and the compute it spent."""

    kind: Literal["recommend"] = "recommend"
    """Result type tag."""
    method: Literal["adaptive"] = "adaptive"
    """The recommender."""
    trials: list[TrialRecord] = Field(default_factory=list, max_length=64)
    """Every trial, in the order they were planned."""
    range_test: RangeTestResult | None = None
    """The range-test stage (its curve finds the divergence edge)."""
    steps_spent: int = Field(default=0, ge=0)
    """Optimiser steps spent on the range test and every trial together."""
    effective_batch_size: int = Field(default=1, ge=1)
    """Examples per optimiser update the recommendation was made at."""
    world_size: int = Field(default=1, ge=1)
    """Processes the recommendation was found at."""
    adapter: str = "none"
    """Adapter type the recommendation was made with."""
    warnings: list[str] = Field(default_factory=list, max_length=16)
    """Notes about the evidence."""


class ErrorResult(Spec):
    """What every command reports when it fails: the exit code's name and the one-line error."""

    kind: Literal["error"] = "error"
    """Result type tag."""
    exit_code: int
    """The process exit code (see `ExitCode`)."""
    reason: str
    """The exit code's name (e.g. `BAD_CONFIG`, `DIVERGED`)."""
    error: str = Field(max_length=3800)
    """What went wrong and, for configuration errors, the field and the fix."""


TrainerResult = RangeTestResult | TrialResult | TrainResult | RecommendResult | ErrorResult


def parse_result(data: dict[str, Any]) -> TrainerResult:
    """Read any result by its `kind` tag."""
    kinds: dict[str, type[Spec]] = {
        "rangeTest": RangeTestResult,
        "trial": TrialResult,
        "train": TrainResult,
        "recommend": RecommendResult,
        "error": ErrorResult,
    }
    kind = data.get("kind")
    if kind not in kinds:
        raise ValueError(f"result.kind must be one of {sorted(kinds)}, got {kind!r}")
    return kinds[kind].model_validate(data)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- progress
# What a trainer prints on stdout (its pod's log): one JSON object per line, `{"event": …, "t": …, …}`.

STEP_EVENT = "step"
"""A logged optimiser step: `step`, `totalSteps`, `loss`, `learningRate` (range test: `smoothedLoss`)."""
EVAL_EVENT = "eval"
"""A validation: `step`, `evalLoss`."""


# ---------------------------------------------------------------------------------------------- metrics
# What a running trainer serves and the operator polls: one definition for both sides.

TRAINER_METRICS_PORT = 9400
"""Port a trainer serves Prometheus metrics on: its `--metrics-port` default, the trainer Job's container
port and the operator's `--trainer-metrics-port` default."""
TRAINER_METRIC_PREFIX = "finetune_trainer_"
TRAINER_GAUGES: tuple[str, ...] = (
    "step",
    "total_steps",
    "learning_rate",
    "loss",
    "smoothed_loss",
    "eval_loss",
    "eval_step",
    "samples_per_second",
    "tokens_per_second",
    "epoch",
)
"""The trainer's progress gauges by field name; each is served as `trainer_series(field)` with a `command`
label (`range-test`, `trial`, `train`)."""
TRAINER_PHASE_GAUGE = "phase"
"""The gauge that is 1 for the trainer's current phase and 0 for the others (label `phase`)."""
TRAINER_PHASES: tuple[str, ...] = (
    "loading",
    "range_test",
    "training",
    "evaluating",
    "saving",
    "done",
    "failed",
)
"""Values of the trainer phase gauge's `phase` label."""


def trainer_series(field: str) -> str:
    """The Prometheus series name of one of the trainer's gauges (e.g. `step` -> `finetune_trainer_step`)."""
    if field not in (*TRAINER_GAUGES, TRAINER_PHASE_GAUGE):
        raise ValueError(f"no trainer gauge {field!r}; expected one of {TRAINER_GAUGES}")
    return TRAINER_METRIC_PREFIX + field
