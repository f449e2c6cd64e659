"""``python -m recsys.launch``: print the hardware plan, or run a command under it.

* ``python -m recsys.launch --print-env`` prints ``KEY=VALUE`` lines for a shell
  (``--json``: the whole plan as JSON);
* ``python -m recsys.launch [options] -- CMD [ARGS...]`` runs any command under the
  plan: it pins this process when asked, then execs CMD with the plan's environment,
  so the exit status is CMD's.

Example::

    python -m recsys.launch --intra-op-threads 2 --allocator none -- python my_script.py
    export $(python -m recsys.launch --print-env)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from recsys.hardware.config import HardwareConfig
from recsys.hardware.plan import SETTING_HELP, make_plan
from recsys.hardware.process import pin_to_cpus

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.launch",
        description=(
            "Detect the CPU (affinity, container quota, cores, sockets) and run a command "
            "with TensorFlow's threading environment set for it. Variables already set in "
            "the environment are kept. Without a command, prints the plan."
        ),
        epilog=(
            "examples:\n"
            "  python -m recsys.launch -- python my_script.py --epochs 3\n"
            "  python -m recsys.launch --intra-op-threads 4 --allocator none -- python -m recsys.train\n"
            '  export $(python -m recsys.launch --print-env)   # or: eval "$(...)"\n\n'
            "settings:\n" + "\n".join(f"  {k:<23} {v}" for k, v in SETTING_HELP.items())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--intra-op-threads", type=int, metavar="N", help=SETTING_HELP["intra_op_threads"]
    )
    parser.add_argument(
        "--inter-op-threads", type=int, metavar="N", help=SETTING_HELP["inter_op_threads"]
    )
    parser.add_argument(
        "--omp-num-threads", type=int, metavar="N", help=SETTING_HELP["OMP_NUM_THREADS"]
    )
    parser.add_argument("--kmp-affinity", metavar="SPEC", help=SETTING_HELP["KMP_AFFINITY"])
    parser.add_argument(
        "--allocator",
        default="auto",
        metavar="{auto,none,tcmalloc,jemalloc,PATH}",
        help="allocator to preload: auto picks tcmalloc, else jemalloc, when installed",
    )
    parser.add_argument("--cpus", metavar="LIST", help="pin to these CPUs, e.g. 0-3 or 0,2")
    parser.add_argument(
        "--kmp-blocktime", type=int, metavar="MS", help=SETTING_HELP["KMP_BLOCKTIME"]
    )
    parser.add_argument(
        "--no-onednn", action="store_true", help="set TF_ENABLE_ONEDNN_OPTS=0 (oneDNN off)"
    )
    parser.add_argument(
        "--print-env", action="store_true", help="print KEY=VALUE lines to export, then exit"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON, then exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the summary")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...] to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m recsys.launch --help``.

    With a command, replaces this process by it (``exec``), so the exit status is the
    command's; returns 127 when it cannot be found and 2 for bad options.

    Example:
        >>> main(["--print-env", "--quiet", "--allocator", "none"])  # doctest: +SKIP
        TF_NUM_INTRAOP_THREADS=2
        ...
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        config = HardwareConfig(
            intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads,
            omp_num_threads=args.omp_num_threads,
            allocator=args.allocator,
            kmp_affinity=args.kmp_affinity,
            kmp_blocktime=args.kmp_blocktime,
            onednn_opts=False if args.no_onednn else None,
            cpus=args.cpus,
        )
        plan = make_plan(config)
    except ValueError as err:
        parser.error(str(err))
    if args.quiet:
        for message in plan.warnings:
            print(f"recsys.launch: warning: {message}", file=sys.stderr)
    if args.json or args.print_env:
        if args.print_env and not args.quiet:
            print(plan.summary(), file=sys.stderr)
        text = json.dumps(plan.to_dict(), indent=2) if args.json else "\n".join(plan.export_lines())
        try:
            print(text, flush=True)
        except BrokenPipeError:  # `... --print-env | head`: the reader left; not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if not args.quiet:
        print(plan.summary(), file=sys.stderr, flush=True)
    if not command:
        return 0
    if plan.cpus:
        pin_to_cpus(plan.cpus)
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, plan.environ(os.environ))
    except FileNotFoundError:
        print(f"recsys.launch: command not found: {command[0]!r}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"recsys.launch: cannot execute {command[0]!r}: permission denied", file=sys.stderr)
        return 126
    return 0  # pragma: no cover - execvpe does not return
