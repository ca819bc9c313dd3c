"""How values look in a terminal: numbers, ages, and colour (only on a TTY, never with NO_COLOR)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import TextIO

PHASE_COLOURS = {
    "Succeeded": "32",  # green
    "Failed": "31",  # red
    "Running": "36",  # cyan
    "Sweeping": "36",
    "Pending": "33",  # yellow
    "WaitingForSweep": "33",
}


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class Painter:
    """Colours text when the stream is a terminal; passes it through otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.on = use_colour(stream or sys.stdout)

    def paint(self, text: str, code: str | None) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on and code else text

    def phase(self, text: str, phase: str | None = None) -> str:
        return self.paint(text, PHASE_COLOURS.get(phase or text.strip()))

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def warn(self, text: str) -> str:
        return self.paint(text, "33")


def lr(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{low:.1e}, {high:.1e}]"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's age: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return "-"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
