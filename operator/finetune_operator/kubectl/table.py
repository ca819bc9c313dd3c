"""The tables of `get` and `compare`: one row per resource, values read from the typed status."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from finetune_operator.api import LRSWEEP, FineTuneJobStatus, LRSweepSpec, LRSweepStatus
from finetune_operator.kubectl import style
from finetune_operator.kubectl.resources import Found

GET_COLUMNS = ("NAME", "PHASE", "LR", "INTERVAL", "BEST LOSS", "PROGRESS", "AGE")
WATCH_WIDTHS = (32, 16, 9, 18, 9, 14, 5)
"""Column widths while watching (rows come one at a time, so widths cannot be measured)."""


@dataclass(frozen=True)
class Row:
    namespace: str
    cells: tuple[str, ...]
    phase: str


def get_row(found: Found, sweeps: dict[tuple[str, str], LRSweepStatus] | None = None) -> Row:
    """A `get` row. A FineTuneJob's interval is its sweep's, moved by the same batch-size scaling as its
    learning rate (when `sweeps` holds that sweep)."""
    status = found.status
    progress = status.progress
    if progress is not None and progress.total_steps:
        done = f"{progress.percent}% {progress.step}/{progress.total_steps}"
    elif status.phase == "Succeeded":
        done = "100%"
    else:
        done = "-"
    if found.kind is LRSWEEP:
        s: LRSweepStatus = status
        lr, best = s.recommended_learning_rate, s.best_loss
        low, high = (s.interval.low, s.interval.high) if s.interval else (None, None)
    else:
        f: FineTuneJobStatus = status
        lr, best = f.learning_rate, _first(f.best_eval_loss, f.eval_loss, progress and progress.eval_loss)
        low = high = None
        sweep = (sweeps or {}).get((found.namespace, f.sweep_name or ""))
        if lr and sweep and sweep.interval and sweep.recommended_learning_rate:
            factor = lr / sweep.recommended_learning_rate
            low, high = sweep.interval.low * factor, sweep.interval.high * factor
    cells = (
        found.ref,
        status.phase,
        style.lr(lr),
        style.interval(low, high),
        style.loss(best),
        done,
        style.age(found.body["metadata"].get("creationTimestamp")),
    )
    return Row(found.namespace, cells, status.phase)


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def sweep_statuses(found: Iterable[Found]) -> dict[tuple[str, str], LRSweepStatus]:
    return {(f.namespace, f.name): f.status for f in found if f.kind is LRSWEEP}


def render(
    header: Sequence[str],
    rows: Sequence[Row],
    painter: style.Painter,
    all_namespaces: bool = False,
    widths: Sequence[int] | None = None,
    with_header: bool = True,
) -> list[str]:
    """Aligned lines like kubectl's (two spaces between columns); the PHASE column coloured."""
    head = ("NAMESPACE", *header) if all_namespaces else tuple(header)
    body = [((r.namespace, *r.cells) if all_namespaces else r.cells, r.phase) for r in rows]
    if widths is None:
        widths = [max(len(c[i]) for c in [head, *(b for b, _ in body)]) for i in range(len(head))]
    elif all_namespaces:
        widths = (16, *widths)
    phase_col = head.index("PHASE") if "PHASE" in head else -1

    def line(cells: Sequence[str], phase: str | None) -> str:
        out = []
        for i, cell in enumerate(cells):
            padded = cell.ljust(widths[i]) if i < len(cells) - 1 else cell
            out.append(painter.phase(padded, phase) if i == phase_col and phase else padded)
        return "  ".join(out).rstrip()

    lines = [line(head, None)] if with_header else []
    return lines + [line(cells, phase) for cells, phase in body]


COMPARE_FIELDS = (
    "PHASE",
    "RECOMMENDED LR",
    "INTERVAL",
    "EVIDENCE",
    "BEST LOSS",
    "MODEL",
    "ADAPTER",
    "BATCH SIZE",
    "METHOD",
    "TRIALS",
    "STEPS SPENT",
    "AGE",
)


def compare_column(found: Found) -> list[str]:
    """One sweep's values for `compare`, in `COMPARE_FIELDS` order."""
    assert found.kind is LRSWEEP
    s: LRSweepStatus = found.status
    spec = found.body.get("spec") or {}
    model = (spec.get("model") or {}).get("name") or "-"
    adapter = s.adapter or ((spec.get("adapter") or {}).get("type")) or "-"
    method = spec.get("method") or LRSweepSpec.model_fields["method"].default
    trials = s.trials or []
    done = sum(1 for t in trials if t.phase == "Succeeded")
    return [
        s.phase,
        style.lr(s.recommended_learning_rate),
        style.interval(s.interval.low, s.interval.high) if s.interval else "-",
        s.evidence or "-",
        style.loss(s.best_loss),
        model,
        adapter,
        str(s.effective_batch_size) if s.effective_batch_size else "-",
        method,
        f"{done}/{len(trials)}" if trials else "-",
        str(s.steps_spent) if s.steps_spent is not None else "-",
        style.age(found.body["metadata"].get("creationTimestamp")),
    ]


def compare_lines(sweeps: Sequence[Found], painter: style.Painter) -> list[str]:
    """Sweeps side by side: a row per field, a column per sweep."""
    columns = [compare_column(f) for f in sweeps]
    head = ["", *(f.ref for f in sweeps)]
    rows = [[name, *(c[i] for c in columns)] for i, name in enumerate(COMPARE_FIELDS)]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = [
        "  ".join(
            painter.bold(h.ljust(w)) if h else h.ljust(w) for h, w in zip(head, widths, strict=True)
        ).rstrip()
    ]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        for i, cell in enumerate(row[1:], start=1):
            padded = cell.ljust(widths[i])
            cells.append(painter.phase(padded, cell) if row[0] == "PHASE" else padded)
        out.append("  ".join(cells).rstrip())
    return out
