"""A real Prometheus for tests and demos: Debian's package, unpacked into the cache, run on loopback."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from .processes import free_port

INSTALL = Path(__file__).resolve().parents[2] / "scripts" / "install-prometheus"


@functools.cache
def prometheus_binaries() -> tuple[str, str] | None:
    """(prometheus, promtool): from PATH, else installed from Debian's package into the cache."""
    on_path = shutil.which("prometheus"), shutil.which("promtool")
    if all(on_path):
        return on_path  # type: ignore[return-value]
    try:
        out = subprocess.run(
            [str(INSTALL), "prometheus"], capture_output=True, text=True, timeout=600, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    paths = out.stdout.split()
    return (paths[0], paths[1]) if len(paths) >= 2 else None


class Prometheus:
    """The HTTP query API of a running Prometheus."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:  # 400 for a bad query: the body says why
            body = exc.read()
            try:
                return json.loads(body)
            except ValueError:  # not JSON: "Service Unavailable" while it starts (or restarts) under load
                return {"status": "error", "error": f"HTTP {exc.code}: {body[:200].decode(errors='replace')}"}

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def wait_for(self, expr: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.query(expr).get("data", {}).get("result"):
                    return
            time.sleep(0.25)
        raise TimeoutError(f"Prometheus never returned data for {expr}")


@contextlib.contextmanager
def running_prometheus(
    binary: str,
    workdir: Path,
    targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    job: str = "finetune-operator",
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host:port) every second as `job`, evaluating `rule_files`."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
