"""`make demo`: the whole product on this machine, no cluster needed.

Starts the local control plane and pod runner, installs the CRDs, runs the operator (a subprocess, as in a
cluster), builds a tiny random-weight GPT-2 and a toy dataset, applies `examples/demo/` (an adaptive LRSweep
and a FineTuneJob with `learningRate: auto`, which runs one too), waits, and prints what the operator found:
the recommended learning rate, its interval and evidence, every trial, and the fine-tune's losses; then
`kubectl finetune describe` of the sweep and the plugin's commands to try (`--keep` keeps the cluster up).
"""

from __future__ import annotations

import argparse
import os
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from finetune_localcluster.cluster import apply_crds, load_yaml_documents, local_cluster
from finetune_localcluster.processes import free_port
from finetune_operator import naming
from finetune_operator.api import API_GROUP, KINDS, VERSION

REPO = Path(__file__).resolve().parents[2]
PLURALS = {k.kind: k.plural for k in KINDS}


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def render_examples(demo_dir: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((REPO / "examples" / "demo").glob("*.yaml")):
        text = string.Template(path.read_text()).substitute(DEMO_DIR=str(demo_dir))
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def prepare_model(demo_dir: Path) -> None:
    """A tiny GPT-2 and a toy dataset, made by the trainer package (the operator never imports it)."""
    demo_dir.mkdir(parents=True, exist_ok=True)
    if not (demo_dir / "tiny-gpt2" / "config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "finetune_trainer.tiny_model", str(demo_dir / "tiny-gpt2")], check=True
        )
    if not (demo_dir / "toy.jsonl").exists():
        subprocess.run(
            [sys.executable, "-m", "finetune_trainer.tiny_model", "--data", str(demo_dir / "toy.jsonl")],
            check=True,
        )


def wait_terminal(api: client.CustomObjectsApi, namespace: str, kind: str, name: str, timeout: float) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        obj = api.get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURALS[kind], name)
        status = obj.get("status") or {}
        line = f"{kind} {name}: {status.get('phase', 'Pending')} {status.get('message') or ''}".strip()
        if line != last:
            say(line)
            last = line
        if status.get("phase") in ("Succeeded", "Failed"):
            return obj
        time.sleep(1)
    raise TimeoutError(f"{kind} {name} did not finish in {timeout:.0f}s")


PLUGIN = Path(sys.executable).with_name("kubectl-finetune")
"""`kubectl finetune` (the `kubectl-finetune` script this environment installed)."""


def plugin(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `kubectl finetune ARGS` on the demo's cluster (namespace default)."""
    argv = [str(PLUGIN), *args, "-n", "default", "--kubeconfig", str(kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def plot_curve(name: str, kubeconfig: Path, out: Path) -> Path | None:
    """Write the sweep's loss-vs-LR plot as PNG with `kubectl finetune plot` (the trainer's drawing)."""
    done = plugin(kubeconfig, "plot", f"lrs/{name}", "-o", str(out))
    if done.returncode != 0:
        say(f"    no plot: {done.stderr.strip()}")
        return None
    return out


def trial_logs_hint(name: str, status: dict[str, Any]) -> str | None:
    """`kubectl finetune logs` of the sweep's best trial, one that ran (stage 2 may have been skipped)."""
    ran = [t for t in status.get("trials") or [] if t.get("evalLoss") is not None and not t.get("diverged")]
    if not ran:
        return None
    best = min(ran, key=lambda t: t["evalLoss"])
    return f"kubectl finetune logs lrs/{name} --trial {best['index']} --stage {best['stage']}"


def try_the_plugin(
    cluster: Any, docs: list[dict[str, Any]], results: dict[str, dict], demo_dir: Path, keep: bool
) -> None:
    """`kubectl finetune describe` of the sweep, then the plugin's commands to try on this cluster."""
    sweeps = [d["metadata"]["name"] for d in docs if d["kind"] == "LRSweep"]
    jobs = [d["metadata"]["name"] for d in docs if d["kind"] == "FineTuneJob"]
    if sweeps:
        print()
        say(f"kubectl finetune describe lrs/{sweeps[0]}")
        print(plugin(cluster.kubeconfig, "describe", f"lrs/{sweeps[0]}").stdout)
    kubectl_dir = Path(cluster.tool("kubectl")).parent
    say("try the kubectl plugin (`kubectl finetune`, installed as kubectl-finetune):")
    lines = [f"export KUBECONFIG={cluster.kubeconfig} PATH={PLUGIN.parent}:{kubectl_dir}:$PATH"]
    lines += ["kubectl finetune get -A", "kubectl finetune get -w"]
    lines += [f"kubectl finetune describe lrs/{s}" for s in sweeps]
    lines += [f"kubectl finetune describe ftj/{j}" for j in jobs]
    lines += [f"kubectl finetune plot lrs/{s} -o {demo_dir / s}.png" for s in sweeps[:1]]
    auto = [
        naming.auto_sweep(d["metadata"]["name"])
        for d in docs
        if d["kind"] == "FineTuneJob" and "auto" in d["spec"].get("learningRate", {})
    ]
    if sweeps and auto:
        lines.append(f"kubectl finetune compare {' '.join(sweeps + auto)}")
    lines += [f"kubectl finetune logs ftj/{j}" for j in jobs[:1]]
    hints = (trial_logs_hint(s, results.get(s, {}).get("status") or {}) for s in sweeps[:1])
    lines += [hint for hint in hints if hint]
    lines += [f"kubectl finetune wait ftj/{j} --for=Succeeded --timeout 5m" for j in jobs[:1]]
    for line in lines:
        print(f"    {line}")
    if not keep:
        say("(the local cluster stops with the demo; `make demo KEEP=1` keeps it up to try these)")
        return
    say("the cluster stays up for these until Ctrl-C")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping")


def run(demo_dir: Path, timeout: float, keep: bool = False) -> int:
    prepare_model(demo_dir)
    docs = render_examples(demo_dir)
    say("starting the local control plane and pod runner (the first run builds the binaries: minutes)")
    with local_cluster(runner=True, gpus=0, use_kubeconfig_env=False) as cluster:
        say(f"control plane up in {cluster.start_seconds:.1f}s; kubeconfig: {cluster.kubeconfig}")
        say(f"  try: kubectl --kubeconfig {cluster.kubeconfig} get lrs,ftj,jobs,pods -A")
        api_client = cluster.api_client()
        apply_crds(api_client, load_yaml_documents(sorted((REPO / "crds").glob("*.yaml"))))
        metrics_port = free_port()
        env = {**cluster.env(), "FINETUNE_POLL_INTERVAL": "2", "PYTHONUNBUFFERED": "1"}
        log = (demo_dir / "operator.log").open("w")
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "finetune_operator",
                "run",
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                "0",
                "--poll-interval",
                "2",
                "--default-cpu",
                "1",
                "--default-memory",
                "2Gi",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        say(f"operator running (log {log.name}, metrics http://127.0.0.1:{metrics_port}/metrics)")
        try:
            custom = client.CustomObjectsApi(api_client)
            for doc in docs:
                custom.create_namespaced_custom_object(
                    API_GROUP, VERSION, "default", PLURALS[doc["kind"]], doc
                )
                say(f"applied {doc['kind']} {doc['metadata']['name']}")
            results = {
                d["metadata"]["name"]: wait_terminal(
                    custom, "default", d["kind"], d["metadata"]["name"], timeout
                )
                for d in docs
            }
            code = report(results, demo_dir, cluster.kubeconfig)
            try_the_plugin(cluster, docs, results, demo_dir, keep)
        finally:
            operator.terminate()
            operator.wait(timeout=30)
            log.close()
    return code


def report(results: dict[str, dict], demo_dir: Path, kubeconfig: Path) -> int:
    ok = True
    print()
    for name, obj in results.items():
        status = obj.get("status") or {}
        ok &= status.get("phase") == "Succeeded"
        if obj["kind"] == "LRSweep":
            report_sweep(name, obj["spec"].get("method", "adaptive"), status, demo_dir, kubeconfig)
        else:
            say(
                f"FineTuneJob {name}: {status.get('phase')}: learning rate {_g(status.get('learningRate'))} "
                f"from {status.get('learningRateSource')}; final eval loss {_g(status.get('evalLoss'))} "
                f"(best {_g(status.get('bestEvalLoss'))}, train loss {_g(status.get('trainLoss'))})"
            )
        if status.get("phase") != "Succeeded":
            say(f"    message: {status.get('message')}")
    return 0 if ok else 1


def report_sweep(name: str, method: str, status: dict[str, Any], demo_dir: Path, kubeconfig: Path) -> None:
    interval = status.get("interval") or {}
    span = f" in [{_g(interval.get('low'))}, {_g(interval.get('high'))}]" if interval else ""
    say(
        f"LRSweep {name} ({method}): {status.get('phase')}: recommended learning rate "
        f"{_g(status.get('recommendedLearningRate'))}{span} (effective batch size "
        f"{status.get('effectiveBatchSize')})"
    )
    if method == "adaptive":
        edge = (status.get("rangeTest") or {}).get("edgeLearningRate")
        say(
            f"    evidence {status.get('evidence')}, decided by {status.get('decidedBy')}; range-test edge "
            f"{_g(edge)}; {len(status.get('trials') or [])} trials, {status.get('stepsSpent')} steps in all"
        )
        for t in status.get("trials") or []:
            loss = "diverged" if t.get("diverged") else f"eval loss {_g(t.get('evalLoss'))}"
            trial = f"trial {t['stage']}-{t['index']}: lr {_g(t['learningRate'])}, {t.get('steps')} steps"
            say(f"    {trial}, {loss}")
    else:
        say(f"    rule {status.get('rule')}")
        for rule, value in (status.get("suggestions") or {}).items():
            say(f"    rule {rule:<16} suggests {_g(value)}")
    png = plot_curve(name, kubeconfig, demo_dir / f"{name}-curve.png")
    if png:
        say(f"    loss-vs-LR plot (range test, trials, interval): {png}")


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune_tooling.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("FINETUNE_DEMO_DIR", "/tmp/finetune-demo")),
        help="where the tiny model, data, logs and plots go",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for each resource")
    p.add_argument("--keep", action="store_true", help="keep the cluster up at the end (until Ctrl-C)")
    args = p.parse_args(argv)
    started = time.monotonic()
    code = run(args.dir.resolve(), args.timeout, args.keep)
    say(f"done in {time.monotonic() - started:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
