"""The Argo CD health checks in docs/argocd/*.lua, run by a real Lua 5.4 on sample statuses and on the
statuses the operator's planner writes (Healthy exactly when Ready, Degraded exactly when Stalled).

Argo CD runs a health script with the resource as the global `obj` and reads the table it returns. The
harness does the same: `obj = <the sample as a Lua table>; hs = dofile(script)`.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
from pathlib import Path
from typing import get_args

import pytest

from finetune_operator.api import Phase, SweepPhase
from finetune_operator.planning.status import TERMINAL

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "LRSweep": REPO / "docs/argocd/health-lrsweep.lua",
    "FineTuneJob": REPO / "docs/argocd/health-finetunejob.lua",
}
PHASES = {"LRSweep": SweepPhase, "FineTuneJob": Phase}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


@functools.cache
def lua_interpreter() -> str | None:
    for name in ("lua5.4", "lua"):
        found = shutil.which(name)
        if found:
            return found
    try:
        out = subprocess.run(
            [str(REPO / "scripts/install-prometheus"), "lua"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[-1] if out else None


@pytest.fixture(scope="module")
def lua() -> str:
    path = lua_interpreter()
    if path is None:
        pytest.skip(
            "no Lua 5.4: not on PATH and scripts/install-prometheus lua could not install Debian's lua5.4"
        )
    return path


def to_lua(value) -> str:
    """A Python value as a Lua literal (JSON-shaped data only)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{to_lua(k)}] = {to_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def health(lua: str, kind: str, obj: dict) -> tuple[str, str]:
    program = (
        f"obj = {to_lua(obj)}\n"
        f"local hs = dofile({to_lua(str(SCRIPTS[kind]))})\n"
        'io.write(hs.status, "\\t", hs.message or "")\n'
    )
    out = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status, message = out.stdout.split("\t", 1)
    assert status in ARGO_STATUSES
    return status, message


def resource(kind: str, status: dict | None, generation: int = 1) -> dict:
    obj = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


KINDS = pytest.mark.parametrize("kind", ["LRSweep", "FineTuneJob"])


@KINDS
def test_no_status_yet_is_progressing(lua, kind):
    assert health(lua, kind, resource(kind, None))[0] == "Progressing"
    assert health(lua, kind, resource(kind, {}))[0] == "Progressing"


def active_phases(kind: str) -> list[str]:
    """The kind's unfinished phases, as the API contract lists them."""
    return [p for p in get_args(PHASES[kind]) if p not in TERMINAL]


@pytest.mark.parametrize(("kind", "phase"), [(k, p) for k in SCRIPTS for p in active_phases(k)])
def test_active_phases_are_progressing(lua, kind, phase):
    status, message = health(lua, kind, resource(kind, {"phase": phase, "observedGeneration": 1}))
    assert status == "Progressing"
    assert phase in message


@pytest.mark.parametrize(
    ("kind", "phase"),
    [(k, p) for k in SCRIPTS for other in SCRIPTS for p in active_phases(other) if p not in active_phases(k)],
)
def test_a_phase_the_kind_does_not_have_is_unknown(lua, kind, phase):
    """An LRSweep never waits for a sweep: a FineTuneJob's waiting phases on one say something is off."""
    assert health(lua, kind, resource(kind, {"phase": phase, "observedGeneration": 1}))[0] == "Unknown"


@KINDS
def test_failed_is_degraded_with_the_failed_condition_message(lua, kind):
    obj = resource(
        kind,
        {
            "phase": "Failed",
            "observedGeneration": 1,
            "message": "trainer failed",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Failed",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "TrainerFailed",
                    "message": "CUDA out of memory at step 1",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
            ],
        },
    )
    assert health(lua, kind, obj) == ("Degraded", "CUDA out of memory at step 1")


@KINDS
def test_failed_without_conditions_still_degraded(lua, kind):
    assert health(lua, kind, resource(kind, {"phase": "Failed"})) == ("Degraded", "Failed")


def test_succeeded_sweep_is_healthy_and_shows_the_recommendation(lua):
    obj = resource(
        "LRSweep",
        {
            "phase": "Succeeded",
            "observedGeneration": 1,
            "recommendedLearningRate": 0.000316,
            "rule": "valley",
            "suggestions": {"valley": 0.000316, "steepest": 0.001},
        },
    )
    assert health(lua, "LRSweep", obj) == ("Healthy", "Recommended learning rate 0.000316 (valley)")


def test_succeeded_finetunejob_is_healthy_and_shows_the_eval_loss(lua):
    obj = resource("FineTuneJob", {"phase": "Succeeded", "observedGeneration": 1, "evalLoss": 1.23456})
    assert health(lua, "FineTuneJob", obj) == ("Healthy", "Finished: eval loss 1.235")


@KINDS
def test_status_of_an_older_generation_is_progressing(lua, kind):
    obj = resource(kind, {"phase": "Succeeded", "observedGeneration": 1}, generation=2)
    assert health(lua, kind, obj) == (
        "Progressing",
        "Waiting for the finetune-operator to observe generation 2",
    )


def test_running_shows_progress_percent(lua):
    obj = resource(
        "FineTuneJob", {"phase": "Running", "progress": {"step": 50, "totalSteps": 200, "percent": 25}}
    )
    assert health(lua, "FineTuneJob", obj) == ("Progressing", "Running: 25%")


@KINDS
def test_unknown_phase_is_unknown(lua, kind):
    assert health(lua, kind, resource(kind, {"phase": "Exploded"}))[0] == "Unknown"


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_gitops_doc_embeds_the_tested_scripts_verbatim(kind):
    lines = (REPO / "docs/gitops.md").read_text().splitlines()
    key = f"  resource.customizations.health.finetune.dev_{kind}: |"
    assert key in lines
    block = []
    for line in lines[lines.index(key) + 1 :]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line.removeprefix("    "))
    script = SCRIPTS[kind].read_text().splitlines()
    assert "\n".join(block).strip() == "\n".join(script).strip(), (
        f"docs/gitops.md's {kind} health check differs from {SCRIPTS[kind].name}"
    )


# ---------------------------------------------------------------------------------------------------------
# The checks agree with what the operator writes


def planned() -> list[tuple[str, str, dict]]:
    """(situation, kind, status) as the operator's planner writes them."""
    from plans import plan_finetune, plan_sweep

    from finetune_operator.children import ChildState

    spec = {"model": {"name": "/m"}, "dataset": {"files": ["/d.jsonl"]}, "method": "rangeTest"}
    result = {
        "kind": "rangeTest",
        "rule": "valley",
        "recommendedLearningRate": 1e-4,
        "stopReason": "diverged",
    }
    result |= {"curve": [{"lr": 1e-6, "loss": 3.0}, {"lr": 1e-4, "loss": 2.0}, {"lr": 1e-2, "loss": 9.0}]}

    def job(phase: str, **kw) -> dict:
        return {"s-range-test": ChildState("s-range-test", phase, **kw)}

    ftj = {**spec, "learningRate": {"auto": {}}}
    ftj.pop("method")
    taken = {"status": {"phase": "Succeeded"}, "owner": "someone-else"}
    return [
        ("created", "LRSweep", plan_sweep("s", spec, None, 1, {}).status),
        ("running", "LRSweep", plan_sweep("s", spec, None, 1, job("Running")).status),
        (
            "unschedulable",
            "LRSweep",
            plan_sweep("s", spec, None, 1, job("Pending", reason="Unschedulable", message="no GPU")).status,
        ),
        ("recommended", "LRSweep", plan_sweep("s", spec, None, 1, job("Succeeded", result=result)).status),
        (
            "trainer failed",
            "LRSweep",
            plan_sweep("s", spec, None, 1, job("Failed", reason="OutOfMemory")).status,
        ),
        ("invalid spec", "LRSweep", plan_sweep("s", {**spec, "rangeTest": {"steps": 1}}, None, 1, {}).status),
        ("sweeping", "FineTuneJob", plan_finetune("f", ftj, None, 1, {}, None).status),
        ("sweep name taken", "FineTuneJob", plan_finetune("f", ftj, None, 1, {}, taken).status),
    ]


@pytest.mark.parametrize(("situation", "kind", "status"), planned(), ids=[p[0] for p in planned()])
def test_health_is_healthy_when_ready_and_degraded_when_stalled(lua, situation, kind, status):
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    health_, message = health(lua, kind, resource(kind, status))
    if conditions.get("Ready") == "True":
        assert health_ == "Healthy"
    elif conditions.get("Stalled") == "True":
        assert health_ == "Degraded" and message == status["message"]
    else:
        assert health_ == "Progressing" and conditions["Reconciling"] == "True"
