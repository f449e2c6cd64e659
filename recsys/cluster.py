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

Never imports TensorFlow itself; ``serve`` does, after checking TF_CONFIG.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from recsys.distribute.local_cluster import EXIT_CLUSTER_FAILURE, local_server_env, run_local
from recsys.distribute.server import READY_FILE_VAR, serve, server_threads
from recsys.distribute.tf_config import TFConfigError

__all__ = [
    "EXIT_CLUSTER_FAILURE",
    "READY_FILE_VAR",
    "local_server_env",
    "main",
    "run_local",
    "serve",
    "server_threads",
]

_PREFIX = "recsys.cluster:"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.cluster",
        description="Servers for tf.distribute clusters (ParameterServerStrategy).",
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
        help="start a loopback cluster and run CMD as its chief",
        description="Start --ps parameter servers and --workers workers on free loopback "
        "ports, run CMD with the chief's TF_CONFIG, stop the servers when CMD ends.",
        epilog=f"Exit status: CMD's (128+N if killed by signal N), or "
        f"{EXIT_CLUSTER_FAILURE} if a server failed to start or died. Example: "
        "python -m recsys.cluster local --ps 2 --workers 1 -- "
        "python -m recsys.train +experiment=movielens distribute=parameter_server",
    )
    local.add_argument(
        "--ps", type=int, default=2, metavar="P", help="parameter servers (default 2)"
    )
    local.add_argument("--workers", type=int, default=1, metavar="W", help="workers (default 1)")
    local.add_argument(
        "--log-dir",
        metavar="DIR",
        help="server logs (default: a temporary folder, removed after a clean run)",
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
