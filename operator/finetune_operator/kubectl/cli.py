"""`kubectl finetune`: LRSweeps and FineTuneJobs from the terminal (`kubectl-finetune` on PATH).

    kubectl finetune get [NAME...] [-A] [-w] [-o json|yaml]
    kubectl finetune describe NAME
    kubectl finetune plot NAME [-o curve.png]
    kubectl finetune compare SWEEP [SWEEP...]
    kubectl finetune logs NAME [--trial N [--stage S]] [-f]
    kubectl finetune wait NAME [--for=Succeeded|condition=Ready] [--timeout 5m]

NAME is `NAME`, `lrs/NAME` or `ftj/NAME`. Global flags as kubectl's: -n/--namespace, --context,
--kubeconfig. Exit codes: `finetune_operator.kubectl.errors`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from kubernetes.client import ApiException

from finetune_operator.api import FINETUNEJOB, KINDS, LRSWEEP
from finetune_operator.kubectl import describe as describing
from finetune_operator.kubectl import logs as logging_
from finetune_operator.kubectl import style, table, waiting
from finetune_operator.kubectl.cluster import Cluster
from finetune_operator.kubectl.errors import ExitCode, PluginError, api_message
from finetune_operator.kubectl.resources import Found, find


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl finetune",
        description="LRSweeps (lrs) and FineTuneJobs (ftj): see, plot, compare and follow recommendations.",
        parents=[_global_flags(None)],
        epilog="exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 wrong kind, 5 CRDs missing, "
        "6 no access, 7 wait timed out, 8 wait: Failed, 9 missing extra",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _global_flags(argparse.SUPPRESS)  # after the command too, without undoing one given before it

    get = sub.add_parser("get", parents=[common], help="sweeps and fine-tunes in one table")
    get.add_argument("names", nargs="*", metavar="NAME", help="only these (NAME, lrs/NAME or ftj/NAME)")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    get.add_argument("-w", "--watch", action="store_true", help="after the table, a row per change")
    get.add_argument("-o", "--output", choices=("json", "yaml"), help="the objects instead of a table")
    get.add_argument(
        "--request-timeout", type=int, default=None, metavar="SECONDS", help="end --watch after this long"
    )

    desc = sub.add_parser("describe", parents=[common], help="why this LR: curve, rules, trials, events")
    desc.add_argument("name", metavar="NAME")

    plot = sub.add_parser("plot", parents=[common], help="a loss-vs-LR PNG from the resource's status")
    plot.add_argument("name", metavar="NAME")
    plot.add_argument("-o", "--output", default=None, help="PNG to write (default NAME.png)")

    comp = sub.add_parser("compare", parents=[common], help="sweeps side by side")
    comp.add_argument("names", nargs="+", metavar="SWEEP")

    logs = sub.add_parser("logs", parents=[common], help="the trainer pod's logs")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("--trial", type=int, help="an LRSweep's trial (index within its stage)")
    logs.add_argument("--stage", type=int, choices=(1, 2), help="the adaptive method's stage of --trial")
    logs.add_argument("-f", "--follow", action="store_true", help="stream new output")

    wait = sub.add_parser("wait", parents=[common], help="block until a phase or condition (scripts, CI)")
    wait.add_argument("name", metavar="NAME")
    wait.add_argument("--for", dest="for_", default="Succeeded", help="a phase, or condition=TYPE")
    wait.add_argument("--timeout", default="30s", help="give up after this long (30s, 5m, 1h; default 30s)")
    return parser


def _global_flags(default: object) -> argparse.ArgumentParser:
    """kubectl's flags, accepted before and after the subcommand."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")
    flags.add_argument("--context", default=default, help="kubeconfig context to use")
    flags.add_argument(
        "--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    return flags


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
        return int(COMMANDS[args.command](cluster, args, out, err))
    except PluginError as e:
        print(f"error: {e.message}", file=err)
        return int(e.code)
    except ApiException as e:  # an answer no command expected (a 5xx, …)
        print(f"error: the API server answered {e.status} {api_message(e)}", file=err)
        return int(ExitCode.ERROR)
    except KeyboardInterrupt:
        return int(ExitCode.OK) if args.command == "get" else int(ExitCode.ERROR)


# ---------------------------------------------------------------------------------------------- commands


def cmd_get(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    if args.names:
        found = [find(cluster, n) for n in args.names]
    else:
        found = [Found(k, body) for k in KINDS for body in cluster.list(k, args.all_namespaces)]
    if args.watch:
        return _watch(cluster, args, found, out)
    if args.output:
        _dump({"apiVersion": "v1", "kind": "List", "items": [f.body for f in found]}, args.output, out)
    elif found:
        rows = [table.get_row(f, table.sweep_statuses(found)) for f in found]
        print(
            "\n".join(table.render(table.GET_COLUMNS, rows, style.Painter(out), args.all_namespaces)),
            file=out,
        )
    else:
        where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
        print(f"No LRSweeps or FineTuneJobs found in {where}.", file=err)
    return ExitCode.OK


def _watch(cluster: Cluster, args: argparse.Namespace, found: list[Found], out: TextIO) -> ExitCode:
    """`get -w`: the header, then a row (or an object with -o) per change, from the watch API (which
    starts with every current object). A row that would repeat the resource's last one but for its age
    (a status change outside the columns, such as a running trial's live progress) is left out."""
    painter, sweeps = style.Painter(out), table.sweep_statuses(found)
    shown: dict[tuple[str, str, str], tuple[str, ...]] = {}
    names = {(f.kind.kind, f.name) for f in found} if args.names else None
    widths, all_ns = table.WATCH_WIDTHS, args.all_namespaces
    if not args.output:
        print(table.render(table.GET_COLUMNS, [], painter, all_ns, widths)[0], file=out)
        out.flush()
    for event, body in cluster.watch(KINDS, all_ns, args.request_timeout):
        f = Found(LRSWEEP if body.get("kind") == LRSWEEP.kind else FINETUNEJOB, body)
        if names is not None and (f.kind.kind, f.name) not in names:
            continue
        if f.kind is LRSWEEP:
            sweeps[(f.namespace, f.name)] = f.status
        if args.output:
            _dump(body, args.output, out, document=True)
        else:
            row = table.get_row(f, sweeps)
            if event == "DELETED":
                row = table.Row(row.namespace, (row.cells[0], "Deleted", *row.cells[2:]), "Deleted")
            key, cells = (row.namespace, f.kind.kind, f.name), row.cells[:-1]  # all but AGE
            if shown.get(key) == cells:
                continue
            shown[key] = cells
            print(
                table.render(table.GET_COLUMNS, [row], painter, all_ns, widths, with_header=False)[0],
                file=out,
            )
        out.flush()
    return ExitCode.OK


def cmd_describe(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    found = find(cluster, args.name)
    events = cluster.events(found.kind, found.name, found.namespace)
    lines = describing.describe(found, events, style.Painter(out), _sweep_of(cluster, found))
    print("\n".join(lines), file=out)
    return ExitCode.OK


def cmd_plot(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    from finetune_operator.kubectl.plot import plot

    found = find(cluster, args.name)
    training_log = logging_.read_log(cluster, found) if found.kind is FINETUNEJOB else None
    path = plot(found, _sweep_of(cluster, found), Path(args.output or f"{found.name}.png"), training_log)
    print(path, file=out)
    return ExitCode.OK


def cmd_compare(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    sweeps = [find(cluster, n, (LRSWEEP,)) for n in args.names]
    print("\n".join(table.compare_lines(sweeps, style.Painter(out))), file=out)
    return ExitCode.OK


def cmd_logs(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    found = find(cluster, args.name)
    logging_.logs(cluster, found, args.trial, args.stage, args.follow, out, err)
    return ExitCode.OK


def cmd_wait(cluster: Cluster, args: argparse.Namespace, out: TextIO, err: TextIO) -> ExitCode:
    target = waiting.parse_for(args.for_)
    timeout = waiting.parse_duration(args.timeout)
    found = find(cluster, args.name)
    waiting.check_phase(found, target)
    code, message = waiting.wait(cluster, found, target, timeout)
    print(message if code == ExitCode.OK else f"error: {message}", file=out if code == ExitCode.OK else err)
    return code


COMMANDS = {
    "get": cmd_get,
    "describe": cmd_describe,
    "plot": cmd_plot,
    "compare": cmd_compare,
    "logs": cmd_logs,
    "wait": cmd_wait,
}


def _sweep_of(cluster: Cluster, found: Found) -> Found | None:
    """A FineTuneJob's LRSweep (fromSweep or auto), when it names one that exists."""
    name = found.status.sweep_name if found.kind is FINETUNEJOB else None
    body = cluster.get(LRSWEEP, name, found.namespace) if name else None
    return Found(LRSWEEP, body) if body else None


def _dump(obj: Any, fmt: str, out: TextIO, document: bool = False) -> None:
    if fmt == "json":
        print(json.dumps(obj, indent=4), file=out)
    else:
        print(("---\n" if document else "") + yaml.safe_dump(obj, sort_keys=False).rstrip(), file=out)


if __name__ == "__main__":
    sys.exit(main())
