"""One worker or parameter-server task of a tf.distribute cluster, run from TF_CONFIG.

:func:`serve` is ``python -m recsys.cluster serve``: what a real cluster starts on each
of its worker and ps machines (the chief runs the training program). TensorFlow is
imported only inside :func:`serve`, after TF_CONFIG has been checked.

TensorFlow's servers listen on every interface (``0.0.0.0``) without authentication:
whoever reaches a port can run operations there. Run clusters on trusted networks only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys.distribute.tf_config import TFConfig, TFConfigError, read_tf_config

__all__ = ["READY_FILE_VAR", "serve", "server_threads", "usable_cpus"]

# `serve` writes this file once its server is listening (how a launcher knows it is up).
READY_FILE_VAR = "RECSYS_CLUSTER_READY_FILE"
_PREFIX = "recsys.cluster:"


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


def usable_cpus() -> int:
    """Cores worth computing on (affinity, cgroup quota, physical cores: the hardware plan's view)."""
    from recsys.hardware import detect

    return detect().compute_threads


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
    intra, inter = server_threads(config, environ, usable_cpus())
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
