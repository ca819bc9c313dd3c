"""Process-level facts and plumbing: distributed rank, termination signals.

A SIGTERM/SIGINT sets a flag; the training loop checks it after each optimizer step (saving a checkpoint
when it trains) and stops, and the CLI exits with ``INTERRUPTED``. Outside the loop (loading, tokenising)
the signal raises :class:`Interrupted` at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from finetune_trainer.exitcodes import Interrupted


def world_size() -> int:
    """Processes in the job (``torchrun`` sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 writes progress, results and serves metrics; the other ranks only train."""
    return rank() == 0


class StopFlag:
    """Set by SIGTERM/SIGINT. ``in_loop`` defers the stop to the training loop's next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_loop = False
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        with self._lock:
            self.signum = signum
        if not self.in_loop:
            raise Interrupted(f"stopped by {signal.Signals(signum).name} before training started")

    def install(self) -> None:
        """Handle SIGTERM/SIGINT (main thread only); :meth:`uninstall` puts the previous handlers back."""
        self.signum = None
        self.in_loop = False
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self.handle)

    def uninstall(self) -> None:
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived."""
        if self.signum is not None:
            raise Interrupted(f"stopped by {signal.Signals(self.signum).name}")


STOP = StopFlag()


def leave_process_group() -> None:
    """Destroy this process's default process group, if a distributed run made one (accelerate does, under
    torchrun), while the interpreter is still whole.

    Left to interpreter exit, gloo's worker threads may still hold tensors with Python references; freeing
    them during finalization takes the GIL of a dying interpreter and aborts the process (SIGABRT). A rank
    other than 0 ends first, while rank 0 still writes the model; if it aborts, torchrun stops rank 0 and
    the pod fails after a good run. Called only when a command returns (any exit code), never after an
    exception: with a collective still pending (a lost peer), destroying the group would wait out that
    collective's timeout.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group()
    except Exception as exc:  # the command's work is done and reported; a failed teardown only warns
        print(f"warning: leaving the process group failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def configure_cpu_threads() -> int | None:
    """On a CPU-only machine use one intra-op thread unless ``OMP_NUM_THREADS`` says otherwise.

    Tiny CPU models gain nothing from threads and lose a lot when the cores are shared: measured on this
    project's 2-core CI machine under load, a 2-layer GPT-2 step took 0.88 s with 2 threads, 0.023 s with 1.
    Returns the thread count set, or ``None`` when left alone (a GPU is present or the env decides).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    if torch.cuda.is_available():
        return None
    torch.set_num_threads(1)
    return 1
