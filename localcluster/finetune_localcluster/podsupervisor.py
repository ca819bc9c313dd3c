"""Containers as local processes: when each starts, how its exit is recorded, when restartPolicy restarts
it, and which phase that puts the pod in. No API calls: the runner writes what this decides."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import podspec
from .podstatus import TERMINAL, now
from .processes import kill_group, kill_marked, spawn

IMAGE_NOTE = "image ignored: the local runner runs the container's command in the local Python environment"


@dataclass
class ContainerRun:
    """One container of a pod on this node: its prepared process and its Kubernetes state."""

    spec: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    term_file: Path
    init: bool = False
    enter: Callable[[list[str]], list[str]] | None = None
    """Wraps the resolved argv to run it in the pod's own namespaces (``podnetwork``), when it has them."""
    popen: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    restart_at: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def done(self) -> bool:
        return "terminated" in self.state


@dataclass
class PodRun:
    """A pod this node runs: its containers, address, folder and the status last written."""

    uid: str
    namespace: str
    name: str
    ip: str
    dir: Path
    restart_policy: str
    inits: list[ContainerRun]
    mains: list[ContainerRun]
    start_time: str = field(default_factory=now)
    transitions: dict[str, str] = field(default_factory=dict)
    phase: str = "Pending"
    message: str = ""
    deleting: bool = False
    last_status: str = ""
    gpus: tuple[int, ...] = ()
    """The node's GPU indices this pod holds (`podnode.GpuPool`)."""

    @property
    def containers(self) -> list[ContainerRun]:
        return self.inits + self.mains


def launch(container: ContainerRun) -> None:
    """Start the container's process, or record why it cannot run (``ContainerCannotRun``, exit 128)."""
    argv = container.argv
    started = now()
    problem = ""
    if not argv:
        problem = (
            "container has no command: the local runner ignores the image "
            f"({container.spec.get('image', '')}), so the image's entrypoint is unknown"
        )
    else:
        exe = argv[0]
        resolved = exe if "/" in exe else shutil.which(exe, path=container.env.get("PATH"))
        if resolved is None or not (Path(resolved).is_file() and os.access(resolved, os.X_OK)):
            problem = f'exec: "{exe}": executable file not found in $PATH'
        elif container.enter is not None:
            argv = container.enter([resolved, *argv[1:]])
    if not problem:
        with open(container.log_path, "ab") as fh:
            fh.write(f"[local-runner] {IMAGE_NOTE}: {container.spec.get('image', '')}\n".encode())
        try:
            container.popen = spawn(argv, container.log_path, env=container.env, cwd=container.cwd)
        except OSError as exc:
            problem = f"failed to start {argv[0]!r}: {exc}"
    if problem:
        with open(container.log_path, "ab") as fh:
            fh.write(f"[local-runner] {problem}\n".encode())
        container.state = {
            "terminated": {
                "exitCode": 128,
                "reason": "ContainerCannotRun",
                "message": problem,
                "startedAt": started,
                "finishedAt": now(),
            }
        }
        return
    container.state = {"running": {"startedAt": started}}


def finish(container: ContainerRun, code: int) -> None:
    """Record an exit: code (a signal N as 128+N, as containers report), reason, termination message."""
    exit_code = 128 - code if code < 0 else code
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "startedAt": container.state.get("running", {}).get("startedAt"),
        "finishedAt": now(),
    }
    message = podspec.read_termination_message(
        container.term_file, container.spec.get("terminationMessagePolicy"), exit_code, container.log_path
    )
    if message:
        terminated["message"] = message
    container.state = {"terminated": terminated}
    container.popen = None


def reap(run: PodRun) -> bool:
    """Record exited processes; True if anything changed (an exit, or a restart back-off has run out)."""
    changed = False
    for container in run.containers:
        if container.popen is not None and container.popen.poll() is not None:
            finish(container, container.popen.returncode)
            changed = True
        elif container.restart_at and time.monotonic() >= container.restart_at:
            changed = True
    return changed


def advance(run: PodRun) -> None:
    """Restart what is due, start what can start next, and set the phase; a finished pod's processes end."""
    _restart_due(run)
    if run.phase not in TERMINAL:
        run.phase = _step(run)
    if run.phase in TERMINAL:
        for container in run.containers:
            if container.popen is not None:
                kill_group(container.popen, grace=2.0)
                finish(container, container.popen.returncode or 0)
        kill_leftovers(run)


def terminate(run: PodRun, grace: float) -> None:
    """Deletion: SIGTERM each live process group, SIGKILL after ``grace``; record how each ended."""
    for container in run.containers:
        if container.popen is not None and container.popen.poll() is None:
            code = kill_group(container.popen, grace=grace)
            container.state = {
                "terminated": {
                    "exitCode": 137 if code in (None, -9) else (128 - code if code < 0 else code),
                    "reason": "Error",
                    "startedAt": container.state.get("running", {}).get("startedAt"),
                    "finishedAt": now(),
                }
            }
    kill_leftovers(run)


def deleted_phase(run: PodRun) -> str:
    """The terminal phase a kubelet gives a deleted pod once its containers have stopped: ``Succeeded`` if
    every main container exited 0, else ``Failed``."""
    ok = all(c.done and c.state["terminated"]["exitCode"] == 0 for c in run.mains)
    return "Succeeded" if ok else "Failed"


def kill_all(run: PodRun, grace: float) -> None:
    for container in run.containers:
        if container.popen is not None:
            kill_group(container.popen, grace=grace)
    kill_leftovers(run)


def kill_leftovers(run: PodRun) -> None:
    """Processes of the pod outside its process groups (torchrun's workers have sessions of their own)
    end with it, as a container's processes end with the container: found by the pod's folder, which
    every process of the pod inherits as ``FINETUNE_LOCAL_ROOT``."""
    kill_marked("FINETUNE_LOCAL_ROOT", str(run.dir))


def _step(run: PodRun) -> str:
    for container in run.inits:  # one after the other, each must succeed
        if container.restart_at:
            return "Pending"
        if container.popen is None and not container.done:
            launch(container)
        if container.popen is not None:
            return "Pending"
        if container.state["terminated"]["exitCode"] == 0:
            continue
        if _maybe_restart(run, container):
            return "Pending"
        run.message = f"init container {container.name} failed"
        return "Failed"
    for container in run.mains:  # all at once
        if container.popen is None and not container.done and not container.restart_at:
            launch(container)
        if container.done:
            _maybe_restart(run, container)
    if any(c.popen is not None or c.restart_at for c in run.mains):
        return "Running"
    failed = [c.name for c in run.mains if c.state["terminated"]["exitCode"] != 0]
    return "Failed" if failed else "Succeeded"


def _needs_restart(run: PodRun, container: ContainerRun) -> bool:
    code = container.state["terminated"]["exitCode"]
    return run.restart_policy == "Always" or (run.restart_policy == "OnFailure" and code != 0)


def _maybe_restart(run: PodRun, container: ContainerRun) -> bool:
    """Schedule a restart if restartPolicy asks for one; True if the container will run again."""
    if not container.done or not _needs_restart(run, container):
        return False
    delay = min(10.0 * 2 ** (container.restarts - 1), 300.0) if container.restarts else 1.0
    container.restart_at = time.monotonic() + delay
    container.last_state = container.state
    container.state = {
        "waiting": {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {delay:.0f}s restarting failed container",
        }
    }
    return True


def _restart_due(run: PodRun) -> None:
    for container in run.containers:
        if container.restart_at and time.monotonic() >= container.restart_at:
            container.restart_at = 0.0
            container.restarts += 1
            launch(container)
