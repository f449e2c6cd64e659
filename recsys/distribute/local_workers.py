"""A cluster of workers on one machine: ``python -m recsys.cluster local --mode multi_worker``.

Under MultiWorkerMirroredStrategy there are no servers to start: every worker runs
the same training program. :func:`run_workers` reserves one free loopback port per
worker, runs the command once per worker, each with its own ``TF_CONFIG`` (a cluster
of ``worker`` tasks; worker 0 is the chief), and returns when all of them have ended.
Worker 0's output goes to the launcher's own stdout/stderr; the others' to
``worker-<i>.log`` files. A worker that fails is reported (its status and the end of
its log) and the others are stopped: the survivors would otherwise wait for it in
their next collective operation forever. Never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from recsys.distribute.local_cluster import (
    EXIT_CLUSTER_FAILURE,
    LOOPBACK,
    _child_setup,
    _describe_status,
    _exit_status,
    _log_tail,
    _report,
    _signal_group,
    _Signals,
    _stop,
)
from recsys.distribute.ports import REUSE_PORT_ENV, reserve_ports
from recsys.distribute.tf_config import TF_CONFIG_VAR, TFConfig

__all__ = ["run_workers", "workers_cluster"]


def workers_cluster(ports: Sequence[int], *, host: str = LOOPBACK) -> TFConfig:
    """Worker 0's TF_CONFIG for a cluster of ``len(ports)`` workers (no chief, no ps).

    Example:
        >>> workers_cluster([10, 11]).for_task("worker", 1).to_dict()["task"]
        {'type': 'worker', 'index': 1}

    Raises:
        ValueError: No ports.
    """
    if not ports:
        raise ValueError("`ports` must hold one port per worker. Received: ports=[]")
    return TFConfig({"worker": tuple(f"{host}:{port}" for port in ports)}, "worker", 0)


def _start(command: Sequence[str], config: TFConfig, log: Path | None) -> subprocess.Popen:
    env = {**os.environ, **REUSE_PORT_ENV, TF_CONFIG_VAR: config.to_json()}
    if log is None:  # worker 0 (the chief) talks to the user directly
        return subprocess.Popen(list(command), env=env, preexec_fn=_child_setup(new_group=True))
    with open(log, "wb") as out:
        return subprocess.Popen(
            list(command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup(new_group=True),
        )


def _watch(
    processes: list[subprocess.Popen],
    logs: list[Path | None],
    signals: _Signals,
    grace: float,
    poll_interval: float,
    out: TextIO,
) -> int:
    """Waits for every worker; stops the rest when one fails; passes signals on."""
    forwarded: int | None = None
    kill_at: float | None = None
    while True:
        failed = next(
            (i for i, p in enumerate(processes) if p.poll() is not None and p.returncode != 0),
            None,
        )
        if failed is not None:
            process = processes[failed]
            where = (
                f"; last lines of {logs[failed]}:\n{_log_tail(logs[failed])}"
                if logs[failed]
                else ""
            )
            _report(
                out,
                f"worker {failed} (pid {process.pid}) {_describe_status(process.returncode)}"
                f"{where}",
            )
            running = [p for p in processes if p.poll() is None]
            if running:
                _report(out, f"stopping the {len(running)} other worker(s)")
                _stop(running, grace)
            if failed == 0 or forwarded is not None:
                return _exit_status(process.returncode)
            return EXIT_CLUSTER_FAILURE
        if all(p.poll() is not None for p in processes):
            _report(out, f"all {len(processes)} workers exited with code 0")
            return 0
        received = signals.received
        if received is not None and forwarded != received:
            forwarded = received
            _report(out, f"passing {signal.Signals(received).name} to every worker")
            for process in processes:
                _signal_group(process, received)
            kill_at = time.monotonic() + grace
        if kill_at is not None and time.monotonic() > kill_at:
            _report(out, f"workers still running {grace:g} s later; killing them")
            for process in processes:
                _signal_group(process, signal.SIGKILL)
            kill_at = None
        time.sleep(poll_interval)


def run_workers(
    num_workers: int,
    command: Sequence[str],
    *,
    log_dir: str | os.PathLike[str] | None = None,
    grace: float = 10.0,
    poll_interval: float = 0.1,
    out: TextIO | None = None,
) -> int:
    """Runs ``command`` once per worker of a loopback MultiWorkerMirroredStrategy cluster.

    Each worker gets ``TF_CONFIG`` ``{"cluster": {"worker": [...]}, "task": {"type":
    "worker", "index": i}}`` (worker 0 is the chief) and ``TF_GRPC_REUSE_PORT=1``:
    its port stays reserved by the launcher until the end, and the worker's own
    server binds it too (see :mod:`recsys.distribute.ports`). SIGTERM, SIGINT or
    SIGHUP to the launcher is passed to every worker, which get ``grace`` seconds
    before SIGKILL; children die with the launcher (``PR_SET_PDEATHSIG``).

    Example:
        >>> run_workers(2, ["python", "-c", "import os; print(os.environ['TF_CONFIG'])"])
        0

    Args:
        num_workers: Workers, >= 1.
        command: The program every worker runs, and its arguments.
        log_dir: Folder for ``worker-<i>.log`` of workers 1.. (worker 0's output is
            the launcher's); default a temporary folder, removed after a clean run.
        grace: Seconds a worker gets between SIGTERM and SIGKILL.
        poll_interval: Seconds between checks of the processes.
        out: Where the launcher reports (default stderr).

    Returns:
        0 when every worker exited with 0; worker 0's status when it failed (or a
        signal stopped the run); :data:`EXIT_CLUSTER_FAILURE` when another worker failed.

    Raises:
        ValueError: An empty command, fewer than one worker, or a negative grace.
    """
    out = sys.stderr if out is None else out
    if not command:
        raise ValueError("`command` must name the program every worker runs. Received: command=[]")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(
            f"`num_workers` must be an integer >= 1. Received: num_workers={num_workers!r}"
        )
    if not grace >= 0:
        raise ValueError(f"`grace` must be >= 0 seconds. Received: grace={grace!r}")
    logs_dir = Path(tempfile.mkdtemp(prefix="recsys-workers-") if log_dir is None else log_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    status = EXIT_CLUSTER_FAILURE
    processes: list[subprocess.Popen] = []
    with _Signals() as signals, reserve_ports(num_workers) as reservations:
        chief = workers_cluster([r.port for r in reservations])
        logs: list[Path | None] = [None] + [
            logs_dir / f"worker-{i}.log" for i in range(1, num_workers)
        ]
        try:
            for index in range(num_workers):
                try:
                    process = _start(command, chief.for_task("worker", index), logs[index])
                except OSError as err:
                    _report(out, f"cannot run {command[0]!r}: {err}")
                    status = 127
                    return status
                processes.append(process)
                log_note = f"; log {logs[index]}" if logs[index] else ""
                _report(
                    out,
                    f"started worker {index} (pid {process.pid}) at "
                    f"{chief.cluster['worker'][index]}{log_note}",
                )
            status = _watch(processes, logs, signals, grace, poll_interval, out)
            return status
        finally:
            with contextlib.suppress(Exception):
                _stop([p for p in processes if p.poll() is None], grace)
            if log_dir is None and status == 0:
                shutil.rmtree(logs_dir, ignore_errors=True)
            elif status != 0 and num_workers > 1:
                _report(out, f"worker logs kept in {logs_dir}")
