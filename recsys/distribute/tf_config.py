"""TF_CONFIG: the cluster and this process's task, built, parsed and checked.

Every process of a TensorFlow cluster finds the cluster and its own place in it in the
``TF_CONFIG`` environment variable, a JSON object such as::

    {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222"], "ps": ["host2:2222"]},
     "task": {"type": "worker", "index": 0}}

This module must never import TensorFlow: ``python -m recsys.cluster`` and the
strategy factory validate TF_CONFIG before TensorFlow starts (its import takes
seconds), so a mistake is reported at once, with the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TASK_TYPES",
    "TF_CONFIG_VAR",
    "TFConfig",
    "TFConfigError",
    "local_cluster",
    "read_tf_config",
]

TF_CONFIG_VAR = "TF_CONFIG"
# The task types tf.distribute knows (multi_worker_util._validate_cluster_spec).
TASK_TYPES = ("chief", "worker", "ps", "evaluator")

_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222"], '
    '"ps": ["host2:2222"]}, "task": {"type": "worker", "index": 0}}\''
)


class TFConfigError(ValueError):
    """TF_CONFIG is missing, malformed, or does not fit what the process must do."""


def _check_address(job: str, index: int, address: Any) -> str:
    if not isinstance(address, str) or ":" not in address:
        raise TFConfigError(
            f"TF_CONFIG cluster[{job!r}][{index}] must be a 'host:port' string. "
            f"Received: {address!r}. Example: {_EXAMPLE}"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TFConfigError(
            f"TF_CONFIG cluster[{job!r}][{index}] must be 'host:port' with a port in "
            f"1..65535. Received: {address!r}."
        )
    return address


@dataclass(frozen=True)
class TFConfig:
    """A cluster (job name -> task addresses) and the task this process is.

    Example:
        >>> config = TFConfig({"chief": ("h0:1",), "worker": ("h1:1",), "ps": ("h2:1",)}, "ps", 0)
        >>> config.num_tasks("worker"), config.address
        (1, 'h2:1')
        >>> TFConfig.from_json(config.to_json()) == config
        True

    Args:
        cluster: Job name (``chief``, ``worker``, ``ps``, ``evaluator``) to the
            ``host:port`` addresses of its tasks, in task-index order.
        task_type: This process's job name; a key of ``cluster``.
        task_index: This process's index in that job.

    Raises:
        TFConfigError: An unknown job, an empty job, a malformed address, more than
            one chief or evaluator, or a task that is not in the cluster.
    """

    cluster: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.cluster, Mapping) or not self.cluster:
            raise TFConfigError(
                "TF_CONFIG must have a non-empty 'cluster' object mapping job names to "
                f"address lists. Received: cluster={self.cluster!r}. Example: {_EXAMPLE}"
            )
        cluster: dict[str, tuple[str, ...]] = {}
        for job, addresses in self.cluster.items():
            if job not in TASK_TYPES:
                raise TFConfigError(
                    f"TF_CONFIG cluster has an unknown job {job!r}; tf.distribute knows "
                    f"{', '.join(TASK_TYPES)}. Received: cluster={dict(self.cluster)!r}."
                )
            if isinstance(addresses, str) or not isinstance(addresses, Sequence) or not addresses:
                raise TFConfigError(
                    f"TF_CONFIG cluster[{job!r}] must be a non-empty list of 'host:port' "
                    f"strings. Received: {addresses!r}."
                )
            cluster[job] = tuple(_check_address(job, i, a) for i, a in enumerate(addresses))
        for job in ("chief", "evaluator"):
            if len(cluster.get(job, ())) > 1:
                raise TFConfigError(
                    f"TF_CONFIG cluster may have at most one {job!r} task. "
                    f"Received: cluster[{job!r}]={list(cluster[job])!r}."
                )
        seen: dict[str, str] = {}
        for job, addresses in cluster.items():
            for i, address in enumerate(addresses):
                if address in seen:
                    raise TFConfigError(
                        f"TF_CONFIG gives {address!r} to two tasks ({seen[address]} and "
                        f"{job} {i}); each task needs its own host:port."
                    )
                seen[address] = f"{job} {i}"
        if self.task_type not in cluster:
            raise TFConfigError(
                f"TF_CONFIG task type {self.task_type!r} is not a job of the cluster "
                f"({', '.join(cluster)}). Received: task={{'type': {self.task_type!r}, "
                f"'index': {self.task_index!r}}}."
            )
        index = self.task_index
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise TFConfigError(
                f"TF_CONFIG task index must be an integer >= 0. Received: index={index!r}."
            )
        if index >= len(cluster[self.task_type]):
            raise TFConfigError(
                f"TF_CONFIG task index {index} is out of range: job {self.task_type!r} has "
                f"{len(cluster[self.task_type])} task(s), indexed from 0."
            )
        object.__setattr__(self, "cluster", cluster)

    def num_tasks(self, job: str) -> int:
        """Number of tasks of ``job`` in the cluster (0 when it has none)."""
        return len(self.cluster.get(job, ()))

    @property
    def address(self) -> str:
        """This task's ``host:port``."""
        return self.cluster[self.task_type][self.task_index]

    @property
    def port(self) -> int:
        """The port of this task's address."""
        return int(self.address.rpartition(":")[2])

    def for_task(self, task_type: str, task_index: int = 0) -> TFConfig:
        """The same cluster seen from another task."""
        return TFConfig(self.cluster, task_type, task_index)

    def to_dict(self) -> dict[str, Any]:
        """The TF_CONFIG object (cluster lists and task)."""
        return {
            "cluster": {job: list(addresses) for job, addresses in self.cluster.items()},
            "task": {"type": self.task_type, "index": self.task_index},
        }

    def to_json(self) -> str:
        """The TF_CONFIG value for this task."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TFConfig:
        """Parses a TF_CONFIG value.

        Raises:
            TFConfigError: Not JSON, not an object, or missing ``cluster`` or ``task``.
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as err:
            raise TFConfigError(
                f"TF_CONFIG is not valid JSON ({err}). Received: {text!r}. Example: {_EXAMPLE}"
            ) from None
        if not isinstance(data, Mapping):
            raise TFConfigError(
                f"TF_CONFIG must be a JSON object. Received: {text!r}. Example: {_EXAMPLE}"
            )
        task = data.get("task")
        if "cluster" not in data or not isinstance(task, Mapping) or "type" not in task:
            raise TFConfigError(
                "TF_CONFIG must have a 'cluster' object and a 'task' object with a 'type' "
                f"(and an 'index', default 0). Received: {text!r}. Example: {_EXAMPLE}"
            )
        return cls(data["cluster"], task["type"], task.get("index", 0))


def read_tf_config(environ: Mapping[str, str] | None = None) -> TFConfig:
    """The TF_CONFIG of ``environ`` (default: this process's environment).

    Example:
        >>> read_tf_config({"TF_CONFIG": '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker"}}'}).address
        'h:1'

    Raises:
        TFConfigError: TF_CONFIG is unset, empty or invalid (the message says how to
            set it, and how to get a local cluster that sets it for you).
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG_VAR, "").strip()
    if not text:
        raise TFConfigError(
            f"{TF_CONFIG_VAR} is not set. Every task of a tf.distribute cluster reads the "
            f"cluster and its own task from it, e.g. {_EXAMPLE}. On one machine, "
            "`python -m recsys.cluster local --ps 2 --workers 1 -- CMD ...` starts the "
            "servers and runs CMD with the chief's TF_CONFIG."
        )
    return TFConfig.from_json(text)


def local_cluster(ports: Sequence[int], *, num_ps: int, num_workers: int, host: str) -> TFConfig:
    """The chief's TF_CONFIG for a one-machine cluster: chief, workers, then ps, in ``ports`` order.

    Example:
        >>> local_cluster([10, 11, 12, 13], num_ps=2, num_workers=1, host="127.0.0.1").cluster["ps"]
        ('127.0.0.1:12', '127.0.0.1:13')

    Args:
        ports: ``1 + num_workers + num_ps`` distinct ports.
        num_ps: Parameter servers, >= 1.
        num_workers: Workers, >= 1.
        host: The address every task is reached at (a loopback address here).

    Raises:
        ValueError: A count below 1, or not exactly one port per task.
    """
    for name, value in (("num_ps", num_ps), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
    if len(ports) != 1 + num_workers + num_ps:
        raise ValueError(
            f"`ports` must hold one port per task (1 chief + {num_workers} workers + "
            f"{num_ps} ps = {1 + num_workers + num_ps}). Received: {len(ports)} ports."
        )
    addresses = [f"{host}:{port}" for port in ports]
    cluster = {
        "chief": tuple(addresses[:1]),
        "worker": tuple(addresses[1 : 1 + num_workers]),
        "ps": tuple(addresses[1 + num_workers :]),
    }
    return TFConfig(cluster, "chief", 0)
