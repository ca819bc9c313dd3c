"""Trial results outlive their Jobs: what the last status recorded of each trial, read back once its Job is
gone (deleted after `ttlSecondsAfterFinished`, or by a person), so no trial is ever created twice.

Every trial-based method (grid, random, adaptive) keys its trials by (stage, index) and asks here first:
a trial the status holds as finished (or pruned) keeps its result; a trial the status saw running whose
Job has gone finished or was deleted unseen, so it is recorded Failed (result lost), never re-created.
Only a trial the status holds as Pending (created, not yet seen: the Job index may lag the create) is
applied again, which is idempotent while the Job exists. Pure functions.
"""

from __future__ import annotations

from collections.abc import Container

from finetune_operator.api import TrialStatus
from finetune_operator.planning.status import TERMINAL

TrialKey = tuple[int, int]
"""(stage, index) of a trial; grid and random trials are stage 0."""

JOB_GONE = "JobDeleted"


def trial_key(trial: TrialStatus) -> TrialKey:
    return (trial.stage or 0, trial.index)


def remembered(previous: list[TrialStatus] | None, jobs: Container[str]) -> dict[TrialKey, TrialStatus]:
    """Trials the last status recorded as finished, or saw running whose Job is no longer among `jobs`:
    finished ones unchanged, running ones Failed with reason JobDeleted (their result never arrived)."""
    kept: dict[TrialKey, TrialStatus] = {}
    for t in previous or []:
        if t.phase in TERMINAL or t.phase == "Pruned":
            kept[trial_key(t)] = t
        elif t.phase == "Running" and t.job_name not in jobs:
            kept[trial_key(t)] = t.model_copy(
                update={
                    "phase": "Failed",
                    "reason": JOB_GONE,
                    "message": "the trial's Job was deleted before its result was read",
                    "eval_loss": None,
                    "progress": None,
                }
            )
    return kept
