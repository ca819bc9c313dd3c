"""``finetune-localcluster``: build the binaries, print where they are, or run a local cluster.

finetune-localcluster install   # build/verify etcd, kube-apiserver, kube-controller-manager, kubectl, helm,
                                #   and the Kueue controller manager with its CRDs
finetune-localcluster env       # the binaries directory (use as KUBEBUILDER_ASSETS)
finetune-localcluster up        # control plane + pod runner in the foreground; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from . import binaries, kueue
from .binaries import BinariesError
from .cluster import local_cluster
from .controlplane import ControlPlaneError
from .podrunner import RunnerConfig


def cmd_install(args: argparse.Namespace) -> int:
    started = time.monotonic()
    bins = binaries.ensure_binaries(build=True)
    for name, path in bins.as_dict().items():
        print(f"{name:<24} {path}  ({binaries.binary_version(name, path)})")
    queue = kueue.ensure_kueue(build=True)
    print(f"{kueue.MANAGER:<24} {queue.manager}  (Kueue v{queue.version})")
    print(f"{'kueue CRDs':<24} {queue.crd_dir}  ({len(queue.crd_paths())} files)")
    print(f"ready in {time.monotonic() - started:.0f}s")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    found, missing = binaries.find_binaries()
    if missing:
        print(f"missing: {', '.join(missing)} (run `finetune-localcluster install`)", file=sys.stderr)
        return 1
    directory = found["kube-apiserver"].parent
    print(f"export KUBEBUILDER_ASSETS={directory}" if args.export else directory)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(args.workdir).resolve() if args.workdir else None
    runner_config = None
    if workdir is not None:
        runner_config = RunnerConfig(root=workdir / "runner", gpus=args.gpus)
    with local_cluster(
        use_kubeconfig_env=False, workdir=workdir, gpus=args.gpus, runner_config=runner_config
    ) as cluster:
        plane = cluster.control_plane
        assert plane is not None
        version = plane.version().get("gitVersion", "?")
        print(f"\nlocal cluster up in {cluster.start_seconds:.1f}s: Kubernetes {version} at {plane.server}")
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(f"logs:       {plane.log_dir}")
        print(
            f"pods run as local processes on node {(args.gpus and 'with') or 'without'} GPUs "
            f"({args.gpus} nvidia.com/gpu); images are ignored"
        )
        print(f"\n  kubectl --kubeconfig {cluster.kubeconfig} get nodes\n\nCtrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            plane.check_alive()
    print("stopped; everything torn down.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="finetune-localcluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="build (once) and verify the control-plane binaries").set_defaults(
        func=cmd_install
    )
    env = sub.add_parser("env", help="print the binaries directory")
    env.add_argument("--export", action="store_true", help="print `export KUBEBUILDER_ASSETS=...`")
    env.set_defaults(func=cmd_env)
    up = sub.add_parser("up", help="run the control plane and pod runner until Ctrl-C")
    up.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity of the runner node")
    up.add_argument("--workdir", help="keep certificates, logs and pod folders here (default: temp dir)")
    up.set_defaults(func=cmd_up)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (BinariesError, ControlPlaneError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
