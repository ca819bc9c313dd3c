"""`kubectl finetune` against a real API server: every subcommand on LRSweeps and FineTuneJobs in each
phase, their status written by the operator's own reconcile (see `reconciling`)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from reconciling import Reconciler

from finetune_localcluster.cluster import apply_crds, load_yaml_documents
from finetune_localcluster.pytest_plugin import CRD_DIR
from finetune_operator import naming
from finetune_operator.api import FINETUNEJOB, LRSWEEP
from finetune_operator.kubectl.cli import main
from finetune_operator.kubectl.errors import ExitCode
from finetune_trainer import cli as trainer_cli

pytestmark = pytest.mark.integration

PLUGIN = Path(sys.executable).with_name("kubectl-finetune")
ADAPTIVE = {"adaptive": {"candidates": 5, "trialSteps": 8, "parallelism": 2}}
SECOND = {**ADAPTIVE, "model": {"name": "/models/tiny-llama"}, "optimization": {"batchSize": 4}}
FLAT = {**ADAPTIVE, "model": {"name": "/models/flat"}}
GRID = {"method": "grid", "trials": {"learningRates": [1e-4, 1e-3, 1e-2], "steps": 20}}


@pytest.fixture(scope="module")
def fleet(kube_cluster, kube_api, crds_installed) -> Iterator[tuple[str, Reconciler]]:
    """One namespace with resources in every phase, reconciled by the operator's code."""
    core = client.CoreV1Api(kube_api)
    ns = f"kubectl-plugin-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"finetune.dev/test": "true"}}})
    r = Reconciler(kube_api, ns)
    r.create(LRSWEEP, "pending", ADAPTIVE)
    r.reconcile(LRSWEEP, "pending")
    r.create(LRSWEEP, "running", ADAPTIVE)
    r.run_sweep("running", until=2)
    r.create(LRSWEEP, "adaptive", ADAPTIVE)
    r.run_sweep("adaptive")
    r.create(LRSWEEP, "tiny-llama", SECOND)
    r.run_sweep("tiny-llama")
    r.create(LRSWEEP, "flat", FLAT)
    r.run_sweep("flat", loss=lambda lr: 2.0)
    r.create(LRSWEEP, "grid", GRID)
    r.run_sweep("grid")
    tuned = {
        "learningRate": {"fromSweep": {"name": "adaptive", "scale": "sqrt"}},
        "optimization": {"batchSize": 32},
    }
    r.create(FINETUNEJOB, "tuned", tuned)
    r.run_finetune("tuned")
    r.create(FINETUNEJOB, "waiting", {"learningRate": {"fromSweep": {"name": "not-yet"}}})
    r.reconcile(FINETUNEJOB, "waiting")
    r.create(FINETUNEJOB, "fixed", {"learningRate": {"value": 3e-4}})
    r.reconcile(FINETUNEJOB, "fixed")
    r.reconcile(FINETUNEJOB, "fixed")
    try:
        yield ns, r
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(ns, propagation_policy="Background")


def run(cluster, *argv: str) -> tuple[int, str, str]:
    """The plugin in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--kubeconfig", str(cluster.kubeconfig)], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines()[1:]}


# ---------------------------------------------------------------------------------------------- get


def test_get_shows_sweeps_and_finetunes_in_every_phase(kube_cluster, fleet):
    ns, r = fleet
    code, out, _ = run(kube_cluster, "get", "-n", ns)
    assert code == 0, out
    header, table = out.splitlines()[0], rows(out)
    assert header.split() == ["NAME", "PHASE", "LR", "INTERVAL", "BEST", "LOSS", "PROGRESS", "AGE"]
    phases = {name: cells[1] for name, cells in table.items()}
    assert phases == {
        "lrs/pending": "Pending",
        "lrs/running": "Running",
        "lrs/adaptive": "Succeeded",
        "lrs/tiny-llama": "Succeeded",
        "lrs/flat": "Failed",
        "lrs/grid": "Succeeded",
        "ftj/tuned": "Succeeded",
        "ftj/waiting": "WaitingForSweep",
        "ftj/fixed": "Running",
    }
    sweep = r.get(LRSWEEP, "adaptive")["status"]
    assert table["lrs/adaptive"][2] == f"{sweep['recommendedLearningRate']:.2e}"
    assert table["lrs/adaptive"][3:5] == [
        f"[{sweep['interval']['low']:.1e},",
        f"{sweep['interval']['high']:.1e}]",
    ]
    assert table["lrs/adaptive"][5] == f"{sweep['bestLoss']:.4f}"
    ftj = r.get(FINETUNEJOB, "tuned")["status"]
    assert table["ftj/tuned"][2] == f"{ftj['learningRate']:.2e}"
    scale = ftj["learningRate"] / sweep["recommendedLearningRate"]
    assert scale == pytest.approx(2.0), "sqrt scaling from batch 8 to 32"
    assert table["ftj/tuned"][3] == f"[{sweep['interval']['low'] * scale:.1e},", (
        "the sweep's interval, scaled"
    )
    assert "\033[" not in out, "no colour when stdout is not a terminal"


def test_get_names_json_yaml_and_all_namespaces(kube_cluster, fleet):
    ns, _ = fleet
    code, out, _ = run(kube_cluster, "get", "lrs/adaptive", "ftj/tuned", "-n", ns, "-o", "json")
    assert code == 0
    items = json.loads(out)["items"]
    assert [(i["kind"], i["metadata"]["name"]) for i in items] == [
        ("LRSweep", "adaptive"),
        ("FineTuneJob", "tuned"),
    ]
    assert items[0]["status"]["phase"] == "Succeeded"
    code, out, _ = run(kube_cluster, "get", "-n", ns, "-o", "yaml")
    assert code == 0 and len(yaml.safe_load(out)["items"]) == 9
    code, out, _ = run(kube_cluster, "get", "-A")
    assert code == 0 and out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == [ns, "lrs/adaptive"] for line in out.splitlines())


def test_get_watch_as_json_prints_one_object_per_change(kube_cluster, fleet):
    ns, _ = fleet
    code, out, _ = run(
        kube_cluster, "get", "lrs/adaptive", "-w", "-o", "json", "--request-timeout", "1", "-n", ns
    )
    assert code == 0
    first = json.JSONDecoder().raw_decode(out)[0]
    assert (first["kind"], first["metadata"]["name"], first["status"]["phase"]) == (
        "LRSweep",
        "adaptive",
        "Succeeded",
    )


def test_get_colours_phases_on_a_terminal(kube_cluster, fleet):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    ns, _ = fleet
    out = Terminal()
    assert main(["get", "-n", ns, "--kubeconfig", str(kube_cluster.kubeconfig)], out=out) == 0
    assert "\033[32mSucceeded" in out.getvalue() and "\033[31mFailed" in out.getvalue()


def test_get_watch_prints_a_row_per_change(kube_cluster, fleet):
    ns, r = fleet
    r.create(LRSWEEP, "watched", ADAPTIVE)
    argv = [str(PLUGIN), "get", "-w", "-n", ns, "--kubeconfig", str(kube_cluster.kubeconfig)]
    proc = subprocess.Popen([*argv, "--request-timeout", "60"], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("lrs/watched") for line in lines), "the initial row")
        r.run_sweep("watched")
        wait_until(lambda: any(_row(line, "lrs/watched", "Succeeded") for line in lines), "the Succeeded row")
    finally:
        proc.terminate()
        proc.wait(10)
    print("".join(lines))
    watched = [line.split()[1] for line in lines if line.startswith("lrs/watched")]
    assert lines[0].split()[0] == "NAME"
    assert watched[0] == "Pending" and "Running" in watched and watched[-1] == "Succeeded"
    rows = [tuple(line.split()[:-1]) for line in lines if line.startswith("lrs/watched")]  # less AGE
    assert all(a != b for a, b in itertools.pairwise(rows)), "a row repeats the last but for its age"


def _row(line: str, name: str, phase: str) -> bool:
    return line.split()[:2] == [name, phase]


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- describe


def test_describe_a_sweep_says_why_this_learning_rate(kube_cluster, fleet):
    ns, r = fleet
    code, out, _ = run(kube_cluster, "describe", "adaptive", "-n", ns)
    assert code == 0, out
    print(out)
    status = r.get(LRSWEEP, "adaptive")["status"]
    lr = f"{status['recommendedLearningRate']:.2e}"
    assert f"Recommended:  {lr}  (rule adaptive, decided by stage-2-fit, evidence Fitted)" in out
    assert "Batch size:   8 examples per optimiser update" in out
    assert "Range test (smoothed training loss vs learning rate):" in out and "▲" in out and "═" in out
    rules = out.split("Rules:")[1].split("\n\n")[0]
    for rule, value in status["suggestions"].items():
        assert f"{rule}" in rules and f"{value:.2e}" in rules
    assert "adaptive" in rules and "← recommended (stage-2-fit: loss = " in rules
    trials = out.split("Trials (8, best first):\n")[1].split("\n\n")[0].splitlines()
    assert trials[0].split() == ["RANK", "STAGE", "TRIAL", "LR", "STEPS", "EVAL", "LOSS", "PHASE", "JOB"]
    losses = [float(line.split()[5]) for line in trials[1:]]
    assert losses == sorted(losses) and len(losses) == 8, "ranked by validation loss"
    conditions = out.split("Conditions:")[1].split("\n\n")[0]
    assert "Ready" in conditions and "Recommended" in conditions
    events = out.split("Events:")[1]
    assert "JobCreated" in events and "Recommended" in events, "the operator's Events for the sweep"


def test_describe_a_failed_sweep_shows_the_reason_and_the_fix(kube_cluster, fleet):
    ns, _ = fleet
    code, out, _ = run(kube_cluster, "describe", "lrs/flat", "-n", ns)
    assert code == 0
    assert "Phase:        Failed" in out and "evidence FlatCurve" in out
    assert "weak evidence: do not train with this LR unchecked" in out
    assert "adaptive.trialSteps" in out, "the message naming the field to change"


def test_a_grid_whose_best_is_its_highest_lr_succeeds_with_a_warning_naming_the_bound(
    kube_cluster, kube_api, crds_installed
):
    """The operator's reconcile on the API server: Ready with the edge as its reason, a Warning Event, and
    `describe` listing the warning (the loss's minimum, 2e-3, lies above the grid)."""
    core = client.CoreV1Api(kube_api)
    ns = f"grid-edge-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"finetune.dev/test": "true"}}})
    try:
        r = Reconciler(kube_api, ns)
        r.create(LRSWEEP, "edge", {"method": "grid", "trials": {"learningRates": [1e-5, 1e-4, 1e-3]}})
        status = r.run_sweep("edge")
        assert status["phase"] == "Succeeded" and status["recommendedLearningRate"] == pytest.approx(1e-3)
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True" and ready["reason"] == "BestAtUpperEdge"
        events = core.list_namespaced_event(ns).items
        assert any(e.type == "Warning" and e.reason == "BestAtUpperEdge" for e in events), events
        code, out, _ = run(kube_cluster, "describe", "lrs/edge", "-n", ns)
        assert code == 0 and "Warnings:" in out
        assert "add a higher value to trials.learningRates" in out.split("Warnings:")[1]
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(ns, propagation_policy="Background")


def test_describe_pending_and_running_resources(kube_cluster, fleet):
    ns, _ = fleet
    code, out, _ = run(kube_cluster, "describe", "lrs/pending", "-n", ns)
    assert code == 0 and "Phase:        Pending" in out and "Recommended:  -" in out
    code, out, _ = run(kube_cluster, "describe", "lrs/running", "-n", ns)
    assert code == 0 and "Phase:        Running" in out and "Progress:" in out
    trials = out.split("best first):\n")[1].split("\n\n")[0].splitlines()[1:]
    assert [t.split()[0] for t in trials] == ["1", "2", "-", "-", "-"], "ranked, then the unfinished"
    assert any("Running" in t for t in trials[2:]) and any("Pending" in t for t in trials[2:])
    code, out, _ = run(kube_cluster, "describe", "ftj/waiting", "-n", ns)
    assert code == 0 and "WaitingForSweep" in out and "SweepNotFound" in out


def test_describe_a_finetune_shows_the_batch_size_its_lr_is_scaled_to(kube_cluster, fleet):
    ns, r = fleet
    code, out, _ = run(kube_cluster, "describe", "ftj/tuned", "-n", ns)
    assert code == 0, out
    print(out)
    ftj, sweep = r.get(FINETUNEJOB, "tuned")["status"], r.get(LRSWEEP, "adaptive")["status"]
    scaled = f"{ftj['learningRate']:.2e} at batch 32 (sqrt scaling)"
    assert f"{sweep['recommendedLearningRate']:.2e} at batch 8 (lrs/adaptive) -> {scaled}" in out
    assert "Batch size:   32 examples per optimiser update" in out
    assert "Eval loss:    2.0500 (best 2.0300)" in out and "┊ this job's LR" in out


# ---------------------------------------------------------------------------------------------- plot


def test_plot_writes_a_png_from_the_status(kube_cluster, fleet, tmp_path):
    from PIL import Image

    ns, _ = fleet
    png = tmp_path / "curve.png"
    code, out, err = run(kube_cluster, "plot", "adaptive", "-n", ns, "-o", str(png))
    assert code == 0, err
    assert out.strip() == str(png)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (700, 450)
    code, _, err = run(kube_cluster, "plot", "ftj/tuned", "-n", ns, "-o", str(tmp_path / "ftj.png"))
    assert code == 0, err
    assert Image.open(tmp_path / "ftj.png").size == (700, 450)
    code, _, err = run(kube_cluster, "plot", "ftj/fixed", "-n", ns, "-o", str(tmp_path / "x.png"))
    assert code == ExitCode.NOT_FOUND and "no training log" in err and "no LRSweep" in err
    code, _, err = run(kube_cluster, "plot", "lrs/pending", "-n", ns, "-o", str(tmp_path / "x.png"))
    assert code == ExitCode.ERROR and "nothing to plot yet" in err


def test_trainer_plot_takes_kubectl_get_json(kube_cluster, fleet, tmp_path):
    from PIL import Image

    ns, _ = fleet
    saved = tmp_path / "sweep.json"
    saved.write_text(kube_cluster.kubectl("get", "lrsweep", "adaptive", "-n", ns, "-o", "json").stdout)
    png = tmp_path / "from-kubectl.png"
    assert trainer_cli.main(["plot", str(saved), "-o", str(png)]) == 0
    assert Image.open(png).size == (700, 450)


# ---------------------------------------------------------------------------------------------- compare


def test_compare_puts_sweeps_side_by_side(kube_cluster, fleet):
    ns, r = fleet
    code, out, _ = run(kube_cluster, "compare", "adaptive", "lrs/tiny-llama", "flat", "grid", "-n", ns)
    assert code == 0, out
    print(out)
    table = {line[:16].strip(): line[16:].split() for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split() == ["lrs/adaptive", "lrs/tiny-llama", "lrs/flat", "lrs/grid"]
    assert table["PHASE"] == ["Succeeded", "Succeeded", "Failed", "Succeeded"]
    assert table["MODEL"] == ["/models/tiny-gpt2", "/models/tiny-llama", "/models/flat", "/models/tiny-gpt2"]
    assert table["METHOD"] == ["adaptive", "adaptive", "adaptive", "grid"]
    grid = r.get(LRSWEEP, "grid")["status"]
    assert table["BATCH SIZE"][:3] == ["8", "8", "8"], "adaptive: the range test's result says 8"
    assert table["BATCH SIZE"][3] == str(grid["effectiveBatchSize"]), "grid: the sweep's own batch"
    flat = len(r.get(LRSWEEP, "flat")["status"]["trials"])
    assert table["TRIALS"] == ["8/8", "8/8", f"{flat}/{flat}", "3/3"]
    assert table["EVIDENCE"] == ["Fitted", "Fitted", "FlatCurve", "-"]
    spent = r.get(LRSWEEP, "adaptive")["status"]["stepsSpent"]
    assert table["STEPS SPENT"][0] == str(spent)
    code, _, err = run(kube_cluster, "compare", "adaptive", "ftj/tuned", "-n", ns)
    assert code == ExitCode.WRONG_KIND and "takes a LRSweep" in err


# ---------------------------------------------------------------------------------------------- wait


def test_wait_exits_by_outcome(kube_cluster, fleet):
    ns, _ = fleet
    assert run(kube_cluster, "wait", "adaptive", "-n", ns)[0] == ExitCode.OK
    assert run(kube_cluster, "wait", "ftj/tuned", "--for=condition=Ready", "-n", ns)[0] == ExitCode.OK
    code, _, err = run(kube_cluster, "wait", "flat", "-n", ns, "--timeout", "5s")
    assert code == ExitCode.FAILED and "lrs/flat Failed" in err
    started = time.monotonic()
    code, _, err = run(kube_cluster, "wait", "pending", "-n", ns, "--timeout", "2s")
    assert code == ExitCode.TIMEOUT and "timed out after 2s" in err
    assert time.monotonic() - started < 10
    assert run(kube_cluster, "wait", "pending", "--for=Done", "-n", ns)[0] == ExitCode.USAGE
    code, _, err = run(kube_cluster, "wait", "adaptive", "--for=Sweeping", "-n", ns, "--timeout", "60s")
    assert code == ExitCode.USAGE and "never takes that phase" in err, "a FineTuneJob's phase: no 60 s wait"


def test_wait_returns_when_the_operator_finishes_the_resource(kube_cluster, fleet):
    ns, r = fleet
    r.create(LRSWEEP, "awaited", ADAPTIVE)
    result: list[int] = []
    waiter = threading.Thread(
        target=lambda: result.append(run(kube_cluster, "wait", "awaited", "-n", ns, "--timeout", "2m")[0])
    )
    waiter.start()
    time.sleep(1)
    r.run_sweep("awaited")
    waiter.join(60)
    assert result == [ExitCode.OK]


# ---------------------------------------------------------------------------------------------- logs


def test_logs_finds_the_trainer_pod_through_the_jobs(kube_cluster, kube_api, namespace, crds_installed):
    """A real trainer pod on the local pod runner (it fails at once: the model does not exist)."""
    r = Reconciler(kube_api, namespace)
    r.create(FINETUNEJOB, "real", {"learningRate": {"value": 1e-4}, "suspend": False})
    r.reconcile(FINETUNEJOB, "real")
    job = naming.train_job("real")
    core = client.CoreV1Api(kube_api)

    def terminated() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items
        return any(cs.state.terminated for p in pods for cs in p.status.container_statuses or [])

    wait_until(terminated, "the trainer pod to end", timeout=180)
    code, out, err = run(kube_cluster, "logs", "ftj/real", "-n", namespace)
    assert code == 0, err
    assert f"==> job/{job} pod/{job}-" in err
    if kube_cluster.runner is not None:
        assert "is not served" not in err, "the local pod runner serves pods/log (podlogs)"
    assert "/models/tiny-gpt2" in out, "the trainer's error names the missing model"
    code, followed, _ = run(kube_cluster, "logs", "ftj/real", "-f", "-n", namespace)
    assert code == 0 and followed == out, "-f ends when the container has ended"


def test_logs_of_trials_name_the_fix(kube_cluster, fleet):
    ns, _ = fleet
    code, _, err = run(kube_cluster, "logs", "adaptive", "--trial", "0", "-n", ns)
    assert code == ExitCode.USAGE and "add --stage 1 or 2" in err
    code, _, err = run(kube_cluster, "logs", "adaptive", "--trial", "0", "--stage", "2", "-n", ns)
    assert code == ExitCode.NOT_FOUND and "suspended" in err
    code, _, err = run(kube_cluster, "logs", "adaptive", "--trial", "9", "--stage", "1", "-n", ns)
    assert code == ExitCode.NOT_FOUND and "describe lrs/adaptive" in err
    code, _, err = run(kube_cluster, "logs", "ftj/tuned", "--trial", "1", "-n", ns)
    assert code == ExitCode.WRONG_KIND


# ---------------------------------------------------------------------------------------------- errors


def test_errors_name_the_resource_and_the_fix(kube_cluster, fleet):
    ns, _ = fleet
    code, _, err = run(kube_cluster, "describe", "nope", "-n", ns)
    assert code == ExitCode.NOT_FOUND and f"nope not found in namespace {ns}" in err
    code, _, err = run(kube_cluster, "describe", "deployment/web", "-n", ns)
    assert code == ExitCode.WRONG_KIND and "not deployment" in err
    assert run(kube_cluster, "get", "nope", "-n", ns)[0] == ExitCode.NOT_FOUND


def test_no_access_is_exit_6(kube_cluster, kube_api, fleet, tmp_path):
    ns, _ = fleet
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token("nobody", ns, {"spec": {"expirationSeconds": 600}})
    admin = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "nobody", "user": {"token": token.status.token}}],
        "contexts": [
            {"name": "nobody", "context": {"cluster": cluster["name"], "user": "nobody", "namespace": ns}}
        ],
        "current-context": "nobody",
    }
    path = tmp_path / "nobody.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    out, err = io.StringIO(), io.StringIO()
    code = main(["get", "--kubeconfig", str(path)], out=out, err=err)
    assert code == ExitCode.FORBIDDEN, err.getvalue()
    assert "no access to lrsweeps.finetune.dev in namespace" in err.getvalue() and "Role" in err.getvalue()


def test_kubectl_finds_the_plugin_on_path(kube_cluster, fleet):
    ns, _ = fleet
    env = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [
            kube_cluster.tool("kubectl"),
            "finetune",
            "get",
            "adaptive",
            "-n",
            ns,
            "--kubeconfig",
            str(kube_cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:2] == ["lrs/adaptive", "Succeeded"]


def test_crds_missing_is_exit_5(kube_cluster, kube_api, fleet):
    """Runs last: removes the CRDs (and so every LRSweep and FineTuneJob), then puts them back."""
    ns, _ = fleet
    ext = client.ApiextensionsV1Api(kube_api)
    names = [f"{k.plural}.finetune.dev" for k in (LRSWEEP, FINETUNEJOB)]
    try:
        for name in names:
            ext.delete_custom_resource_definition(name)
        wait_until(lambda: run(kube_cluster, "get", "-n", ns)[0] == ExitCode.CRDS_MISSING, "the group to go")
        code, _, err = run(kube_cluster, "describe", "adaptive", "-n", ns)
        assert code == ExitCode.CRDS_MISSING and "kubectl apply -f crds/" in err
    finally:
        wait_until(lambda: not _crds_present(ext, names), "the CRDs to be deleted")
        apply_crds(kube_api, load_yaml_documents(sorted(CRD_DIR.glob("*.yaml"))))


def _crds_present(ext, names) -> bool:
    present = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    return any(n in present for n in names)
