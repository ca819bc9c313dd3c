"""The range test: its Job, its live progress, and what its finished curve says (methods rangeTest and
adaptive)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError

from finetune_operator import naming, rendering
from finetune_operator.api import LRSweepSpec, LRSweepStatus, Progress, RangeTestSummary
from finetune_operator.children import NO_POD, ChildState
from finetune_operator.planning.status import ChildRequest, StatusBuilder, finite, progress_from_sample
from finetune_trainer.adaptive import NOISE_FLOOR, diverged_at_start, ramp_edge, ramp_minimum
from finetune_trainer.config import CurvePoint, RangeTestResult, RangeTestSpec

RECOMMENDED = "Recommended"
"""The reason of a sweep that succeeded; every other verdict fails it."""
NOTHING_TRAINED = "NothingTrained"
"""The reason of a ramp whose loss never fell from its start: no rule's value is evidence."""

Samples = Mapping[str, Mapping[str, float]]


def range_test(
    name: str,
    sweep: LRSweepSpec,
    b: StatusBuilder[LRSweepStatus],
    children: Mapping[str, ChildState],
    samples: Samples,
) -> RangeTestResult | None:
    """Create and follow the range-test Job; its result once it succeeded (written to the status)."""
    job = naming.range_test_job(name)
    child = children.get(job)
    if child is None:
        try:
            config = rendering.range_test_config(sweep)
        except ValidationError as e:
            b.invalid(e)
            return None
        b.children.append(ChildRequest(job, "range-test", ["range-test"], config))
        b.started()
        b.phase("Pending", "JobCreated", f"created range-test Job {job}")
    elif child.phase == "Pending":
        child_pending(b, child)
    elif child.phase == "Running":
        b.phase("Running", "RangeTestRunning", f"range test running in Job {job}")
        progress = progress_from_sample(samples.get(job), child.start_time, b.now, b.status.progress)
        if progress:
            b.status.progress = progress
    elif child.phase == "Succeeded":
        return _result(b, child)
    else:
        child_failed(b, child, "range test")
    return None


def child_pending(b: StatusBuilder, child: ChildState) -> None:
    """A Job whose pod has not started: its pod's reason if it has one. A Job that has nothing to say
    keeps its JobCreated condition (a status write fewer per Job, and the message still holds)."""
    if not (child.reason or child.message) and b.reason() == "JobCreated":
        return
    b.phase(
        "Pending",
        child.reason or "PodPending",
        child.message or f"waiting for Job {child.name} to start",
        event=bool(child.message),
    )


def child_failed(b: StatusBuilder, child: ChildState, what: str) -> None:
    hint = {
        "InvalidConfig": "fix the spec field named in the message",
        "OutOfMemory": "lower optimization.batchSize or maxSeqLength, or use a LoRA adapter",
        "Diverged": "lower the learning rate",
        "DeadlineExceeded": "raise activeDeadlineSeconds",
        "BackoffLimitExceeded": "see the pod logs; retries are set by backoffLimit",
        "CreateContainerConfigError": "create the Secret or ConfigMap the message names",
        "ErrImagePull": "check spec.image and the image pull secrets",
        "ImagePullBackOff": "check spec.image and the image pull secrets",
        "InvalidImageName": "fix spec.image (a lowercase [registry/]path[:tag][@digest])",
        "Unschedulable": "create the PersistentVolumeClaim the message names, or let it bind",
        NO_POD: "create the service account spec.serviceAccountName names, or make room in the "
        "namespace's ResourceQuota",
    }.get(child.reason or "", "")
    message = f"{what} Job {child.name} failed ({child.reason})" + (
        f": {child.message}" if child.message else ""
    )
    b.phase("Failed", child.reason or "JobFailed", message + (f"; {hint}" if hint else ""))


def _result(b: StatusBuilder[LRSweepStatus], child: ChildState) -> RangeTestResult | None:
    """The finished range test's result, written to the status (curve, suggestions, window, edge). Numbers
    that are not finite (a curve point past divergence, a rule that failed) are left out, never written."""
    try:
        result = RangeTestResult.model_validate(child.result or {})
    except ValidationError:
        b.phase(
            "Failed", "NoResult", f"Job {child.name} succeeded but left no range-test result: {child.message}"
        )
        return None
    curve = [CurvePoint(lr=p.lr, loss=p.loss) for p in result.curve if finite(p.lr) and finite(p.loss)]
    result = result.model_copy(
        update={
            "curve": curve,
            "recommended_learning_rate": finite(result.recommended_learning_rate),
            "best_loss": finite(result.best_loss),
            "min_learning_rate": finite(result.min_learning_rate),
            "max_learning_rate": finite(result.max_learning_rate),
            "divergence_learning_rate": finite(result.divergence_learning_rate),
            "prior_learning_rate": finite(result.prior_learning_rate),
            "suggestions": {k: finite(v) for k, v in result.suggestions.items()},
        }
    )
    s = b.status
    s.effective_batch_size = result.effective_batch_size
    s.world_size = result.world_size
    s.adapter = result.adapter
    s.suggestions = result.suggestions
    s.stop_reason = result.stop_reason
    s.curve = result.curve  # the contract holds it to CURVE_MAX points, thinned over the whole ramp
    s.warnings = result.warnings[:16] or None
    s.range_test = summarize(result)
    if result.steps:
        s.progress = Progress(step=result.steps, total_steps=result.steps, percent=100)
    at = f"{result.curve[-1].lr:.3g}" if result.curve else "an unknown rate"
    if result.diverged:
        b.condition("Diverged", True, "LossDiverged", f"loss diverged at learning rate {at}")
    elif result.stop_reason == "past-minimum":
        b.condition(
            "Diverged", False, "PastMinimum", f"the ramp stopped at learning rate {at}, past the loss minimum"
        )
    else:
        b.condition("Diverged", False, "Completed", "the ramp reached its last learning rate")
    return result


def summarize(result: RangeTestResult) -> RangeTestSummary:
    """The range test's window and edges; the edge the adaptive trials sit below is the divergence edge,
    else the highest learning rate the ramp reached."""
    return RangeTestSummary(
        min_learning_rate=finite(result.min_learning_rate),
        max_learning_rate=finite(result.max_learning_rate),
        divergence_learning_rate=finite(result.divergence_learning_rate),
        prior_learning_rate=finite(result.prior_learning_rate),
        edge_learning_rate=ramp_edge(result.divergence_learning_rate, result.max_learning_rate),
        loss_minimum_learning_rate=finite(result.loss_minimum_learning_rate),
        steps=result.steps,
        fine_tune_steps=result.fine_tune_steps,
        baseline_loss=finite(result.baseline_loss),
        best_loss=finite(result.best_loss),
    )


def diverged_at_minimum(result: RangeTestResult, min_lr: float | None) -> bool:
    """True when the ramp diverged within its first decade: the window starts too high."""
    if not result.diverged or not result.curve:
        return False
    return diverged_at_start(min_lr, result.curve[-1].lr)


def still_falling(result: RangeTestResult) -> bool:
    """True when the ramp ended without diverging at its lowest loss: the minimum lies beyond it."""
    curve = result.curve
    return (
        result.stop_reason == "completed" and len(curve) >= 2 and curve[-1].loss <= min(p.loss for p in curve)
    )


def verdict(result: RangeTestResult, spec: RangeTestSpec) -> tuple[str, str]:
    """(reason, message) of a finished `rangeTest` sweep; anything but `Recommended` fails it. A
    recommendation outside the tested window, or from a curve still falling at its end, names the bound."""
    curve, rule, lr = result.curve, result.rule, result.recommended_learning_rate
    low = result.min_learning_rate or spec.min_learning_rate or (curve[0].lr if curve else None)
    high = result.max_learning_rate or (curve[-1].lr if curve else None)
    if diverged_at_minimum(result, low):
        fix = f"lower rangeTest.minLearningRate (now {low:g})"
        return (
            "DivergedAtMinimumLearningRate",
            f"the loss diverged within the first decade of the ramp; {fix}",
        )
    if curve and ramp_minimum(result.loss_minimum_learning_rate, curve) is None:
        return NOTHING_TRAINED, _nothing_trained(result, spec, high)
    if lr is None:
        return (
            "NoRecommendation",
            f"rule {rule} found no learning rate on the curve; widen the range or add steps",
        )
    if low is not None and lr < low * (1 - 1e-9):
        tested = f"below the lowest learning rate tested ({low:.3g})"
        return (
            "OutsideTestedWindow",
            f"rule {rule} recommends {lr:.3g}, {tested}; lower rangeTest.minLearningRate",
        )
    if high is not None and lr > high * (1 + 1e-9):
        tested = f"above the highest learning rate tested ({high:.3g})"
        return (
            "OutsideTestedWindow",
            f"rule {rule} recommends {lr:.3g}, {tested}; raise rangeTest.maxLearningRate",
        )
    if still_falling(result):
        bound = "rangeTest.ceilingLearningRate" if spec.extend else "rangeTest.maxLearningRate"
        edge = f"the loss was still falling at the highest learning rate tested ({high:.3g})"
        return (
            "CurveStillFalling",
            f"{edge}: rule {rule}'s {lr:.3g} sits at the curve's top edge; raise {bound}",
        )
    batch = f"effective batch size {result.effective_batch_size}"
    return RECOMMENDED, f"recommended learning rate {lr:.3g} (rule {rule}, {batch})"


def _nothing_trained(result: RangeTestResult, spec: RangeTestSpec, high: float | None) -> str:
    """Why a ramp whose loss never fell from its start recommends nothing, and the bound to move: it has no
    loss minimum (``adaptive.ramp_minimum``: none reported, and none on its curve, by ``adaptive.fell``), and
    every rule's value on such a curve is noise, so none is trained with."""
    steps = "rangeTest.steps"
    never = f"the loss never fell from where the ramp started (by more than {NOISE_FLOOR:.1%})"
    at = f"{high:.3g}" if high is not None else "the ramp's end"
    if result.diverged:
        return (
            f"{never} before it diverged at learning rate {at}: nothing trained at any learning rate "
            f"tested; raise {steps} (a slower ramp trains longer at each learning rate)"
        )
    bound = "rangeTest.ceilingLearningRate" if spec.extend else "rangeTest.maxLearningRate"
    return f"{never} up to learning rate {at}: nothing trained in the window; raise {bound} or {steps}"


def decide(b: StatusBuilder[LRSweepStatus], result: RangeTestResult, spec: RangeTestSpec) -> None:
    """A `rangeTest` sweep's outcome: the rule's recommendation, succeeded or failed by `verdict`."""
    s = b.status
    reason, message = verdict(result, spec)
    noise = reason == NOTHING_TRAINED  # no rule's value is a recommendation: none is written, nor its rule
    s.recommended_learning_rate, s.rule, s.best_loss = (
        None if noise else result.recommended_learning_rate,
        None if noise else result.rule,
        result.best_loss,
    )
    b.phase("Succeeded" if reason == RECOMMENDED else "Failed", reason, message)
