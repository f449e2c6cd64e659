"""``python -m recsys.cluster``: servers for tf.distribute clusters (ParameterServerStrategy).

``serve`` runs the ``tf.distribute.Server`` of one worker or parameter-server task,
described by ``TF_CONFIG``, until it is killed: what a real cluster starts on each of
its worker and ps machines (the chief runs training); see
:mod:`recsys.distribute.server`.

``local --ps P --workers W -- CMD ...`` starts P parameter servers and W workers as
local processes on free loopback ports, runs CMD with the chief's ``TF_CONFIG``, stops
every server when CMD ends and exits with CMD's exit code; a server that dies is
reported and CMD stopped (exit status :data:`EXIT_CLUSTER_FAILURE`). Server logs go to
files (``--log-dir``, or a temporary folder removed after a clean run); see
:mod:`recsys.distribute.local_cluster`.

``local --mode multi_worker --workers W -- CMD ...`` is MultiWorkerMirroredStrategy's
shape instead: no servers; CMD runs W times, each with its own ``TF_CONFIG`` (worker
``i`` of W; worker 0 is the chief and talks to the terminal, the others log to
files); it exits when all have ended: 0, worker 0's status, or
:data:`EXIT_CLUSTER_FAILURE` when another worker failed (the rest are stopped). See
:mod:`recsys.distribute.local_workers`.

Never imports TensorFlow itself; ``serve`` does, after checking TF_CONFIG.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recsys.distribute.local_cluster import EXIT_CLUSTER_FAILURE, local_server_env, run_local
from recsys.distribute.local_workers import run_workers
from recsys.distribute.server import READY_FILE_VAR, serve, server_threads
from recsys.distribute.tf_config import TFConfigError

__all__ = [
    "EXIT_CLUSTER_FAILURE",
    "READY_FILE_VAR",
    "local_server_env",
    "main",
    "run_local",
    "run_workers",
    "serve",
    "server_threads",
]

_PREFIX = "recsys.cluster:"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.cluster",
        description="Servers and loopback clusters for tf.distribute (ParameterServerStrategy, "
        "MultiWorkerMirroredStrategy).",
    )
    sub = parser.add_subparsers(dest="command_name", required=True)
    sub.add_parser(
        "serve",
        help="run this task's worker or ps server from TF_CONFIG until killed",
        description="Run the tf.distribute server of the worker or ps task TF_CONFIG "
        "names, until SIGTERM/SIGINT. Thread pools follow TF_NUM_INTRAOP_THREADS / "
        "TF_NUM_INTEROP_THREADS when set (python -m recsys.launch sets them).",
    )
    local = sub.add_parser(
        "local",
        help="start a loopback cluster and run CMD on it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="--mode parameter_server (default): start --ps parameter servers and "
        "--workers workers\non free loopback ports, run CMD once with the chief's TF_CONFIG, "
        "stop the servers when\nCMD ends. Exit status: CMD's (128+N if killed by signal N), "
        f"or {EXIT_CLUSTER_FAILURE} if a server failed\nto start or died.\n\n"
        "--mode multi_worker: no servers; run CMD --workers times, each with its own "
        "TF_CONFIG\n(worker i of W; worker 0 is the chief; its output is this terminal's, "
        "the others' go to\n--log-dir/worker-<i>.log). Exit status: 0 when every worker "
        "exits 0, worker 0's status\nif it fails, "
        f"{EXIT_CLUSTER_FAILURE} if another worker fails (the rest are stopped). With\n"
        "recsys.train, give hydra.run.dir=DIR: the chief writes DIR, worker i only "
        "DIR/workertemp_i,\nremoved when it ends.",
        epilog="Examples:\n"
        "  python -m recsys.cluster local --ps 2 --workers 1 -- \\\n"
        "      python -m recsys.train +experiment=movielens distribute=parameter_server\n"
        "  python -m recsys.cluster local --mode multi_worker --workers 2 -- \\\n"
        "      python -m recsys.train +experiment=movielens distribute=multi_worker "
        "hydra.run.dir=runs/mw",
    )
    local.add_argument(
        "--mode",
        choices=("parameter_server", "multi_worker"),
        default="parameter_server",
        help="the cluster's shape (default parameter_server)",
    )
    local.add_argument(
        "--ps",
        type=int,
        default=None,
        metavar="P",
        help="parameter servers (default 2; none with --mode multi_worker)",
    )
    local.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="W",
        help="workers (default 1; 2 with --mode multi_worker)",
    )
    local.add_argument(
        "--log-dir",
        metavar="DIR",
        help="server logs, or workers 1.. with --mode multi_worker (default: a temporary "
        "folder, removed after a clean run)",
    )
    local.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL (default 10)",
    )
    local.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for the servers to listen (default 600)",
    )
    local.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m recsys.cluster`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command_name == "serve":
        try:
            return serve()
        except TFConfigError as err:
            print(f"{_PREFIX} {err}", file=sys.stderr)
            return 2
    cmd = list(args.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        parser.error("local: give the chief's command after --, e.g. -- python my_training.py")
    if args.mode == "multi_worker":
        if args.ps:
            parser.error(
                "--mode multi_worker runs no parameter servers (every worker runs CMD); "
                f"drop --ps, or use --mode parameter_server. Received: --ps={args.ps}"
            )
        workers = 2 if args.workers is None else args.workers
        if workers < 1:
            parser.error(f"--workers must be >= 1. Received: --workers={workers}")
        try:
            return run_workers(workers, cmd, log_dir=args.log_dir, grace=args.grace)
        except ValueError as err:
            parser.error(str(err))
            return 2  # pragma: no cover - parser.error exits
    args.ps = 2 if args.ps is None else args.ps
    args.workers = 1 if args.workers is None else args.workers
    for name in ("ps", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Received: --{name}={getattr(args, name)}")
    try:
        return run_local(
            args.ps,
            args.workers,
            cmd,
            log_dir=args.log_dir,
            grace=args.grace,
            start_timeout=args.start_timeout,
        )
    except ValueError as err:
        parser.error(str(err))
        return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
