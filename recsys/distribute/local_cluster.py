"""A whole tf.distribute cluster on one machine: ``python -m recsys.cluster local``.

:func:`run_local` starts P parameter servers and W workers as local processes on free
loopback ports, runs a command with the chief's ``TF_CONFIG``, stops every server when
the command ends and returns its exit status. A server that dies while the command runs
is reported (task, exit status, the end of its log) and the command is stopped
(:data:`EXIT_CLUSTER_FAILURE`): a ``ClusterCoordinator`` would otherwise wait for a
lost worker forever. Each server is its own process because an in-process TensorFlow
server cannot be stopped. Never imports TensorFlow.
"""

from __future__ import annotations

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
from recsys.distribute.server import READY_FILE_VAR, usable_cpus
from recsys.distribute.tf_config import TF_CONFIG_VAR, TFConfig, local_cluster

__all__ = ["EXIT_CLUSTER_FAILURE", "LOOPBACK", "local_server_env", "run_local"]

# Exit status of `local` when the cluster failed (a server did not start or died),
# as opposed to the command's own exit status.
EXIT_CLUSTER_FAILURE = 3
LOOPBACK = "127.0.0.1"
_PREFIX = "recsys.cluster:"
_LOG_TAIL_LINES = 25


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
        cpus = usable_cpus()
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
        (self.logs / "cluster.json").write_text(json.dumps(self.describe(), indent=2))

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
