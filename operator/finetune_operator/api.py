"""The v1alpha1 API: LRSweep and FineTuneJob as pydantic models, the single source of the CRDs and docs.

Sub-structures shared with the trainer (model, dataset, adapter, optimisation, schedule, range test, …) are
the trainer's own config models, reused here. Field docs become `kubectl explain` text.

One file over the ~400-line mark on purpose: it is the API's reference, read top to bottom like the CRDs
it generates (pod settings, status parts, LRSweep, FineTuneJob, kinds), and most of its lines are the
field docs users read in `kubectl explain`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field

from finetune_operator import naming
from finetune_trainer.config import (
    API_GROUP,
    CURVE_MAX,
    HAS_VALIDATION,
    MAX_EVALS,
    MAX_SEED,
    MAX_STEPS,
    TRAINING_RULES,
    AdaptiveSpec,
    ArtifactSpec,
    CheckpointSpec,
    CurvePoint,
    EarlyStoppingSpec,
    EvalPoint,
    EvidenceReason,
    Interval,
    LossFit,
    RangeTestSpec,
    Rule,
    Spec,
    TrackingSpec,
    TrainingSections,
)

VERSION = "v1alpha1"
API_VERSION = f"{API_GROUP}/{VERSION}"

# ---------------------------------------------------------------------------------------------- pod settings
# Kubernetes' own name grammars (apimachinery's validation), so the API server refuses at admission what it
# would otherwise refuse later, on the trainer Job.

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""An object name (Secret, PVC, service account, LRSweep)."""
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$"
"""A label key or taint key: an optional DNS prefix and `/`, then at most 63 name characters."""
LABEL_VALUE = rf"^({_LABEL_NAME})?$"
"""A label value or taint value: empty or at most 63 name characters."""
INT32_MAX = 2**31 - 1
# Status strings are bounded like the spec's, so whoever writes a status (the operator, an admin) cannot store
# one the tools reading it would choke on. The operator clips what it writes to these (`planning.status`).
MESSAGE_MAX = 32768
"""A status or condition message: metav1.Condition's bound."""
TEXT_MAX = 4096
"""Text the trainer reports (a path, a URL, a warning): its whole termination message is at most 4 KiB."""
NAME_MAX = 253
"""An object name."""
TIME_MAX = 64
"""An RFC 3339 timestamp."""
TRIALS_MAX = 64
"""The most trials one sweep runs: each keeps its full entry in the status."""


def _matches(pattern: str, text: str | None) -> bool:
    return text is None or re.fullmatch(pattern, text) is not None


class Toleration(Spec):
    """A Kubernetes toleration, copied to trainer pods."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="resources.tolerations[].value must be empty when operator is Exists: remove value, "
            "or use operator Equal",
            check=lambda t: t.operator != "Exists" or not t.value,
        ),
        Rule(
            cel="self.operator == 'Exists' || (has(self.key) && self.key != '')",
            message="resources.tolerations[].key is required unless operator is Exists: set a key, or "
            "operator Exists to tolerate every taint",
            check=lambda t: t.operator == "Exists" or bool(t.key),
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="resources.tolerations[].tolerationSeconds applies only to effect NoExecute: set effect "
            "NoExecute, or remove tolerationSeconds",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    ]

    key: str | None = Field(default=None, max_length=317, pattern=LABEL_KEY)
    """Taint key to tolerate (empty with operator Exists tolerates everything)."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """How `value` is compared."""
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE)
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; unset matches every effect."""
    toleration_seconds: int | None = Field(default=None, ge=0, le=INT32_MAX)
    """With NoExecute: how long the pod stays bound after the taint appears."""


class ResourcesSpec(Spec):
    """What each trainer pod asks for and where it may run."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel=f"!has(self.nodeSelector) || self.nodeSelector.all(k, k.matches(r'{LABEL_KEY}')"
            f" && self.nodeSelector[k].matches(r'{LABEL_VALUE}'))",
            message="resources.nodeSelector needs label keys ([dns-prefix/]name, the name at most 63 of "
            "A-Z a-z 0-9 - _ . and alphanumeric at both ends) and label values (empty or such a name): "
            "fix the entry",
            check=lambda s: all(
                _matches(LABEL_KEY, k) and len(k) <= 317 and _matches(LABEL_VALUE, v)
                for k, v in (s.node_selector or {}).items()
            ),
        ),
    ]

    gpus: int = Field(default=1, ge=0, le=64)
    """`nvidia.com/gpu` per trainer pod (0 runs on CPU)."""
    nodes: int = Field(default=1, ge=1, le=naming.MAX_NODES)
    """Pods (nodes) one trainer run spans: above 1, an Indexed Job of that many pods and a headless Service
    run `torchrun` with c10d rendezvous on pod 0, `gpus` processes per pod (one on CPU, gloo); checkpoints
    then go to the shared `output.persistentVolumeClaim`, which is required."""
    cpu: str | None = Field(default=None, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    """CPU request and limit (e.g. `4` or `500m`); unset uses the operator's default."""
    memory: str | None = Field(default=None, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?)?$")
    """Memory request and limit (e.g. `32Gi`); unset uses the operator's default."""
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(default=None, max_length=64)
    """Node labels the trainer pods must match (e.g. a GPU type)."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)
    """Tolerations for tainted GPU nodes."""


class SecretKeyRef(Spec):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Secret name."""
    key: str = Field(default="token", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key within the Secret."""


class ConfigMapKeyRef(Spec):
    """A key of a ConfigMap in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253)
    """ConfigMap name."""
    key: str = Field(min_length=1, max_length=253)
    """Key within the ConfigMap."""


class SourceVolumeSpec(Spec):
    """A PersistentVolumeClaim holding models and data, mounted read-only into every trainer pod."""

    persistent_volume_claim: str = Field(min_length=1, max_length=253)
    """An existing PVC (ReadOnlyMany or ReadWriteMany to share it across trials) with model folders
    (config.json + weights + tokenizer) and data files."""
    mount_path: str = Field(default="/sources", pattern=r"^/[^:]*$", max_length=1024)
    """Where it is mounted; point `model.name` and `dataset.files` below it (e.g. `/sources/models/m`)."""
    sub_path: str | None = Field(default=None, max_length=1024)
    """Folder inside the claim to mount instead of its root."""


class ModelCacheSpec(Spec):
    """A shared, writable Hugging Face cache (HF_HOME) so trials and fine-tunes download a model once."""

    persistent_volume_claim: str = Field(min_length=1, max_length=253)
    """An existing ReadWriteMany PVC (ReadWriteOnce works while all pods land on one node) used as HF_HOME;
    without one, each pod downloads into its own emptyDir."""
    sub_path: str | None = Field(default=None, max_length=1024)
    """Folder inside the claim; unset uses its root."""


class OutputSpec(Spec):
    """Where checkpoints and the final model go."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.subPath) || (!self.subPath.startsWith('/')"
            " && !self.subPath.matches(r'(^|/)\\.\\.(/|$)'))",
            message="output.subPath must be a relative folder inside the claim, without a leading '/' or "
            "'..' parts: write it relative to the claim's root",
            check=lambda s: (
                s.sub_path is None or (not s.sub_path.startswith("/") and ".." not in s.sub_path.split("/"))
            ),
        ),
    ]

    persistent_volume_claim: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN
    )
    """An existing PVC mounted at /output; without one, output lives in an emptyDir and is lost with the
    pod (retries then start from scratch)."""
    sub_path: str | None = Field(default=None, max_length=1024)
    """Folder inside the claim; each trainer Job writes below it in a folder of its own (`range-test`,
    `train`, `trial-<i>`, `s<stage>-trial-<i>`). Defaults to `<kind>/<name>/<uid>`, so a re-created
    resource starts afresh; set it to share one folder across resources (a retry resumes from its
    checkpoints)."""


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A Kueue LocalQueue name (at most 63 characters)."""
RESERVED_POD_KEYS = ("finetune.dev/", "kueue.x-k8s.io/", "batch.kubernetes.io/")
"""Label and annotation prefixes the operator, Kueue and the Job controller set on trainer pods."""


def _pod_metadata_rule(field: str, values: str, value_check: Any) -> Rule:
    """`podLabels`/`podAnnotations`: label keys outside `RESERVED_POD_KEYS`; values per `values`."""
    prefixes = " || ".join(f"k.startsWith('{p}')" for p in RESERVED_POD_KEYS)
    value_cel = f" && self.{field}[k].matches(r'{LABEL_VALUE}')" if values == "label" else ""
    return Rule(
        cel=f"!has(self.{field}) || self.{field}.all(k, k.matches(r'{LABEL_KEY}') && !({prefixes})"
        f"{value_cel})",
        message=f"{field} keys must be label keys ([dns-prefix/]name, the name at most 63 of A-Z a-z 0-9 - _ "
        f". and alphanumeric at both ends) outside {', '.join(RESERVED_POD_KEYS)} (the operator, Kueue and "
        "the Job controller set those: use queueName and priorityClassName)"
        + (", and values empty or such a name" if values == "label" else "")
        + ": fix the entry",
        check=lambda s: all(
            _matches(LABEL_KEY, k)
            and len(k) <= 317
            and not k.startswith(RESERVED_POD_KEYS)
            and value_check(v)
            for k, v in (getattr(s, "pod_" + field[3:].lower()) or {}).items()
        ),
    )


class LocalObjectReference(Spec):
    """The name of an object in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Object name."""


class WorkloadSpec(Spec):
    """Fields every resource that runs trainer pods shares."""

    __rules__: ClassVar[list[Rule]] = [
        _pod_metadata_rule("podLabels", "label", lambda v: _matches(LABEL_VALUE, v)),
        _pod_metadata_rule("podAnnotations", "any", lambda v: True),
        Rule(
            cel="!has(self.queueName) || !has(self.suspend) || self.suspend",
            message="queueName hands the start of trainer Jobs to Kueue, which unsuspends them when it "
            "admits them; suspend: false contradicts that: remove suspend (or set it to true to pause the "
            "run)",
            check=lambda s: s.queue_name is None or s.suspend is not False,
        ),
    ]

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """GPUs, CPU, memory and placement of trainer pods."""
    image: str | None = Field(default=None, max_length=1024)
    """Trainer image; unset uses the operator's default."""
    service_account_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """Service account of trainer pods (its token is never mounted)."""
    hub_token_secret: SecretKeyRef | None = None
    """Secret holding a Hugging Face token, passed to the trainer as HF_TOKEN: private or gated models and
    datasets, and `output.pushToHub`."""
    source_volume: SourceVolumeSpec | None = None
    """A read-only PVC with models and data, mounted at `sourceVolume.mountPath` in every trainer pod."""
    model_cache: ModelCacheSpec | None = None
    """A PVC shared as the Hugging Face cache (HF_HOME), so trials reuse downloads; unset: an emptyDir."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """Where checkpoints and models are written."""
    suspend: bool | None = None
    """Pause the run (the one spec field that may change): true suspends its trainer Jobs, whose pods are
    deleted; false or unset resumes them, and a resumed fine-tune continues from its last checkpoint on
    `output.persistentVolumeClaim`. Jobs a Kueue queue manages are paused by deactivating their Kueue
    Workload and resumed by re-activating it (Kueue re-admits them). With `queueName`, leave it unset or
    true: `false` is refused."""
    queue_name: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS_LABEL)
    """Kueue LocalQueue of the trainer Jobs (the `kueue.x-k8s.io/queue-name` label); unset uses the
    operator's default queue, if it has one. Queued Jobs are created suspended and Kueue unsuspends them
    when it admits them (as one workload: all pods of a Job or none)."""
    priority_class_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """PriorityClass of trainer pods (Kueue also orders and preempts queued Jobs by it)."""
    pod_labels: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(default=None, max_length=32)
    """Extra labels on trainer pods (e.g. cost centre, team); `finetune.dev/`, `kueue.x-k8s.io/` and
    `batch.kubernetes.io/` keys are the operator's, Kueue's and the Job controller's."""
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=32
    )
    """Extra annotations on trainer pods (same reserved prefixes as `podLabels`)."""
    image_pull_secrets: list[LocalObjectReference] | None = Field(default=None, max_length=16)
    """Secrets for pulling the trainer image from a private registry."""
    backoff_limit: int = Field(default=2, ge=0, le=100)
    """Retries of a trainer pod after evictions or out-of-memory; bad configs and divergence never retry.
    A multi-node run retries its whole group this many times (its Job allows this x (nodes + 1) pod
    failures)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Fail a trainer Job that runs longer than this."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=INT32_MAX)
    """Delete finished trainer Jobs and their pods this long after they end (the resource keeps their
    results). The operator sets it on each Job once the status holds the Job's result, so a short TTL
    never loses one."""


# ---------------------------------------------------------------------------------------------- status parts


class Condition(Spec):
    """A Kubernetes-style condition."""

    type: str = Field(max_length=316)
    """Condition type: Ready (True once Succeeded), Reconciling, Stalled, Succeeded, Failed, Diverged,
    WaitingForSweep, ApplyFailed."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(max_length=1024)
    """CamelCase reason for the last transition."""
    message: str = Field(default="", max_length=MESSAGE_MAX)
    """Human-readable details."""
    last_transition_time: str = Field(max_length=TIME_MAX)
    """When `status` last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The spec generation this condition was computed from."""


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}

Phase = Literal["Pending", "WaitingForSweep", "Sweeping", "Running", "Succeeded", "Failed"]
"""A FineTuneJob's phases; an LRSweep takes those of `SweepPhase`."""
SweepPhase = Literal["Pending", "Running", "Succeeded", "Failed"]
"""An LRSweep's phases: it never waits for a sweep."""


class Progress(Spec):
    """Live progress of the running trainer (polled from its metrics)."""

    step: int = Field(default=0, ge=0)
    """Optimiser steps done."""
    total_steps: int | None = Field(default=None, ge=0)
    """Optimiser steps planned."""
    percent: int = Field(default=0, ge=0, le=100)
    """Steps done as a percentage."""
    epoch: float | None = Field(default=None, ge=0.0)
    """Epochs done."""
    learning_rate: float | None = Field(default=None, ge=0.0)
    """Current learning rate."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest validation loss."""
    samples_per_second: float | None = Field(default=None, ge=0.0)
    """Training throughput."""
    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds to finish."""
    last_step_time: str | None = Field(default=None, max_length=TIME_MAX)
    """When the step count last increased (RFC 3339)."""


class ResourceStatus(Spec):
    """Status fields both kinds share."""

    phase: Phase = "Pending"
    """Pending, WaitingForSweep, Sweeping, Running, Succeeded or Failed."""
    message: str | None = Field(default=None, max_length=MESSAGE_MAX)
    """The latest noteworthy event, in words."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=16, json_schema_extra=CONDITIONS_SCHEMA_EXTRA
    )
    """Ready is True once the resource Succeeded (its result can be used); Reconciling is True while it
    works; Stalled is True when it failed or needs a person; Succeeded, Failed, Diverged, WaitingForSweep
    and ApplyFailed say why."""
    observed_generation: int | None = None
    """The spec generation the status describes."""
    start_time: str | None = Field(default=None, max_length=TIME_MAX)
    """When the first trainer Job was created."""
    completion_time: str | None = Field(default=None, max_length=TIME_MAX)
    """When the resource reached Succeeded or Failed."""
    progress: Progress | None = None
    """Live progress of the running trainer."""


# ---------------------------------------------------------------------------------------------- LRSweep


class FloatRange(Spec):
    """A continuous range of a searched parameter."""

    min: float
    """Lowest value."""
    max: float
    """Highest value."""
    log: bool = False
    """Sample on a log scale (needs min > 0)."""


class IntRange(Spec):
    """An integer range of a searched parameter."""

    min: int = Field(ge=1)
    """Lowest value."""
    max: int = Field(ge=1)
    """Highest value."""


def _range_rules(field: str, log: bool | None) -> list[Rule]:
    """Rules of one range field: min below max, and a log range above 0 (`log` True: always log)."""
    attr = "".join("_" + c.lower() if c.isupper() else c for c in field)
    rules = [
        Rule(
            cel=f"!has(self.{field}) || self.{field}.min < self.{field}.max",
            message=f"searchSpace.{field}.min must be below searchSpace.{field}.max",
            check=lambda s: (r := getattr(s, attr)) is None or r.min < r.max,
        )
    ]
    if log is not False:
        when = "" if log else f"!self.{field}.log || "
        rules.append(
            Rule(
                cel=f"!has(self.{field}) || {when}self.{field}.min > 0.0",
                message=f"searchSpace.{field} is searched on a log scale: its min must be above 0",
                check=lambda s: (r := getattr(s, attr)) is None or not (log or r.log) or r.min > 0,
            )
        )
    return rules


SEARCHED = ("learningRate", "warmupRatio", "weightDecay", "batchSize", "loraR", "loraAlpha", "maxSteps")
"""Parameters a search space may hold (camelCase, as in the spec and in each trial's `params`)."""


class SearchSpace(Spec):
    """The parameters a grid, random or bayesian sweep searches; unset ones stay as the recipe fixes them."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel=" || ".join(f"has(self.{f})" for f in SEARCHED),
            message="searchSpace needs at least one parameter",
            check=lambda s: any(v is not None for v in s.model_dump().values()),
        ),
        *_range_rules("learningRate", True),
        *_range_rules("warmupRatio", None),
        *_range_rules("weightDecay", None),
        *_range_rules("maxSteps", False),
    ]

    learning_rate: FloatRange | None = None
    """Peak learning rate, always searched on a log scale."""
    warmup_ratio: FloatRange | None = None
    """schedule.warmupRatio."""
    weight_decay: FloatRange | None = None
    """optimization.weightDecay."""
    batch_size: list[int] | None = Field(default=None, min_length=1, max_length=16)
    """optimization.batchSize choices (categorical)."""
    lora_r: list[int] | None = Field(default=None, min_length=1, max_length=16)
    """adapter.r choices (LoRA rank)."""
    lora_alpha: list[int] | None = Field(default=None, min_length=1, max_length=16)
    """adapter.alpha choices."""
    max_steps: IntRange | None = None
    """Optimiser steps per trial (instead of `steps`)."""


class PrunerSpec(Spec):
    """Stop trials early whose intermediate validation loss is poor (Optuna's pruners)."""

    type: Literal["median", "successiveHalving", "hyperband", "none"] = "median"
    """`median`: stop a trial worse than the median of earlier trials at the same step; `successiveHalving`
    and `hyperband`: keep the best fraction at each rung; `none`: run every trial to its end. `median` is
    the default by measurement (benchmarks/results/sweep_search.md: TPE on two tiny-LM tasks, learning rate
    x warmup ratio, at a 3x3 grid's compute): the best mean loss and rank of the pruners, 0.94x the steps,
    half the trials pruned; successive halving spent least (0.68x) but found worse trials."""
    eval_every_steps: int | None = Field(default=None, ge=1)
    """Validation cadence of trials, in steps (the intermediate values); default a quarter of a trial."""
    startup_trials: int = Field(default=3, ge=0, le=64)
    """Median: trials that finish before any is pruned."""
    warmup_steps: int = Field(default=0, ge=0)
    """Median: steps of a trial before it may be pruned."""


class TrialsSpec(Spec):
    """Grid, random or bayesian sweeps: short fine-tunes compared by validation loss. Without a
    `searchSpace` the learning rate alone is searched (explicit `learningRates`, or the min/max window)."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="has(self.learningRates) || self.minLearningRate < self.maxLearningRate",
            message="trials.minLearningRate must be below trials.maxLearningRate",
            check=lambda s: s.learning_rates is not None or s.min_learning_rate < s.max_learning_rate,
        ),
    ]

    learning_rates: list[Annotated[float, Field(gt=0.0, le=10.0)]] | None = Field(
        default=None, min_length=2, max_length=TRIALS_MAX
    )
    """Explicit learning rates to try (grid only); otherwise `count` log-spaced values in the window."""
    min_learning_rate: float = Field(default=1e-6, gt=0.0, le=10.0)
    """Lowest learning rate of the window."""
    max_learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0)
    """Highest learning rate of the window."""
    count: int = Field(default=6, ge=2, le=TRIALS_MAX)
    """How many trials (grid: log-spaced; random: log-uniform draws)."""
    steps: int = Field(default=50, ge=1, le=100000)
    """Optimiser steps per trial."""
    parallelism: int = Field(default=2, ge=1, le=64)
    """Trials running at once."""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    """Seed of the sampler (random draws, grid order, TPE)."""
    search_space: SearchSpace | None = None
    """Parameters to search (grid: every combination; ranges are then cut into `count` points)."""
    max_trials: int | None = Field(default=None, ge=1, le=TRIALS_MAX)
    """Trials of a random or bayesian sweep (default `count`); a grid runs each point once."""
    objective: Literal["evalLoss"] = "evalLoss"
    """What a trial is judged by, minimised: the final validation loss."""
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    """Early stopping of poor trials on their intermediate validation loss (a pruned trial's Job is
    deleted; the status says Pruned, at which step and why)."""


SweepMethod = Literal["adaptive", "rangeTest", "grid", "random", "bayesian"]


def _conflict(searched: str, fixed: str) -> Rule:
    """A searched parameter may not also be fixed (set to other than its default) in the recipe."""
    section, key = fixed.split(".")
    attr = "".join("_" + c.lower() if c.isupper() else c for c in searched)
    fixed_attr = "".join("_" + c.lower() if c.isupper() else c for c in key)
    default = TrainingSections.model_fields[section].annotation.model_fields[fixed_attr].default  # type: ignore[union-attr]
    unset = "null" if default is None else repr(default)
    has_fixed = f"has(self.{fixed})" if default is None else f"has(self.{fixed}) && self.{fixed} != {unset}"
    return Rule(
        cel=f"!has(self.trials) || !has(self.trials.searchSpace) || !has(self.trials.searchSpace.{searched})"
        f" || !({has_fixed})",
        message=f"trials.searchSpace.{searched} is searched: remove the fixed {fixed}",
        check=lambda s: (
            s.trials.search_space is None
            or getattr(s.trials.search_space, attr) is None
            or getattr(getattr(s, section), fixed_attr) == default
        ),
    )


QLORA_NEEDS_GPU = Rule(
    cel="self.adapter.type != 'qlora' || self.resources.gpus > 0",
    message="adapter.type qlora needs a CUDA GPU: set resources.gpus to 1 or more, or use adapter.type lora "
    "on CPU",
    check=lambda s: s.adapter.type != "qlora" or s.resources.gpus > 0,
)
MULTI_NODE_NEEDS_PVC = Rule(
    cel="self.resources.nodes <= 1 || has(self.output.persistentVolumeClaim)",
    message="resources.nodes above 1 needs output.persistentVolumeClaim: every pod of the run writes and "
    "resumes from the same checkpoints, so set a ReadWriteMany claim (or use resources.nodes 1)",
    check=lambda s: s.resources.nodes <= 1 or s.output.persistent_volume_claim is not None,
)
MULTI_NODE_FSDP_NEEDS_GPU = Rule(
    cel="self.resources.nodes <= 1 || self.resources.gpus > 0 || self.distributed.strategy != 'fsdp'",
    message="distributed.strategy fsdp across resources.nodes above 1 needs GPUs: set resources.gpus to 1 "
    "or more, or use distributed.strategy ddp on CPU",
    check=lambda s: s.resources.nodes <= 1 or s.resources.gpus > 0 or s.distributed.strategy != "fsdp",
)
WORKLOAD_RULES: list[Rule] = [
    *TRAINING_RULES,
    QLORA_NEEDS_GPU,
    MULTI_NODE_NEEDS_PVC,
    MULTI_NODE_FSDP_NEEDS_GPU,
]


class LRSweepSpec(TrainingSections, WorkloadSpec):
    """Find a learning rate for this model, data, adapter and batch size."""

    __rules__: ClassVar[list[Rule]] = [
        *WORKLOAD_RULES,
        Rule(
            cel=f"self.method == 'rangeTest' || {HAS_VALIDATION}",
            message="trials compare validation losses, but dataset.validationFraction is 0 and there is no "
            "dataset.validationSplit or dataset.validationFiles: set one of them (or use method rangeTest)",
            check=lambda s: s.method == "rangeTest" or s.dataset.has_validation(),
        ),
        _conflict("batchSize", "optimization.batchSize"),
        _conflict("weightDecay", "optimization.weightDecay"),
        _conflict("warmupRatio", "schedule.warmupRatio"),
        _conflict("loraR", "adapter.r"),
        _conflict("loraAlpha", "adapter.alpha"),
        _conflict("maxSteps", "optimization.maxSteps"),
        Rule(
            cel="self.method != 'bayesian' || has(self.trials) && has(self.trials.searchSpace)",
            message="method bayesian needs trials.searchSpace",
            check=lambda s: s.method != "bayesian" or s.trials.search_space is not None,
        ),
    ]

    method: SweepMethod = "adaptive"
    """`adaptive`: a range test bounds the search (half a decade below its loss minimum, below its divergence
    edge), then short trials under that ceiling and longer ones around their best pick the LR (the
    default); `rangeTest`: the range test's rule alone; `grid`/`random`: short fine-tunes at fixed learning
    rates; `bayesian`: Optuna's TPE sampler over `trials.searchSpace` (grid and random use Optuna's grid and
    random samplers, one engine for every trial-based method)."""
    range_test: RangeTestSpec = Field(default_factory=RangeTestSpec)
    """Range-test settings (methods adaptive and rangeTest)."""
    adaptive: AdaptiveSpec = Field(default_factory=AdaptiveSpec)
    """Trial settings of the adaptive method."""
    trials: TrialsSpec = Field(default_factory=TrialsSpec)
    """Trial settings (methods grid, random and bayesian)."""


class TrialStatus(Spec):
    """One trial: a short fine-tune at one learning rate."""

    index: int = Field(ge=0)
    """Trial number (within its stage for the adaptive method)."""
    stage: int | None = Field(default=None, ge=1, le=2)
    """Adaptive method: 1 (candidates from the ceiling down) or 2 (longer finalists)."""
    learning_rate: float = Field(gt=0.0)
    """Learning rate tried."""
    params: dict[str, float] | None = Field(default=None, max_length=len(SEARCHED))
    """Grid, random, bayesian: every searched parameter's value (`learningRate`, `batchSize`, …); with the
    phase and eval loss, what the operator rebuilds its Optuna study from on every reconcile."""
    steps: int | None = Field(default=None, ge=0)
    """Optimiser steps of the trial."""
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Pruned"] = "Pending"
    """Trial state (Pruned: stopped early on its intermediate validation loss)."""
    evals: list[EvalPoint] | None = Field(default=None, max_length=MAX_EVALS)
    """Intermediate validation losses (grid, random, bayesian), what the pruner judges; the latest 16."""
    pruned_at_step: int | None = Field(default=None, ge=0)
    """The step a pruned trial was stopped at."""
    eval_loss: float | None = None
    """Final validation loss."""
    diverged: bool = False
    """True when the trial's loss blew up."""
    reason: str | None = Field(default=None, max_length=64)
    """Why a trial failed, when its Job cannot say (JobDeleted: the Job went before its result was read)."""
    message: str | None = Field(default=None, max_length=256)
    """The reason in words."""
    job_name: str | None = Field(default=None, max_length=NAME_MAX)
    """The trial's Job (created once: a trial whose result is recorded is never run again)."""
    progress: Progress | None = None
    """Live progress while the trial runs (polled from its metrics)."""


class RangeTestSummary(Spec):
    """The range test's window and edges (methods adaptive and rangeTest)."""

    min_learning_rate: float | None = None
    """Where the ramp started."""
    max_learning_rate: float | None = None
    """The highest learning rate the ramp reached (past the planned end when it was extended)."""
    divergence_learning_rate: float | None = None
    """Where the loss turned back up after falling, or blew up; unset when it did neither."""
    prior_learning_rate: float | None = None
    """The model's prior learning rate the window was centred on."""
    edge_learning_rate: float | None = None
    """The edge adaptive trials sit below: the divergence edge, else the highest learning rate reached."""
    loss_minimum_learning_rate: float | None = None
    """Where the smoothed loss bottomed out (the vertex of a parabola in log-LR through the ramp's points
    within half a decade of its lowest one), read from every step of the ramp: adaptive trials stay half a
    decade below it. Unset when the loss never fell from where the ramp started (nothing trained)."""
    steps: int | None = Field(default=None, ge=0)
    """Optimiser steps the ramp ran."""
    fine_tune_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    """Optimiser steps of the fine-tune the sweep is for, as the trainer counted them (`maxSteps`, else its
    epochs over the training data): an adaptive sweep sized in epochs sizes its trials and its
    `adaptive.maxFineTunes` budget from it."""
    baseline_loss: float | None = None
    """Classification: the entropy of the validation labels, the lowest loss that a prediction ignoring the
    input scores (adaptive trials not below it learned nothing); unset for a causal LM."""
    best_loss: float | None = None
    """The ramp's lowest smoothed training loss: below `baselineLoss`, the ramp learned, so where no trial
    did the sweep still reports its ceiling (unconfirmed, as `NothingTrained`)."""


class LRSweepStatus(ResourceStatus):
    """What the sweep found."""

    phase: SweepPhase = "Pending"
    """Pending, Running, Succeeded or Failed."""
    recommended_learning_rate: float | None = Field(default=None, gt=0.0)
    """The recommended learning rate (kept for people to read when the sweep fails on weak evidence; unset
    when a `rangeTest` ramp trained nothing, `NothingTrained`, since its rules' values are noise)."""
    rule: str | None = Field(default=None, max_length=TEXT_MAX)
    """How the recommendation was chosen: a range-test rule, `best-trial` (grid/random) or `adaptive`
    (see `decidedBy`); unset with the recommendation."""
    interval: Interval | None = None
    """Adaptive: learning rates whose predicted loss is within noise of the recommendation's."""
    decided_by: str | None = Field(default=None, max_length=TEXT_MAX)
    """Adaptive: which stage decided (`stage-2-fit`; `stage-2-horizon`, the stage-2 fit moved to the
    fine-tune's length; `stage-2-best`, `stage-1-fit`, `stage-1-best`; `range-test` when its ramp ended
    the sweep before any trial)."""
    evidence: EvidenceReason | None = None
    """Adaptive: how well the trials support the recommendation; FlatCurve, BestAtLowerEdge,
    BestAtUpperEdge, AllTrialsDiverged, NothingTrained, DivergedAtMinimumLearningRate and
    OutsideTestedWindow are weak and fail the sweep."""
    fit: LossFit | None = None
    """Adaptive: the parabola in log10(LR) that decided."""
    best_params: dict[str, float] | None = Field(default=None, max_length=len(SEARCHED))
    """Grid, random, bayesian: the best trial's searched parameters (a FineTuneJob's `fromSweep.use: all`)."""
    range_test: RangeTestSummary | None = None
    """The range test's window, divergence edge and prior."""
    steps_spent: int | None = Field(default=None, ge=0)
    """Adaptive: optimiser steps of the range test and every finished trial together."""
    effective_batch_size: int | None = Field(default=None, ge=1)
    """Examples per optimiser update the recommendation was made at."""
    world_size: int | None = Field(default=None, ge=1)
    """Trainer processes the recommendation was found at (nodes x processes per node)."""
    adapter: str | None = Field(default=None, max_length=TEXT_MAX)
    """Adapter type the recommendation was made with."""
    suggestions: dict[str, float | None] | None = Field(default=None, max_length=64)
    """Every range-test rule's suggestion."""
    best_loss: float | None = None
    """Lowest (smoothed) loss of the range test, or the best trial's validation loss."""
    stop_reason: str | None = Field(default=None, max_length=TEXT_MAX)
    """Why the range test stopped (completed, diverged, nan, past-minimum)."""
    curve: list[CurvePoint] | None = Field(default=None, max_length=CURVE_MAX)
    """Downsampled loss-vs-learning-rate curve of the range test."""
    trials: list[TrialStatus] | None = Field(default=None, max_length=TRIALS_MAX)
    """Per-trial results of adaptive, grid, random and bayesian sweeps (at most 64 trials run)."""
    warnings: list[Annotated[str, Field(max_length=TEXT_MAX)]] | None = Field(default=None, max_length=16)
    """Sanity-check warnings about the recommendation."""


# ---------------------------------------------------------------------------------------------- FineTuneJob


class FromSweep(Spec):
    """Take the learning rate from a finished LRSweep in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """LRSweep name."""
    scale: Literal["none", "sqrt", "linear"] = "sqrt"
    """Scale the recommendation from the sweep's effective batch size to this job's: `linear`
    (x batch ratio), `sqrt` (x sqrt of it, Adam's rule of thumb) or `none`."""
    use: Literal["learningRate", "all"] = "learningRate"
    """`learningRate`: the recommendation alone; `all`: the best trial's searched parameters too (batch size,
    weight decay, warmup ratio, LoRA r and alpha, from a grid, random or bayesian sweep's `bestParams`),
    the learning rate then scaled to the resulting batch size."""


class AutoSweep(Spec):
    """Run an LRSweep on this job's model, data, adapter and batch first, then train with its
    recommendation (a sweep that fails, e.g. on weak evidence, fails the job instead)."""

    method: Literal["adaptive", "rangeTest"] = "adaptive"
    """The sweep's method: `adaptive` (trials sized from this job's `optimization.maxSteps`) or
    `rangeTest`."""
    range_test: RangeTestSpec = Field(default_factory=RangeTestSpec)
    """Range-test settings of the sweep the job creates."""
    adaptive: AdaptiveSpec = Field(default_factory=AdaptiveSpec)
    """Trial settings of an adaptive sweep."""


class LearningRateSpec(Spec):
    """Exactly one of a value, a named sweep's result, or an automatic sweep."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="(has(self.value) ? 1 : 0) + (has(self.fromSweep) ? 1 : 0) + (has(self.auto) ? 1 : 0) == 1",
            message="learningRate needs exactly one of value, fromSweep or auto",
            check=lambda s: [s.value, s.from_sweep, s.auto].count(None) == 2,
        ),
    ]

    value: float | None = Field(default=None, gt=0.0, le=10.0)
    """A fixed peak learning rate."""
    from_sweep: FromSweep | None = None
    """Use an LRSweep's recommendation."""
    auto: AutoSweep | None = None
    """Run a sweep first (`auto: {}` takes the defaults)."""


class FineTuneOutputSpec(OutputSpec, ArtifactSpec):
    """Where checkpoints and models go, and what is made of the result: a merged model, a hub copy."""


class ValueSource(Spec):
    """A value read from a Secret or a ConfigMap key (exactly one)."""

    __rules__: ClassVar[list[Rule]] = [
        Rule(
            cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
            message="set exactly one of secretKeyRef or configMapKeyRef",
            check=lambda s: (s.secret_key_ref is None) != (s.config_map_key_ref is None),
        ),
    ]

    secret_key_ref: SecretKeyRef | None = None
    """Read it from a Secret key."""
    config_map_key_ref: ConfigMapKeyRef | None = None
    """Read it from a ConfigMap key."""


class FineTuneTrackingSpec(TrackingSpec):
    """Experiment tracking: TensorBoard event files on the output volume, or an MLflow server."""

    mlflow_tracking_uri: ValueSource | None = None
    """With `reportTo: mlflow`: where MLFLOW_TRACKING_URI comes from (a Secret or ConfigMap key)."""


class FineTuneJobSpec(TrainingSections, WorkloadSpec):
    """Fine-tune a model with a warmup + decay schedule."""

    __rules__: ClassVar[list[Rule]] = [
        *WORKLOAD_RULES,
        Rule(
            cel="!self.output.pushToHub || has(self.hubTokenSecret)",
            message="output.pushToHub needs hubTokenSecret: a Secret with a Hugging Face token that may "
            "write to output.hubModelId",
            check=lambda s: not s.output.push_to_hub or s.hub_token_secret is not None,
        ),
        Rule(
            cel="self.tracking.reportTo != 'mlflow' || has(self.tracking.mlflowTrackingUri)",
            message="tracking.mlflowTrackingUri is required when tracking.reportTo is mlflow (a Secret or "
            "ConfigMap key holding the server URI)",
            check=lambda s: s.tracking.report_to != "mlflow" or s.tracking.mlflow_tracking_uri is not None,
        ),
        Rule(
            cel="!has(self.learningRate.value) || self.schedule.minLearningRate < self.learningRate.value",
            message="schedule.minLearningRate must be below learningRate.value (the schedule's floor sits "
            "under its peak): lower schedule.minLearningRate",
            check=lambda s: (
                s.learning_rate.value is None or s.schedule.min_learning_rate < s.learning_rate.value
            ),
        ),
        Rule(
            cel="!has(self.learningRate.auto) || self.learningRate.auto.method == 'rangeTest' || "
            + HAS_VALIDATION,
            message="learningRate.auto's adaptive trials compare validation losses, but "
            "dataset.validationFraction is 0 and there is no dataset.validationSplit or "
            "dataset.validationFiles: set one of them (or learningRate.auto.method rangeTest)",
            check=lambda s: (
                s.learning_rate.auto is None
                or s.learning_rate.auto.method == "rangeTest"
                or s.dataset.has_validation()
            ),
        ),
    ]

    output: FineTuneOutputSpec = Field(default_factory=FineTuneOutputSpec)
    """Where checkpoints and models are written; merge the adapter, push to the hub."""
    tracking: FineTuneTrackingSpec = Field(default_factory=FineTuneTrackingSpec)
    """Experiment tracking (`reportTo`: none, tensorboard or mlflow)."""
    learning_rate: LearningRateSpec
    """Peak learning rate: a value, `fromSweep`, or `auto`."""
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    """Early stopping on validation loss."""
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpoint cadence and retention."""


def phases(status: type[Spec]) -> tuple[str, ...]:
    """The phases a status model's `phase` can take (`LRSweepStatus`: `SweepPhase`; `FineTuneJobStatus`:
    `Phase`; `TrialStatus`: a trial's)."""
    return get_args(status.model_fields["phase"].annotation)


class FineTuneJobStatus(ResourceStatus):
    """How the fine-tune went."""

    learning_rate: float | None = Field(default=None, gt=0.0)
    """The peak learning rate: resolved before training, then the one the trainer reports it trained at."""
    learning_rate_source: str | None = Field(default=None, max_length=TEXT_MAX)
    """Where it came from: `value`, `sweep/<name>` or `auto/<name>`."""
    params: dict[str, float] | None = Field(default=None, max_length=len(SEARCHED))
    """`fromSweep.use: all`: the sweep's best parameters this job trains with."""
    sweep_name: str | None = Field(default=None, max_length=NAME_MAX)
    """The LRSweep consulted (fromSweep) or created (auto)."""
    job_name: str | None = Field(default=None, max_length=NAME_MAX)
    """The training Job."""
    eval_loss: float | None = None
    """Final validation loss."""
    best_eval_loss: float | None = None
    """Best validation loss seen."""
    train_loss: float | None = None
    """Mean training loss."""
    checkpoint: str | None = Field(default=None, max_length=TEXT_MAX)
    """The best checkpoint by validation loss (else the newest), relative to the output folder."""
    best_checkpoint: str | None = Field(default=None, max_length=TEXT_MAX)
    """The checkpoint with the lowest validation loss, relative to the output folder."""
    last_checkpoint: str | None = Field(default=None, max_length=TEXT_MAX)
    """The newest checkpoint (the last step saved), relative to the output folder."""
    model: str | None = Field(default=None, max_length=TEXT_MAX)
    """The final model (or adapter) folder, relative to the output folder (`final`)."""
    model_from: Literal["best", "last"] | None = None
    """Whose weights `model` holds: the best checkpoint's (by validation loss) or the last step's."""
    merged_model: str | None = Field(default=None, max_length=TEXT_MAX)
    """The adapter merged into the base model, relative to the output folder (`merged`)."""
    model_card: str | None = Field(default=None, max_length=TEXT_MAX)
    """The model card (README.md) recording the learning rate, its sweep, and the schedule."""
    hub_url: str | None = Field(default=None, max_length=TEXT_MAX)
    """Where the model was pushed on the Hugging Face Hub."""
    early_stopped: bool | None = None
    """True when early stopping ended training."""
    restarts: int | None = Field(default=None, ge=0, le=101)
    """Training pods that failed and were retried by the Job (at most its `backoffLimit`)."""
    resumed_from_step: int | None = Field(default=None, ge=0)
    """The checkpoint step the last training pod resumed from, after a failed attempt."""
    effective_batch_size: int | None = Field(default=None, ge=1)
    """Examples per optimiser update: per-device batch x gradient accumulation x world size."""
    world_size: int | None = Field(default=None, ge=1)
    """Trainer processes of the run: `resources.nodes` x processes per node (`gpus`, or 1 on CPU)."""


# ---------------------------------------------------------------------------------------------- kinds


class KindInfo:
    """Names and printer columns of one custom resource kind."""

    def __init__(
        self,
        kind: str,
        plural: str,
        short: str,
        spec: type[Spec],
        status: type[Spec],
        columns: list[dict[str, Any]],
        description: str,
        max_name: int,
    ) -> None:
        self.kind, self.plural, self.short = kind, plural, short
        self.singular = kind.lower()
        self.spec, self.status, self.columns, self.description = spec, status, columns, description
        self.max_name = max_name

    @property
    def name_rule(self) -> dict[str, str]:
        """The root CEL rule bounding `metadata.name`, so every Job name and label derived from it fits 63."""
        return {
            "rule": f"size(self.metadata.name) <= {self.max_name}",
            "message": f"metadata.name must be at most {self.max_name} characters (the operator's Job names "
            "and labels add a suffix and must fit 63): choose a shorter name",
        }

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"


_PHASE = {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}
_PROGRESS = {
    "name": "Progress",
    "type": "integer",
    "jsonPath": ".status.progress.percent",
    "description": "Percent of steps done",
}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

LRSWEEP = KindInfo(
    kind="LRSweep",
    plural="lrsweeps",
    short="lrs",
    spec=LRSweepSpec,
    status=LRSweepStatus,
    max_name=naming.MAX_LRSWEEP_NAME,
    description="Finds a learning rate: adaptive trials below a range test's loss minimum, a range "
    "test alone, or a grid/random sweep of short fine-tunes.",
    columns=[
        _PHASE,
        {"name": "Method", "type": "string", "jsonPath": ".spec.method"},
        {"name": "Recommended LR", "type": "number", "jsonPath": ".status.recommendedLearningRate"},
        {"name": "Evidence", "type": "string", "jsonPath": ".status.evidence", "priority": 1},
        {"name": "LR Low", "type": "number", "jsonPath": ".status.interval.low", "priority": 1},
        {"name": "LR High", "type": "number", "jsonPath": ".status.interval.high", "priority": 1},
        {"name": "Rule", "type": "string", "jsonPath": ".status.rule", "priority": 1},
        {"name": "Best Loss", "type": "number", "jsonPath": ".status.bestLoss"},
        _PROGRESS,
        _AGE,
    ],
)

FINETUNEJOB = KindInfo(
    kind="FineTuneJob",
    plural="finetunejobs",
    short="ftj",
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    max_name=naming.MAX_FINETUNEJOB_NAME,
    description="Fine-tunes a model with a warmup + decay schedule at a given, swept or automatic LR.",
    columns=[
        _PHASE,
        {"name": "LR", "type": "number", "jsonPath": ".status.learningRate"},
        {"name": "LR Source", "type": "string", "jsonPath": ".status.learningRateSource", "priority": 1},
        _PROGRESS,
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        {"name": "Eval Loss", "type": "number", "jsonPath": ".status.evalLoss"},
        _AGE,
    ],
)

KINDS: tuple[KindInfo, ...] = (LRSWEEP, FINETUNEJOB)
CATEGORY = "finetune"
