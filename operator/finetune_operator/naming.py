"""Deterministic names, labels and output folders of the objects the operator creates.

Names depend only on the owner and the child's role, so an operator restart finds, never duplicates, them.
Output folders also carry the owner's uid, so a deleted and re-created resource never inherits a run.
"""

from __future__ import annotations

import hashlib

GROUP = "finetune.dev"
MANAGED_BY = {"app.kubernetes.io/managed-by": "finetune-operator"}
ROLE_LABEL = f"{GROUP}/role"
TRIAL_LABEL = f"{GROUP}/trial"
STAGE_LABEL = f"{GROUP}/stage"
KIND_LABELS = {"LRSweep": f"{GROUP}/lrsweep", "FineTuneJob": f"{GROUP}/finetunejob"}
MAX_NAME = 63  # Job names become pod label values: at most 63 characters
MAX_NODES = 64
"""Most pods of one multi-node run (`resources.nodes`)."""
POD_INDEX_ROOM = len(f"-{MAX_NODES - 1}")
"""Room an Indexed Job's pods add to its name: their hostnames are `<job>-<index>`, DNS labels of 63."""


def child_name(owner: str, suffix: str, limit: int = MAX_NAME) -> str:
    """`<owner>-<suffix>`, shortened with a stable hash when too long for a label value."""
    name = f"{owner}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-.')}-{digest}-{suffix}"


def range_test_job(sweep: str) -> str:
    return child_name(sweep, "range-test")


def trial_job(sweep: str, index: int) -> str:
    return child_name(sweep, f"trial-{index}")


def adaptive_trial_job(sweep: str, stage: int, index: int) -> str:
    """An adaptive sweep's trial: one name per (stage, index), so the Jobs are the sweep's memory."""
    return child_name(sweep, f"s{stage}-trial-{index}")


def train_job(finetunejob: str) -> str:
    return child_name(finetunejob, "train")


def auto_sweep(finetunejob: str) -> str:
    """The LRSweep an `auto` FineTuneJob creates and owns."""
    return child_name(finetunejob, "lr", limit=253 - 20)


def child_labels(
    kind: str, owner: str, role: str, trial: int | None = None, stage: int | None = None
) -> dict[str, str]:
    labels = {**MANAGED_BY, KIND_LABELS[kind]: owner, ROLE_LABEL: role}
    if trial is not None:
        labels[TRIAL_LABEL] = str(trial)
    if stage is not None:
        labels[STAGE_LABEL] = str(stage)
    return labels


def run_folder(kind: str, owner: str, uid: str) -> str:
    """Default folder of a resource's runs on an output claim: `<kind>/<name>/<uid>`."""
    return f"{kind.lower()}/{owner}/{uid}"


def child_folder(role: str, trial: int | None = None, stage: int | None = None) -> str:
    """A trainer Job's own folder below its resource's: `range-test`, `train`, `trial-<i>` or
    `s<stage>-trial-<i>` (trials of one sweep never share a `result.json`)."""
    if trial is None:
        return role
    return f"s{stage}-trial-{trial}" if stage is not None else f"trial-{trial}"


def _longest_suffix(*names: str) -> int:
    return max(len(n) for n in names)


# The longest names the operator derives, as suffixes of an empty owner name (child_name("") == "-<suffix>").
# Trial indexes stay below 64 (status.trials holds at most 64) and adaptive stages are 1 or 2.
LRSWEEP_SUFFIX = _longest_suffix(range_test_job(""), trial_job("", 63), adaptive_trial_job("", 2, 63))
MAX_LRSWEEP_NAME = MAX_NAME - POD_INDEX_ROOM - LRSWEEP_SUFFIX
"""An LRSweep's name leaves room for its longest Job name (`<name>-s2-trial-63`) and a pod index
(`-63`) within 63 characters."""
MAX_FINETUNEJOB_NAME = min(
    MAX_NAME - POD_INDEX_ROOM - len(train_job("")), MAX_LRSWEEP_NAME - len(auto_sweep(""))
)
"""A FineTuneJob's name leaves room for its `auto` sweep (`<name>-lr`) and that sweep's Jobs."""
