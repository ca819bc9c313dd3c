"""Operator scale: many LRSweeps at once on the local control plane (no pod runner, so no pod ever runs).

    python benchmarks/operator_scale.py [--counts 100 500] [--large]   # --large adds 1000

Per count, with a fresh operator process (``python -m finetune_operator run``, as in a cluster): create N
LRSweeps as fast as one client can; a watch on Jobs records when each sweep's child Job appears. Reported:
create→Job latency p50/p95/p99 (client clock: the create call's return → the Job's ADDED watch event), time
until every sweep has a Job, the operator's peak RSS and CPU seconds (``/proc`` via psutil) during the burst
and during a steady-state window afterwards (every sweep unfinished, nothing changing: reconciles are
driven by watch events, so this should be near zero), then the time to delete every sweep and for the
garbage collector to remove every Job and pod.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, percentile, table, write_results

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "lrsweeps"


def sweep(name: str) -> dict[str, Any]:
    """A valid LRSweep (the demo's shape); its pods never run here, so the paths need not exist."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LRSweep",
        "metadata": {"name": name, "labels": {"benchmark": "operator-scale"}},
        "spec": {
            "model": {"name": "/models/tiny-gpt2"},
            "dataset": {"files": ["/data/toy.jsonl"]},
            "optimization": {"batchSize": 16, "maxSeqLength": 32},
            "rangeTest": {"minLearningRate": 1e-6, "maxLearningRate": 1.0, "steps": 60},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
        },
    }


@dataclass
class Sampler:
    """Samples a process's RSS and CPU time every ``period`` seconds in a thread."""

    pid: int
    period: float = 0.25
    peak_rss: int = 0
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (t, cpu seconds, rss)

    def __post_init__(self) -> None:
        import psutil

        self._proc = psutil.Process(self.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> tuple[float, int]:
        try:
            with self._proc.oneshot():
                t = self._proc.cpu_times()
                rss = self._proc.memory_info().rss
        except Exception:
            return 0.0, 0
        cpu = t.user + t.system
        self.peak_rss = max(self.peak_rss, rss)
        self.samples.append((time.monotonic(), cpu, rss))
        return cpu, rss

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class JobWatch:
    """Records the client-clock time of each Job's ADDED event, keyed by its owning sweep's name."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client, watch

        self.seen: dict[str, float] = {}
        self._batch = client.BatchV1Api(api_client)
        self._namespace = namespace
        self._watch = watch.Watch()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rv = self._batch.list_namespaced_job(self._namespace).metadata.resource_version
        self._ready.set()
        while True:
            try:
                for event in self._watch.stream(
                    self._batch.list_namespaced_job,
                    self._namespace,
                    resource_version=rv,
                    timeout_seconds=600,
                ):
                    now = time.monotonic()
                    obj = event["object"]
                    rv = obj.metadata.resource_version
                    if event["type"] != "ADDED":
                        continue
                    for ref in obj.metadata.owner_references or []:
                        if ref.kind == "LRSweep":
                            self.seen.setdefault(ref.name, now)
                return
            except Exception:
                if self._watch._stop:
                    return
                time.sleep(0.1)

    def start(self) -> JobWatch:
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._watch.stop()


@dataclass
class Round:
    count: int
    create_seconds: float
    latencies: list[float]
    all_jobs_seconds: float | None
    missing: int
    burst_cpu: float
    peak_rss_mib: float
    steady_cpu_pct: float
    steady_window: float
    delete_seconds: float | None
    operator_errors: int


def _count(list_call: Any, namespace: str, selector: str | None = None) -> int:
    kwargs = {"label_selector": selector} if selector else {}
    return len(list_call(namespace, **kwargs).items)


def _until_listed(custom: Any, plural: str, timeout: float = 30.0) -> None:
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    while True:
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
            return
        except ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_round(cluster: Any, count: int, timeout: float, steady: float, log: Any) -> Round:
    from kubernetes import client

    from finetune_localcluster.processes import free_port

    api_client = cluster.api_client()
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    namespace = f"scale-{count}-{int(time.time()) % 100000}"
    core.create_namespace({"metadata": {"name": namespace}})
    for plural in (PLURAL, "finetunejobs"):  # CRD storage may still be initialising (429) after apply
        _until_listed(custom, plural)
    env = {**cluster.env(), "PYTHONUNBUFFERED": "1"}
    logfile = open(f"/tmp/operator-scale-{count}.log", "w")  # noqa: SIM115 (closed below)
    operator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finetune_operator",
            "run",
            "--metrics-port",
            str(free_port()),
            "--health-port",
            "0",
        ],
        env=env,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        watcher = JobWatch(api_client, namespace).start()
        # Warm-up: one sweep through to its Job, so start-up is not counted in the latencies.
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, sweep("warmup"))
        deadline = time.monotonic() + 120
        while "warmup" not in watcher.seen and time.monotonic() < deadline:
            time.sleep(0.1)
        if "warmup" not in watcher.seen:
            raise RuntimeError("the operator did not create the warm-up Job in 120 s (see the operator log)")
        sampler = Sampler(operator.pid).start()
        cpu0, _ = sampler.sample()
        created: dict[str, float] = {}
        t0 = time.monotonic()
        for i in range(count):
            name = f"s{i:04d}"
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, sweep(name))
            created[name] = time.monotonic()
        create_seconds = time.monotonic() - t0
        log(f"  created {count} sweeps in {create_seconds:.1f}s")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(n in watcher.seen for n in created):
            time.sleep(0.05)
        done = [n for n in created if n in watcher.seen]
        all_jobs = max(watcher.seen[n] for n in created) - t0 if len(done) == count else None
        cpu1, _ = sampler.sample()
        log(f"  {len(done)}/{count} Jobs; all after {all_jobs}")
        # Steady state: every sweep unfinished, nothing changes.
        s0 = time.monotonic()
        time.sleep(steady)
        cpu2, _ = sampler.sample()
        steady_window = time.monotonic() - s0
        latencies = [watcher.seen[n] - created[n] for n in done]
        # Cleanup: delete every sweep; the garbage collector removes the Jobs, then their pods.
        t1 = time.monotonic()
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        delete_seconds = None
        deadline = time.monotonic() + timeout
        selector = "app.kubernetes.io/managed-by=finetune-operator"
        while time.monotonic() < deadline:
            left = (
                len(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"])
                + _count(batch.list_namespaced_job, namespace)
                + _count(core.list_namespaced_pod, namespace, selector)
            )
            if left == 0:
                delete_seconds = time.monotonic() - t1
                break
            time.sleep(0.25)
        sampler.stop()
        watcher.stop()
        log(f"  cleanup {delete_seconds}s, peak RSS {sampler.peak_rss / 2**20:.0f} MiB")
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        logfile.close()
    errors = sum(
        1
        for line in Path(logfile.name).read_text(errors="replace").splitlines()
        if " ERROR " in line or "Traceback" in line
    )
    core.delete_namespace(namespace)
    return Round(
        count=count,
        create_seconds=create_seconds,
        latencies=latencies,
        all_jobs_seconds=all_jobs,
        missing=count - len(done),
        burst_cpu=cpu1 - cpu0,
        peak_rss_mib=sampler.peak_rss / 2**20,
        steady_cpu_pct=100.0 * (cpu2 - cpu1) / steady_window,
        steady_window=steady_window,
        delete_seconds=delete_seconds,
        operator_errors=errors,
    )


def report(rounds: list[Round]) -> str:
    rows = []
    for r in rounds:
        lat = r.latencies or [float("nan")]
        rows.append(
            [
                r.count,
                r.create_seconds,
                percentile(lat, 50),
                percentile(lat, 95),
                percentile(lat, 99),
                r.all_jobs_seconds,
                r.missing,
                r.burst_cpu,
                r.peak_rss_mib,
                r.steady_cpu_pct,
                r.delete_seconds,
                r.operator_errors,
            ]
        )
    return table(
        [
            "sweeps",
            "create (s)",
            "p50 (s)",
            "p95 (s)",
            "p99 (s)",
            "all Jobs (s)",
            "missing",
            "burst CPU (s)",
            "peak RSS (MiB)",
            "steady CPU %",
            "cleanup (s)",
            "operator errors",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="*", default=[100, 500], help="sweeps per round")
    parser.add_argument("--large", action="store_true", help="add a 1000-sweep round")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Jobs / cleanup")
    parser.add_argument("--steady", type=float, default=15.0, help="steady-state CPU window (s)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    counts = list(args.counts) + ([1000] if args.large and 1000 not in args.counts else [])

    from finetune_localcluster.cluster import apply_crds, load_yaml_documents, local_cluster

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    os.environ.pop("KUBECONFIG", None)  # always the local control plane, never a real cluster
    rounds = []
    with local_cluster(runner=False, use_kubeconfig_env=False) as cluster:
        log(f"control plane up in {cluster.start_seconds:.1f}s")
        apply_crds(cluster.api_client(), load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))
        for count in counts:
            log(f"round: {count} sweeps")
            rounds.append(run_round(cluster, count, args.timeout, args.steady, log))
    body = "\n".join(
        [
            "## Results",
            "",
            "Latency = client clock from the create call's return to the Job's ADDED watch event. CPU in "
            "operator-process seconds (user + system); *steady CPU %* = the operator's CPU share while "
            "every sweep is unfinished and nothing changes (reconciles are event-driven; the resync safety "
            "net is minutes away). "
            "Cleanup = delete-collection of the sweeps until no sweep, Job or pod is left "
            "(Kubernetes garbage collector). Control plane, operator and client share this machine's CPUs.",
            "",
            report(rounds),
            "",
            "Goals: p50 ≤ 0.5 s and p99 ≤ 2 s at 500 sweeps; RSS ≤ 200 MiB at 1000.",
        ]
    )
    print(body)
    if not args.no_write:
        log(f"wrote {write_results('operator_scale', 'Operator scale', body, argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
