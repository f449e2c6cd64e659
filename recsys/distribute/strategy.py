"""The tf.distribute strategy a run trains under, built from its kind and TF_CONFIG.

Imports TensorFlow only inside :func:`make_strategy`, after TF_CONFIG has been
checked, so a misconfigured cluster is reported before TensorFlow's import.
"""

from __future__ import annotations

import numbers
from typing import Any

from recsys.distribute.tf_config import TFConfig, TFConfigError, read_tf_config

__all__ = [
    "DEFAULT_MIN_SHARD_BYTES",
    "STRATEGY_KINDS",
    "check_cluster",
    "make_strategy",
    "uses_coordinator",
]

STRATEGY_KINDS = ("none", "parameter_server", "multi_worker")
# TensorFlow's own suggestion for MinSizePartitioner: shards of at least 256 KiB.
DEFAULT_MIN_SHARD_BYTES = 256 << 10

_SERVE = "start `python -m recsys.cluster serve` on each worker and ps task instead"


def _check_kind(kind: Any) -> str:
    if kind not in STRATEGY_KINDS:
        raise ValueError(
            f"`kind` must be one of {', '.join(map(repr, STRATEGY_KINDS))}. Received: kind={kind!r}"
        )
    return kind


def check_cluster(kind: str, config: TFConfig) -> None:
    """Checks that ``config`` is a cluster ``kind`` can train on, from this task.

    ``parameter_server``: at least one ``ps`` and one ``worker`` task and a ``chief``,
    and this process must be the chief (the coordinator: the one process that runs
    the training program; workers and parameter servers only serve).
    ``multi_worker``: ``worker`` tasks (and at most one ``chief``), no ``ps``; every
    worker (and the chief) runs the training program.

    Example:
        >>> cluster = {"chief": ["h0:1"], "worker": ["h1:1"], "ps": ["h2:1"]}
        >>> check_cluster("parameter_server", TFConfig(cluster, "chief", 0))

    Raises:
        TFConfigError: The cluster lacks a job ``kind`` needs, or this task is not
            one that runs training (the message names the fix).
        ValueError: An unknown ``kind``.
    """
    kind = _check_kind(kind)
    if kind == "none":
        return
    task = f"{config.task_type} {config.task_index}"
    jobs = ", ".join(f"{job} x{config.num_tasks(job)}" for job in config.cluster)
    if kind == "parameter_server":
        missing = [job for job in ("chief", "worker", "ps") if not config.num_tasks(job)]
        if missing:
            raise TFConfigError(
                f"distribute=parameter_server needs a cluster with a 'chief', at least one "
                f"'worker' and at least one 'ps' task; TF_CONFIG has {jobs} (missing: "
                f"{', '.join(missing)}). Add them to TF_CONFIG's cluster, or use "
                "distribute=multi_worker for a cluster of workers only."
            )
        if config.task_type != "chief":
            raise TFConfigError(
                f"This process is TF_CONFIG task {task}; under ParameterServerStrategy only "
                f"the chief runs the training program (it coordinates the others): {_SERVE}, "
                "and run training with TF_CONFIG task {'type': 'chief', 'index': 0}."
            )
        return
    if config.num_tasks("ps"):
        raise TFConfigError(
            f"distribute=multi_worker takes a cluster of workers (and an optional chief), "
            f"with no 'ps' tasks; TF_CONFIG has {jobs}. Use distribute=parameter_server "
            "for a cluster with parameter servers."
        )
    if not config.num_tasks("worker"):
        raise TFConfigError(
            f"distribute=multi_worker needs at least one 'worker' task; TF_CONFIG has {jobs}."
        )
    if config.task_type not in ("chief", "worker"):
        raise TFConfigError(
            f"This process is TF_CONFIG task {task}; under MultiWorkerMirroredStrategy the "
            "chief and every worker run the same training program."
        )


def make_strategy(
    kind: str = "none",
    *,
    min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES,
    max_shards: int | None = None,
) -> Any:
    """The strategy to build, compile and fit the model under.

    * ``none``: TensorFlow's default strategy (one process; ``strategy.scope()``
      works and changes nothing), so callers need no special case.
    * ``parameter_server``: ``tf.distribute.ParameterServerStrategy`` on the cluster
      of ``TF_CONFIG`` (read by ``TFConfigClusterResolver``), with a
      ``MinSizePartitioner(min_shard_bytes, max_shards)``: a variable is split into
      contiguous row ranges of at least ``min_shard_bytes`` each, at most
      ``max_shards`` of them (default: one per parameter server), placed round-robin
      on the parameter servers; smaller variables stay whole. Connects to every task
      (they must be serving: ``python -m recsys.cluster serve``, or
      ``python -m recsys.cluster local``).
    * ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` on the workers
      of ``TF_CONFIG``; every worker runs the same program and keeps a replica.

    Example:
        >>> strategy = make_strategy("none")
        >>> with strategy.scope():
        ...     model = build_model()

    Args:
        kind: ``none``, ``parameter_server`` or ``multi_worker``.
        min_shard_bytes: Smallest shard of a partitioned variable, in bytes (>= 1).
            Only variables larger than this are split.
        max_shards: Most shards per variable (>= 1); default: the number of ps tasks.

    Returns:
        A ``tf.distribute.Strategy``.

    Raises:
        TFConfigError: ``TF_CONFIG`` is missing, malformed or does not fit ``kind``
            (see :func:`check_cluster`).
        ValueError: An unknown ``kind`` or a bad ``min_shard_bytes`` / ``max_shards``.
    """
    kind = _check_kind(kind)
    if (
        isinstance(min_shard_bytes, bool)
        or not isinstance(min_shard_bytes, numbers.Integral)
        or min_shard_bytes < 1
    ):
        raise ValueError(
            "`min_shard_bytes` must be a positive integer (bytes). "
            f"Received: min_shard_bytes={min_shard_bytes!r}"
        )
    if max_shards is not None and (
        isinstance(max_shards, bool)
        or not isinstance(max_shards, numbers.Integral)
        or max_shards < 1
    ):
        raise ValueError(
            "`max_shards` must be None (one shard per ps) or a positive integer. "
            f"Received: max_shards={max_shards!r}"
        )
    if kind == "none":
        from recsys._tf import tf

        return tf.distribute.get_strategy()
    config = read_tf_config()
    check_cluster(kind, config)
    from recsys._tf import tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=int(min_shard_bytes),
        max_shards=int(max_shards) if max_shards is not None else config.num_tasks("ps"),
    )
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def uses_coordinator(strategy: Any) -> bool:
    """Whether ``strategy`` runs through a ``ClusterCoordinator`` (ParameterServerStrategy).

    Such a strategy is what makes tf-keras's ``fit`` need a dataset function and
    ``steps_per_epoch`` and refuse ``verbose=1`` and batch-level callbacks.
    """
    return bool(getattr(strategy, "_should_use_with_coordinator", False))
