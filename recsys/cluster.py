"""Servers for tf.distribute clusters: one per task (``serve``) or a whole one locally (``local``).

``python -m recsys.cluster serve`` runs the ``tf.distribute.Server`` of one worker or
parameter-server task, described by ``TF_CONFIG``, until it is killed: what a real
cluster starts on each of its worker and ps machines (the chief runs training).

``python -m recsys.cluster local --ps P --workers W -- CMD ...`` starts P parameter
servers and W workers as local processes on free loopback ports, runs CMD with the
chief's ``TF_CONFIG``, stops every server when CMD ends and exits with CMD's exit
code. A server that dies while CMD runs is reported (task, exit code, the end of its
log) and CMD is stopped; the launcher then exits with :data:`EXIT_CLUSTER_FAILURE`.
Each server is its own process because an in-process TensorFlow server cannot be
stopped. Server logs go to files (``--log-dir``, or a temporary folder that is
removed after a clean run), not to the terminal.

TensorFlow's servers listen on every interface without authentication: whoever
reaches a port can run operations there. Run clusters on trusted networks only.

This module imports TensorFlow only inside ``serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from recsys.distribute.ports import REUSE_PORT_ENV, reserve_ports
from recsys.distribute.tf_config import (
    TF_CONFIG_VAR,
    TFConfig,
    TFConfigError,
    local_cluster,
    read_tf_config,
)

__all__ = [
    "EXIT_CLUSTER_FAILURE",
    "READY_FILE_VAR",
    "local_server_env",
    "main",
    "run_local",
    "serve",
    "server_threads",
]

# Exit status of `local` when the cluster failed (a server did not start or died),
# as opposed to CMD's own exit status.
EXIT_CLUSTER_FAILURE = 3
# `serve` writes this file once its server is listening (how `local` knows it is up).
READY_FILE_VAR = "RECSYS_CLUSTER_READY_FILE"
LOOPBACK = "127.0.0.1"
_PREFIX = "recsys.cluster:"
_LOG_TAIL_LINES = 25


# ----------------------------------------------------------------------------- threads


def _env_threads(environ: Mapping[str, str], key: str) -> int:
    raw = environ.get(key, "")
    value = raw.strip()
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{key} must be a positive integer. Received: {key}={raw!r}")
    return int(value)


def server_threads(config: TFConfig, environ: Mapping[str, str], cpus: int) -> tuple[int, int]:
    """Intra-/inter-op thread pools for this task's server: ``(intra, inter)``.

    ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` (what the hardware plan,
    ``python -m recsys.launch``, sets) are used when present; otherwise TensorFlow's
    own defaults (0 for intra-op: one per CPU). A worker gets at least
    ``num_workers + 1`` inter-op threads: with fewer, a worker waiting on another
    task's tensors can block every thread and the cluster hangs (TensorFlow's own
    test clusters use the same bound).

    Example:
        >>> config = TFConfig({"chief": ["a:1"], "worker": ["a:2", "a:3"], "ps": ["a:4"]}, "worker", 1)
        >>> server_threads(config, {"TF_NUM_INTRAOP_THREADS": "1"}, cpus=2)
        (1, 3)

    Raises:
        ValueError: A thread variable that is not a positive integer.
    """
    intra = _env_threads(environ, "TF_NUM_INTRAOP_THREADS")
    inter = _env_threads(environ, "TF_NUM_INTEROP_THREADS") or max(1, cpus)
    if config.task_type == "worker":
        inter = max(inter, config.num_tasks("worker") + 1)
    return intra, inter


def local_server_env(
    task_type: str, *, num_workers: int, cpus: int, environ: Mapping[str, str]
) -> dict[str, str]:
    """Thread variables for one server of a one-machine cluster (kept where already set).

    All tasks share the machine's ``cpus``: a worker (the one that computes) gets
    ``cpus // num_workers`` intra-op threads, a parameter server (gathers and
    scatters rows) one; inter-op pools are at least ``num_workers + 1`` (see
    :func:`server_threads`). The chief (CMD) plans its own threads.

    Example:
        >>> local_server_env("ps", num_workers=1, cpus=2, environ={})["TF_NUM_INTRAOP_THREADS"]
        '1'
    """
    intra = max(1, cpus // num_workers) if task_type == "worker" else 1
    wanted = {
        "TF_NUM_INTRAOP_THREADS": str(intra),
        "TF_NUM_INTEROP_THREADS": str(max(2, num_workers + 1)),
        "OMP_NUM_THREADS": str(intra),
    }
    return {key: environ.get(key, value) for key, value in wanted.items()}


def _usable_cpus() -> int:
    """Cores worth computing on (affinity, cgroup quota, physical cores: the hardware plan's view)."""
    from recsys.hardware import detect

    return detect().compute_threads


# ----------------------------------------------------------------------------- serve


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve(environ: Mapping[str, str] | None = None) -> int:
    """Runs this task's server (a worker or a ps of ``TF_CONFIG``) until killed.

    SIGTERM or SIGINT ends the process at once with status 0: a TensorFlow server
    holds no state worth saving (the chief checkpoints), and it cannot be stopped
    cleanly in-process anyway.

    Raises:
        TFConfigError: ``TF_CONFIG`` is missing or malformed, names a chief or an
            evaluator (they run programs, not servers), or has no ``ps`` task.
    """
    environ = os.environ if environ is None else environ
    config = read_tf_config(environ)
    if config.task_type not in ("worker", "ps"):
        runs = {
            "chief": "the training program itself (e.g. `python -m recsys.train "
            "distribute=parameter_server`), which coordinates the workers and ps",
            "evaluator": "an evaluation program",
        }[config.task_type]
        raise TFConfigError(
            f"`recsys.cluster serve` runs worker and ps tasks only; TF_CONFIG says this is "
            f"task {config.task_type} {config.task_index}, which runs {runs}. Give this "
            "process a worker or ps task, or run that program instead."
        )
    if not config.num_tasks("ps"):
        raise TFConfigError(
            "TF_CONFIG's cluster has no 'ps' task, so it is not a parameter-server cluster: "
            "under MultiWorkerMirroredStrategy every worker runs the training program "
            "itself (`python -m recsys.train distribute=multi_worker`), not a server."
        )
    intra, inter = server_threads(config, environ, _usable_cpus())
    from recsys._tf import tf

    session_config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=intra, inter_op_parallelism_threads=inter
    )
    server = tf.distribute.Server(
        tf.train.ClusterSpec({job: list(a) for job, a in config.cluster.items()}),
        job_name=config.task_type,
        task_index=config.task_index,
        protocol="grpc",
        config=session_config,
        start=True,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_now)
    print(
        f"{_PREFIX} {config.task_type} {config.task_index} (pid {os.getpid()}) serving "
        f"{server.target} with intra/inter-op threads {intra or 'auto'}/{inter}",
        flush=True,
    )
    ready_file = environ.get(READY_FILE_VAR)
    if ready_file:
        _write_atomically(
            Path(ready_file), json.dumps({"pid": os.getpid(), "target": server.target})
        )
    while True:
        time.sleep(3600)


def _exit_now(signum: int, frame: Any) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ----------------------------------------------------------------------------- local


def _exit_status(returncode: int) -> int:
    """A shell's exit status for a child's ``returncode`` (killed by N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty log)"


def _child_setup(new_group: bool) -> Callable[[], None]:
    """What a child runs before exec: own process group, and die with the launcher.

    ``PR_SET_PDEATHSIG`` makes the kernel send SIGTERM to the child when the launcher
    dies, even by SIGKILL, so no server outlives it.
    """
    parent = os.getpid()

    def setup() -> None:
        if new_group:
            os.setpgid(0, 0)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - not Linux
            return
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


@dataclass
class _Task:
    task_type: str
    index: int
    address: str
    log: Path
    ready_file: Path
    process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.index}"


class _Signals:
    """Records SIGTERM/SIGINT/SIGHUP for the main loop instead of dying on them."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _report(out: TextIO, message: str) -> None:
    print(f"{_PREFIX} {message}", file=out, flush=True)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _stop(processes: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds, reap all.

    Each process leads its own group, so what it started goes with it.
    """
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _died_report(task: _Task, out: TextIO, when: str) -> None:
    assert task.process is not None
    status = _describe_status(task.process.returncode)
    hint = ""
    tail = _log_tail(task.log)
    if "Could not start gRPC server" in tail:
        hint = f" (it could not listen on {task.address}: is another program using that port?)"
    _report(
        out,
        f"{task.name} (pid {task.process.pid}) {status} {when}{hint}. "
        f"Last lines of {task.log}:\n{tail}\n{_PREFIX} (end of {task.name}'s log)",
    )


class _LocalCluster:
    """The servers of one ``run_local`` call: started, watched, stopped."""

    def __init__(
        self,
        chief: TFConfig,
        logs: Path,
        server_command: Sequence[str],
        signals: _Signals,
        out: TextIO,
        poll_interval: float,
    ) -> None:
        self.chief = chief
        self.logs = logs
        self.server_command = list(server_command)
        self.signals = signals
        self.out = out
        self.poll_interval = poll_interval
        self.tasks = [
            _Task(job, i, address, logs / f"{job}-{i}.log", logs / f"{job}-{i}.ready")
            for job in ("worker", "ps")
            for i, address in enumerate(chief.cluster[job])
        ]

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [t.process for t in self.tasks if t.process is not None]

    def dead_task(self) -> _Task | None:
        return next((t for t in self.tasks if t.process and t.process.poll() is not None), None)

    def start(self) -> None:
        """Starts every server, each in its own process group, logging to its own file."""
        num_workers = self.chief.num_tasks("worker")
        cpus = _usable_cpus()
        for task in self.tasks:
            task.ready_file.unlink(missing_ok=True)
            env = {
                **os.environ,
                **local_server_env(
                    task.task_type, num_workers=num_workers, cpus=cpus, environ=os.environ
                ),
                **REUSE_PORT_ENV,
                TF_CONFIG_VAR: self.chief.for_task(task.task_type, task.index).to_json(),
                READY_FILE_VAR: str(task.ready_file),
            }
            with open(task.log, "wb") as log:
                task.process = subprocess.Popen(
                    self.server_command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_child_setup(new_group=True),
                )
            _report(
                self.out,
                f"started {task.name} (pid {task.process.pid}) at {task.address}; log {task.log}",
            )
        _write_atomically(self.logs / "cluster.json", json.dumps(self.describe(), indent=2))

    def describe(self) -> dict[str, Any]:
        """What ``cluster.json`` holds: the chief's TF_CONFIG and each server's pid and log."""
        return {
            "tf_config": self.chief.to_dict(),
            "launcher_pid": os.getpid(),
            "tasks": [
                {
                    "type": t.task_type,
                    "index": t.index,
                    "address": t.address,
                    "pid": t.process.pid if t.process else None,
                    "log": str(t.log),
                }
                for t in self.tasks
            ],
        }

    def wait_until_serving(self, timeout: float, release: Callable[[int], None]) -> int | None:
        """Waits for every ready file; ``release(port)`` as each server is up.

        Returns:
            None when all serve, else the launcher's exit status.
        """
        started = time.monotonic()
        waiting = list(self.tasks)
        while waiting:
            for task in list(waiting):
                if task.ready_file.exists():
                    release(int(task.address.rpartition(":")[2]))
                    waiting.remove(task)
                elif task.process is not None and task.process.poll() is not None:
                    _died_report(task, self.out, "before it was serving")
                    return EXIT_CLUSTER_FAILURE
            if self.signals.received is not None:
                name = signal.Signals(self.signals.received).name
                _report(self.out, f"got {name} while the servers were starting")
                return _exit_status(-self.signals.received)
            if waiting and time.monotonic() - started > timeout:
                names = ", ".join(t.name for t in waiting)
                _report(
                    self.out,
                    f"{names} not serving after {timeout:g} s (--start-timeout); "
                    f"see the logs in {self.logs}",
                )
                return EXIT_CLUSTER_FAILURE
            if waiting:
                time.sleep(self.poll_interval)
        _report(self.out, f"{len(self.tasks)} servers up after {time.monotonic() - started:.1f} s")
        return None

    def watch(self, command: subprocess.Popen, grace: float) -> int:
        """Waits for ``command``; passes the launcher's signals on; stops it if a server dies."""
        forwarded: int | None = None
        kill_at: float | None = None
        while command.poll() is None:
            dead = self.dead_task()
            if dead is not None:
                _died_report(dead, self.out, "while the command was running; stopping the command")
                _stop([command], grace)
                return EXIT_CLUSTER_FAILURE
            received = self.signals.received
            if received is not None and forwarded != received:
                forwarded = received
                _report(self.out, f"passing {signal.Signals(received).name} to the command")
                _signal_group(command, received)
                kill_at = time.monotonic() + grace
            if kill_at is not None and time.monotonic() > kill_at:
                _report(self.out, f"the command is still running {grace:g} s later; killing it")
                _signal_group(command, signal.SIGKILL)
                kill_at = None
            time.sleep(self.poll_interval)
        _report(
            self.out, f"the command {_describe_status(command.returncode)}; stopping the servers"
        )
        dead = self.dead_task()
        if dead is not None:
            _died_report(dead, self.out, "while the command was running")
        return _exit_status(command.returncode)


def run_local(
    num_ps: int,
    num_workers: int,
    command: Sequence[str],
    *,
    log_dir: str | os.PathLike[str] | None = None,
    grace: float = 10.0,
    start_timeout: float = 600.0,
    server_command: Sequence[str] | None = None,
    poll_interval: float = 0.1,
    out: TextIO | None = None,
) -> int:
    """Runs ``command`` as the chief of a local cluster of ``num_ps`` ps and ``num_workers`` workers.

    Steps: reserve 1 + W + P free ports (held until each server has bound its own,
    see :mod:`recsys.distribute.ports`), start each server in its own process group
    with its ``TF_CONFIG``, wait until every one is listening, run ``command`` with
    the chief's ``TF_CONFIG``, watch both, then stop every server (SIGTERM, SIGKILL
    after ``grace`` seconds). SIGTERM, SIGINT or SIGHUP to the launcher is passed to
    ``command``'s process group, which gets ``grace`` seconds to finish. Children die
    with the launcher even if it is killed with SIGKILL (Linux ``PR_SET_PDEATHSIG``).
    ``log_dir`` gets ``<task>-<index>.log`` per server and ``cluster.json`` (tasks,
    addresses, pids). ``command`` runs in its own process group, so it should not
    read from the terminal.

    Example:
        >>> run_local(2, 1, ["python", "-c", "import os; print(os.environ['TF_CONFIG'])"])
        0

    Args:
        num_ps: Parameter servers, >= 1.
        num_workers: Workers, >= 1.
        command: The chief's program and its arguments.
        log_dir: Folder for the server logs; default a temporary folder, removed when
            the run ends with status 0.
        grace: Seconds a process gets between SIGTERM and SIGKILL.
        start_timeout: Seconds to wait for every server to listen.
        server_command: What starts a server (default ``python -m recsys.cluster
            serve``); it gets ``TF_CONFIG`` and must write the file named by
            ``RECSYS_CLUSTER_READY_FILE`` once it listens.
        poll_interval: Seconds between checks of the processes.
        out: Where the launcher reports (default stderr).

    Returns:
        ``command``'s exit status (128 + N if killed by signal N), or
        :data:`EXIT_CLUSTER_FAILURE` if a server failed to start or died while it ran.

    Raises:
        ValueError: An empty command, counts below 1, or a negative grace/timeout.
    """
    out = sys.stderr if out is None else out
    if not command:
        raise ValueError("`command` must name the program to run as chief. Received: command=[]")
    for name, value in (("grace", grace), ("start_timeout", start_timeout)):
        if not value >= 0:
            raise ValueError(f"`{name}` must be >= 0 seconds. Received: {name}={value!r}")
    server_command = server_command or [sys.executable, "-m", "recsys.cluster", "serve"]
    logs = Path(tempfile.mkdtemp(prefix="recsys-cluster-") if log_dir is None else log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    status = EXIT_CLUSTER_FAILURE
    with _Signals() as signals, reserve_ports(1 + num_workers + num_ps) as reservations:
        chief = local_cluster(
            [r.port for r in reservations], num_ps=num_ps, num_workers=num_workers, host=LOOPBACK
        )
        held = {r.port: r for r in reservations}
        cluster = _LocalCluster(chief, logs, server_command, signals, out, poll_interval)
        command_process: subprocess.Popen | None = None
        try:
            cluster.start()
            failed = cluster.wait_until_serving(start_timeout, lambda port: held[port].release())
            if failed is not None:
                status = failed
                return status
            _report(out, f"running {' '.join(command)}")
            # The chief's port stays reserved: the command's server binds it with SO_REUSEPORT.
            env = {**os.environ, **REUSE_PORT_ENV, TF_CONFIG_VAR: chief.to_json()}
            try:
                command_process = subprocess.Popen(
                    list(command), env=env, preexec_fn=_child_setup(new_group=True)
                )
            except OSError as err:
                _report(out, f"cannot run {command[0]!r}: {err}")
                status = 127
                return status
            status = cluster.watch(command_process, grace)
            return status
        finally:
            extra = [command_process] if command_process is not None else []
            _stop(extra + cluster.processes, grace)
            if log_dir is None and status == 0:
                shutil.rmtree(logs, ignore_errors=True)
            elif status != 0:
                _report(out, f"server logs kept in {logs}")


# ----------------------------------------------------------------------------- CLI


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
