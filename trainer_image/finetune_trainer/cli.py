"""``finetune-trainer``: the command line.

    finetune-trainer range-test --config FILE [--set path=value ...] [--output-dir DIR] [--result-file F]
    finetune-trainer train      --config FILE [--learning-rate X] ...
    finetune-trainer trial      --config FILE [--learning-rate X] ...
    finetune-trainer recommend  --config FILE [--result-file F] ...   (range test + trials + fit)
    finetune-trainer plot       RESULT.json|LRSWEEP.json -o curve.png

Exit codes (:class:`finetune_trainer.config.ExitCode`): 0 ok, 1 error, 2 bad config, 3 diverged,
4 out of memory, 5 interrupted, 6 no recommendation (``recommend`` gave no LR, or one on weak evidence: the
result is still written, and stderr says which bound to move). Progress is JSON lines on stdout; the
one-line error goes to stderr and, as ``{"kind":"error",...}``, to the result file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from finetune_trainer.config import ErrorResult
from finetune_trainer.exitcodes import ConfigError, ExitCode, TrainerError
from finetune_trainer.metrics import DEFAULT_PORT, TrainerMetrics
from finetune_trainer.report import Progress, default_result_file, write_outputs, write_result_file
from finetune_trainer.runtime import STOP, configure_cpu_threads, is_main_process, leave_process_group
from finetune_trainer.settings import load_config

RESULT_FILE_DEFAULT = "/dev/termination-log when writable, else none"


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="TrainerConfig as YAML or JSON")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a config field, e.g. --set optimization.batchSize=8 (repeatable)",
    )
    p.add_argument(
        "--output-dir", help="overrides outputDir: checkpoints, final model, result.json, curve.png"
    )
    p.add_argument("--result-file", help=f"compact result JSON, ≤ 4 KiB (default: {RESULT_FILE_DEFAULT})")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (overrides learningRate)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"Prometheus port (default {DEFAULT_PORT}; 0 = off)",
    )
    p.add_argument("--metrics-address", help="bind address for metrics (default: $POD_IP, else 0.0.0.0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-trainer",
        description="Find the learning rate (range test, trials), then fine-tune with it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_flags(
        sub.add_parser("range-test", help="LR range test: a curve, every rule's suggestion, a pick")
    )
    _add_run_flags(
        sub.add_parser("train", help="fine-tune with warmup/decay; resumes from the latest checkpoint")
    )
    _add_run_flags(sub.add_parser("trial", help="a short fine-tune at one LR: final validation loss"))
    _add_run_flags(
        sub.add_parser(
            "recommend",
            help="the adaptive recommender: range test, short trials, longer finalists, fit; LR + interval",
        )
    )
    plot = sub.add_parser("plot", help="draw loss vs LR from a range-test result or an LRSweep's status")
    plot.add_argument(
        "result",
        help="result.json (or a compact result file) of a range test, or `kubectl get lrsweep NAME -o json`",
    )
    plot.add_argument("-o", "--output", default="curve.png", help="PNG to write (default curve.png)")
    return parser


def _result_file(args: argparse.Namespace) -> str | None:
    return args.result_file if args.result_file else default_result_file()


def _write_error(path: str | None, code: ExitCode, message: str) -> None:
    if not path:
        return
    error = ErrorResult(exit_code=int(code), reason=code.name, error=message[:3800])
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(error.to_wire()))
    except OSError:
        pass


def _run(args: argparse.Namespace, progress: Progress, main: bool) -> int:
    cfg = load_config(
        args.config, args.overrides, output_dir=args.output_dir, learning_rate=args.learning_rate
    )
    configure_cpu_threads()
    metrics = TrainerMetrics.create(args.command) if main else None
    if metrics:
        metrics.serve(args.metrics_port, args.metrics_address)
        metrics.set_phase("loading")
    result_path = _result_file(args) if main else None
    try:
        return _dispatch(args.command, cfg, progress, metrics, result_path, main)
    except BaseException:
        if metrics:
            metrics.set_phase("failed")
        raise
    finally:
        if metrics:
            metrics.stop()


def _dispatch(
    command: str,
    cfg: Any,
    progress: Progress,
    metrics: TrainerMetrics | None,
    result_path: str | None,
    main: bool,
) -> int:
    import tempfile

    if command == "range-test":
        from finetune_trainer.rangetest import run_range_test

        result, curve = run_range_test(cfg, progress, metrics)
        raw = [
            {"step": i + 1, "lr": lr, "loss": loss, "smoothedLoss": sm}
            for i, (lr, loss, sm) in enumerate(zip(curve.lrs, curve.raw, curve.smoothed, strict=True))
        ]
        code = ExitCode.OK
    elif command == "recommend":
        from finetune_trainer.recommend import run_recommend

        result, raw = run_recommend(cfg, progress, metrics), None
        code = ExitCode.OK if result.trusted else ExitCode.NO_RECOMMENDATION
        if code != ExitCode.OK:  # an LRSweep would be Failed: a script must not read the LR as an answer
            print(f"error: no recommendation ({result.evidence}): {result.message}", file=sys.stderr)
    elif command == "train":
        from finetune_trainer.training import run_train

        result, raw = run_train(cfg, cfg.learning_rate, progress, metrics, main_process=main), None
        code = ExitCode.OK
    else:
        from finetune_trainer.training import run_trial

        with tempfile.TemporaryDirectory(prefix="trial-") as scratch:
            result, raw = run_trial(cfg, cfg.learning_rate, progress, metrics, scratch), None
        code = ExitCode.DIVERGED if result.diverged else ExitCode.OK
    if main:
        saved = write_outputs(cfg.output_dir, result, raw)
        write_result_file(result_path, result)
        summary = {k: v for k, v in result.to_wire().items() if k != "curve"}
        progress.emit("result", resultFile=result_path, output=str(saved), **summary)
    if metrics:
        metrics.set_phase("done")
    return int(code)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return "out of memory" in str(exc).lower() and type(exc).__name__ in ("RuntimeError", "OutOfMemoryError")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "plot":
        from finetune_trainer.plot import plot_file

        try:
            print(plot_file(args.result, args.output))
        except (OSError, ValueError, ImportError) as exc:
            print(f"error: {args.result}: {exc}", file=sys.stderr)
            return int(ExitCode.BAD_CONFIG)
        return int(ExitCode.OK)

    main_process = is_main_process()
    progress = Progress.take_stdout(enabled=main_process)
    STOP.install()
    try:
        return _guarded(args, progress, main_process)
    finally:
        STOP.uninstall()
        progress.release_stdout()


RANK_REPORT_GRACE = 60.0
"""Seconds a rank other than 0 waits after a config error for rank 0 to report it (torchrun ends the
wait when rank 0 exits)."""


def _guarded(args: argparse.Namespace, progress: Progress, main_process: bool) -> int:
    """Run a command; turn every failure into its exit code, a stderr line and an error result."""
    result_path = _result_file(args) if main_process else None
    try:
        code = _run(args, progress, main_process)
    except ConfigError as exc:
        code, message = ExitCode.BAD_CONFIG, str(exc)
    except TrainerError as exc:
        code, message = exc.exit_code, str(exc)
    except KeyboardInterrupt:
        code, message = ExitCode.INTERRUPTED, "interrupted"
    except Exception as exc:
        if _is_oom(exc):
            code = ExitCode.OUT_OF_MEMORY
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            message = f"out of memory: {first}; lower optimization.batchSize or maxSeqLength"
        else:
            traceback.print_exc(file=sys.stderr)
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            code, message = ExitCode.ERROR, f"{type(exc).__name__}: {first}"
    else:
        leave_process_group()  # after the result is written: a teardown never turns it into an error
        return code
    print(f"error: {message}", file=sys.stderr)
    if main_process:
        progress.emit("error", exitCode=int(code), reason=code.name, message=message)
        _write_error(result_path, code, message)
    elif code == ExitCode.BAD_CONFIG:
        # every rank reads the same config, so rank 0 meets the same error; exiting first would make
        # torchrun stop rank 0 before it reports it (its result would say INTERRUPTED)
        time.sleep(RANK_REPORT_GRACE)
    return int(code)


def entrypoint() -> None:  # pragma: no cover
    raise SystemExit(main())


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
