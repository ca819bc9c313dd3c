"""Where results go: JSON-lines progress on stdout, the compact result file, the full result on disk.

* stdout carries only JSON lines (``{"event": ..., ...}``); library chatter is sent to stderr.
* ``--result-file`` (default ``/dev/termination-log`` when it exists and is writable) gets the result as
  compact JSON, always ≤ 4096 bytes: curve points and a ``recommend`` result's trial table rounded to 4
  significant digits, every other number exact, the curve downsampled to ≤ 100 points, and shrunk further
  if it still does not fit. The operator decides on the exact numbers, as ``recommend`` does in-process.
* The output directory gets ``result.json`` (the same model, curve ≤ 200 points), ``curve.csv`` (every
  point) and ``curve.png`` for a range test.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from finetune_trainer.config import CURVE_MAX, CurvePoint, RangeTestResult, RecommendResult, Spec

TERMINATION_LOG = "/dev/termination-log"
RESULT_LIMIT = 4096
TERMINATION_CURVE_POINTS = 100


def default_result_file() -> str | None:
    """``/dev/termination-log`` when it exists and is writable (a Kubernetes container), else ``None``."""
    path = Path(TERMINATION_LOG)
    if path.exists() and os.access(path, os.W_OK):
        return str(path)
    return None


def round_sig(value: Any, digits: int = 4) -> Any:
    """Round floats (recursively, in dicts and lists) to ``digits`` significant digits."""
    if isinstance(value, float):
        if value == 0.0 or not math.isfinite(value):
            return value
        return round(value, digits - 1 - math.floor(math.log10(abs(value))))
    if isinstance(value, dict):
        return {k: round_sig(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [round_sig(v, digits) for v in value]
    return value


ROUNDED = frozenset({"curve", "trials"})
"""The bulk a compact result rounds (range-test curves, a ``recommend`` result's trial table: display);
every other number, a trial's intermediate ``evals`` (what a pruner compares) included, stays exact."""


def round_bulk(value: Any, digits: int = 4) -> Any:
    """:func:`round_sig` on the :data:`ROUNDED` entries only, at any depth: the scalars the operator
    decides on (a trial's eval loss, a range test's edge and loss minimum, a recommendation) stay exact."""
    if isinstance(value, dict):
        return {k: round_sig(v, digits) if k in ROUNDED else round_bulk(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [round_bulk(v, digits) for v in value]
    return value


def downsample_indices(n: int, limit: int) -> list[int]:
    """At most ``limit`` indices of ``range(n)``, evenly spread, first and last included."""
    if n <= limit:
        return list(range(n))
    if limit <= 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})


def downsample(points: Sequence[CurvePoint], limit: int) -> list[CurvePoint]:
    return [points[i] for i in downsample_indices(len(points), limit)]


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)


def _finite(data: Any) -> Any:
    """NaN/inf are not JSON: replace them with ``None``."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    return data


def compact_json(result: Spec, limit: int = RESULT_LIMIT) -> str:
    """The result as compact JSON of at most ``limit`` bytes (curve thinned and warnings cut as needed)."""
    if isinstance(result, RangeTestResult):
        result = result.model_copy(update={"curve": downsample(result.curve, TERMINATION_CURVE_POINTS)})
    if isinstance(result, RecommendResult) and result.range_test is not None:
        # the trials and the fit are the evidence here; the range test keeps a sketch of its curve
        sketch = result.range_test.model_copy(update={"curve": downsample(result.range_test.curve, 20)})
        result = result.model_copy(update={"range_test": sketch})
    data = round_bulk(_finite(result.to_wire()))
    text = _dumps(data)
    # Cut in order of least value lost: long warnings, then curve resolution down to 30 points, then
    # warnings, then the rest of the curve.
    steps = (
        lambda d: _cap_warnings(d, 160),
        lambda d: _thin_curve(d, 30),
        lambda d: _cap_warnings(d, 160, keep=len(d.get("warnings") or []) // 2),
        lambda d: _thin_curve(d, 10),
        lambda d: _thin_curve(d, 0),
    )
    for step in steps:
        while len(text.encode()) > limit and step(data):
            text = _dumps(data)
    if len(text.encode()) > limit:  # keep the valid-JSON promise with the scalar essentials
        text = _dumps({k: v for k, v in data.items() if not isinstance(v, list | dict)})
    return text


def _cap_warnings(data: dict[str, Any], chars: int, keep: int | None = None) -> bool:
    """Shorten warnings to ``chars`` and keep the first ``keep``; ``False`` when that changes nothing."""
    warnings = data.get("warnings") or []
    cut = [w[:chars] for w in warnings[: len(warnings) if keep is None else keep]]
    if cut == warnings:
        return False
    data["warnings"] = cut
    return True


def _thin_curve(data: dict[str, Any], floor: int) -> bool:
    """Drop a third of the curve's points, not below ``floor``; ``False`` when at the floor already."""
    curve = data.get("curve") or []
    if len(curve) <= floor:
        return False
    target = max(floor, len(curve) * 2 // 3)
    data["curve"] = [curve[i] for i in downsample_indices(len(curve), target)] if target else []
    return True


def write_result_file(path: str | None, result: Spec) -> None:
    """Write the compact result to ``path`` (no-op for ``None``)."""
    if not path:
        return
    text = compact_json(result)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


class Progress:
    """JSON-lines progress on the real stdout; everything else that prints goes to stderr."""

    def __init__(self, stream: IO[str] | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.started = time.monotonic()
        self._taken = False

    @classmethod
    def take_stdout(cls, enabled: bool = True) -> Progress:
        """Own stdout for JSON lines and point ``sys.stdout`` at stderr, so stray prints cannot corrupt it."""
        progress = cls(sys.stdout, enabled)
        sys.stdout = sys.stderr
        progress._taken = True
        return progress

    def release_stdout(self) -> None:
        """Undo :meth:`take_stdout` (for callers that run the CLI in-process)."""
        if self._taken:
            sys.stdout = self.stream  # type: ignore[assignment]
            self._taken = False

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "t": round(time.monotonic() - self.started, 3)}
        record.update({k: v for k, v in fields.items() if v is not None})
        self.stream.write(_dumps(round_sig(_finite(record), 6)) + "\n")
        self.stream.flush()


def write_outputs(
    output_dir: str | Path,
    result: Spec,
    raw_curve: Sequence[dict[str, float]] | None = None,
) -> Path:
    """``result.json`` (+ ``curve.csv`` and ``curve.png`` for a range test) in ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(result, RangeTestResult):
        result = result.model_copy(update={"curve": downsample(result.curve, CURVE_MAX)})
    (out / "result.json").write_text(json.dumps(_finite(result.to_wire()), indent=2) + "\n")
    if raw_curve:
        keys = list(raw_curve[0])
        lines = [",".join(keys)] + [",".join(repr(row[k]) for k in keys) for row in raw_curve]
        (out / "curve.csv").write_text("\n".join(lines) + "\n")
    if isinstance(result, RangeTestResult):
        from finetune_trainer.plot import plot_range_test

        plot_range_test(result, out / "curve.png", raw_curve)
    return out / "result.json"
