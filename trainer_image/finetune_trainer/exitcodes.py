"""The trainer's exit codes and the errors that carry them.

The operator's Job pod-failure-policy keys on these numbers (a bad config is never retried; an interrupted
or out-of-memory pod may be), so they are part of the contract and never renumbered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from finetune_trainer.config import ExitCode

__all__ = ["ConfigError", "DivergedError", "ExitCode", "Interrupted", "TrainerError", "config_errors"]
# ExitCode (OK 0, ERROR 1, BAD_CONFIG 2, DIVERGED 3, OUT_OF_MEMORY 4, INTERRUPTED 5, NO_RECOMMENDATION 6)
# lives in the contract module so the operator reads the same numbers; this module adds the exceptions that
# carry them.


class TrainerError(Exception):
    """An error with a known exit code and a one-line message for the user."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(TrainerError):
    """Bad input: names the field and the fix. Raised before any output is written."""

    exit_code = ExitCode.BAD_CONFIG

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}; {fix}")


class DivergedError(TrainerError):
    """The loss became NaN/inf during training."""

    exit_code = ExitCode.DIVERGED


class Interrupted(TrainerError):
    """A termination signal arrived."""

    exit_code = ExitCode.INTERRUPTED


@contextmanager
def config_errors(section: str, fix: str) -> Iterator[None]:
    """Where the config becomes library objects (training arguments, the trainer, the LR schedule), a
    ValueError or TypeError is the config's fault (e.g. numpy refusing a seed): raise it as a
    :class:`ConfigError` naming `section`, so the pod exits with BAD_CONFIG and is never retried."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ConfigError(section, first, fix) from exc
