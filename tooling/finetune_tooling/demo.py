"""`make demo`: the whole product on this machine, no cluster needed.

Starts the local control plane and pod runner, installs the CRDs, runs the operator (a subprocess, as in a
cluster), builds a tiny random-weight GPT-2 and a toy dataset, applies `examples/demo/` (an adaptive LRSweep
and a FineTuneJob with `learningRate: auto`, which runs one too), waits, and prints what the operator found:
the recommended learning rate, its interval and evidence, every trial, and the fine-tune's losses.
"""

from __future__ import annotations

import argparse
import json
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


def plot_curve(status: dict[str, Any], out: Path) -> Path | None:
    """Write the sweep's loss-vs-LR curve as PNG with the trainer's own plotter."""
    if not status.get("curve"):
        return None
    result = {
        "kind": "rangeTest",
        **{
            k: status[k]
            for k in ("recommendedLearningRate", "rule", "suggestions", "curve", "effectiveBatchSize")
            if k in status
        },
    }
    result_file = out.with_suffix(".json")
    result_file.write_text(json.dumps(result))
    subprocess.run(
        ["finetune-trainer", "plot", str(result_file), "-o", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"},
    )
    return out


def run(demo_dir: Path, timeout: float) -> int:
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
        finally:
            operator.terminate()
            operator.wait(timeout=30)
            log.close()
    return report(results, demo_dir)


def report(results: dict[str, dict], demo_dir: Path) -> int:
    ok = True
    print()
    for name, obj in results.items():
        status = obj.get("status") or {}
        ok &= status.get("phase") == "Succeeded"
        if obj["kind"] == "LRSweep":
            report_sweep(name, obj["spec"].get("method", "adaptive"), status, demo_dir)
        else:
            say(
                f"FineTuneJob {name}: {status.get('phase')}: learning rate {_g(status.get('learningRate'))} "
                f"from {status.get('learningRateSource')}; final eval loss {_g(status.get('evalLoss'))} "
                f"(best {_g(status.get('bestEvalLoss'))}, train loss {_g(status.get('trainLoss'))})"
            )
        if status.get("phase") != "Succeeded":
            say(f"    message: {status.get('message')}")
    return 0 if ok else 1


def report_sweep(name: str, method: str, status: dict[str, Any], demo_dir: Path) -> None:
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
    png = plot_curve(status, demo_dir / f"{name}-curve.png")
    if png:
        say(f"    range-test loss-vs-LR plot: {png}")


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
    args = p.parse_args(argv)
    started = time.monotonic()
    code = run(args.dir.resolve(), args.timeout)
    say(f"done in {time.monotonic() - started:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
