"""Who writes what under MultiWorkerMirroredStrategy: the chief, and scratch dirs for the rest.

Under ``distribute=multi_worker`` every worker runs the same ``python -m recsys.train``
command (TensorFlow's "Multi-worker training with Keras" pattern): each one builds,
fits, checkpoints, evaluates and exports, because saving reads synchronized variables
through collective operations that every worker must join. Only the chief's files are
kept. The chief is the ``chief`` task, or ``worker`` 0 when the cluster has no chief
(``tf.distribute``'s own rule). Every other worker runs in a scratch directory inside
the chief's run directory, ``DIR/workertemp_<index>`` (the name tf-keras's
``distributed_file_utils.write_dirpath`` and ``BackupAndRestore`` use), reads the
chief's checkpoints to resume, and deletes its scratch directory when it ends.

:func:`worker_argv` rewrites a non-chief's command line before Hydra sees it, so
Hydra's own records, the run lock and the log go to the scratch directory too.

Never imports TensorFlow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from recsys.distribute.tf_config import TF_CONFIG_VAR, TFConfig, TFConfigError

__all__ = [
    "SCRATCH_PREFIX",
    "WorkerRole",
    "chief_run_dir",
    "is_scratch_dir",
    "multi_worker_role",
    "scratch_dir",
    "worker_argv",
]

SCRATCH_PREFIX = "workertemp_"
_SCRATCH = re.compile(rf"^{SCRATCH_PREFIX}\d+$")
_RUN_DIR_KEY = "hydra.run.dir="
_MULTIRUN_FLAGS = ("-m", "--multirun")


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a cluster of workers (no parameter servers).

    Example:
        >>> WorkerRole("worker", 1, is_chief=False).scratch_name
        'workertemp_1'

    Attributes:
        task_type: ``chief`` or ``worker``.
        index: The task's index in its job.
        is_chief: Whether this process keeps the run's files.
    """

    task_type: str
    index: int
    is_chief: bool

    @property
    def scratch_name(self) -> str:
        """The name of a non-chief's scratch directory inside the chief's run directory."""
        return f"{SCRATCH_PREFIX}{self.index}"


def multi_worker_role(environ: Mapping[str, str] | None = None) -> WorkerRole | None:
    """The role ``TF_CONFIG`` gives this process in a cluster of workers, if it does.

    None when ``TF_CONFIG`` is unset, names a cluster with parameter servers (there
    only the chief runs the program), or a task that runs no training program.

    Example:
        >>> env = {"TF_CONFIG": '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 1}}'}
        >>> multi_worker_role(env)
        WorkerRole(task_type='worker', index=1, is_chief=False)

    Raises:
        TFConfigError: ``TF_CONFIG`` is set but malformed.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG_VAR, "").strip()
    if not text:
        return None
    config = TFConfig.from_json(text)
    if config.num_tasks("ps") or config.task_type not in ("chief", "worker"):
        return None
    chief = config.task_type == "chief" or (
        config.task_index == 0 and not config.num_tasks("chief")
    )
    return WorkerRole(config.task_type, config.task_index, chief)


def is_scratch_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a non-chief worker's scratch directory (``.../workertemp_<i>``)."""
    return bool(_SCRATCH.match(Path(path).name))


def scratch_dir(run_dir: str | os.PathLike[str], role: WorkerRole) -> Path:
    """Where a non-chief worker of the run in ``run_dir`` writes (``run_dir/workertemp_<i>``)."""
    return Path(run_dir) / role.scratch_name


def chief_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The chief's run directory: the parent of a scratch directory, else ``run_dir`` itself.

    Example:
        >>> chief_run_dir("/runs/ml/workertemp_1"), chief_run_dir("/runs/ml")
        (PosixPath('/runs/ml'), PosixPath('/runs/ml'))
    """
    path = Path(run_dir)
    return path.parent if is_scratch_dir(path) else path


def _with_suffix(value: str, name: str) -> str:
    """``value`` (a Hydra override value, maybe quoted) with ``/name`` appended."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return f"{value[:-1].rstrip('/')}/{name}{value[-1]}"
    return f"{value.rstrip('/')}/{name}"


def worker_argv(argv: Sequence[str], role: WorkerRole | None) -> tuple[list[str], Path | None]:
    """``recsys.train``'s arguments for this process, and its scratch directory if any.

    ``role`` is :func:`multi_worker_role`'s answer. The chief, or a process that is no
    worker of a cluster without parameter servers (``role`` None), gets ``argv``
    unchanged and None. A non-chief worker gets ``hydra.run.dir=DIR`` replaced by ``hydra.run.dir=DIR/workertemp_<i>``
    (so Hydra's records, the run lock, the log, checkpoints and the export all go
    there) and that directory, which the caller deletes when the run ends.

    Example:
        >>> role = WorkerRole("worker", 1, is_chief=False)
        >>> worker_argv(["distribute=multi_worker", "hydra.run.dir=/runs/ml"], role)
        (['distribute=multi_worker', 'hydra.run.dir=/runs/ml/workertemp_1'], PosixPath('/runs/ml/workertemp_1'))

    Raises:
        TFConfigError: A non-chief worker without ``hydra.run.dir=DIR`` on its command
            line (every worker needs the same one), or asked for a multirun (``-m``).
    """
    argv = list(argv)
    if role is None or role.is_chief:
        return argv, None
    who = f"TF_CONFIG makes this process {role.task_type} {role.index}, a non-chief worker"
    if any(arg in _MULTIRUN_FLAGS for arg in argv):
        raise TFConfigError(
            f"{who}; a multirun (-m) cannot train on a cluster of workers. Run one "
            "configuration at a time under distribute=multi_worker."
        )
    positions = [i for i, arg in enumerate(argv) if arg.startswith(_RUN_DIR_KEY)]
    if not positions:
        raise TFConfigError(
            f"{who}: give every worker the same hydra.run.dir=DIR (a filesystem they all "
            "reach, so a restarted run resumes from the chief's checkpoints), e.g. "
            "`python -m recsys.train distribute=multi_worker hydra.run.dir=/shared/runs/ml`. "
            f"This worker then writes only to DIR/{role.scratch_name} and deletes it at the end."
        )
    last = positions[-1]
    value = argv[last][len(_RUN_DIR_KEY) :]
    if not value.strip("'\""):
        raise TFConfigError(f"hydra.run.dir must name a directory. Received: {argv[last]!r}")
    argv[last] = _RUN_DIR_KEY + _with_suffix(value, role.scratch_name)
    scratch = scratch_dir(value.strip("'\""), role)
    return argv, scratch
