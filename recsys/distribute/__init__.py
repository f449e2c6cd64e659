"""Training on a tf.distribute cluster: TF_CONFIG, servers, the strategy, PSS helpers.

One module per job; importing this package does not import TensorFlow:

* :mod:`~recsys.distribute.tf_config`: TF_CONFIG built, parsed and checked;
* :mod:`~recsys.distribute.ports`: free ports held until their servers bind them;
* :mod:`~recsys.distribute.server`: one worker or ps server (``recsys.cluster serve``);
* :mod:`~recsys.distribute.local_cluster`: a loopback cluster around a command
  (``recsys.cluster local``);
* :mod:`~recsys.distribute.local_workers`: a loopback cluster of workers that each
  run the command (``recsys.cluster local --mode multi_worker``);
* :mod:`~recsys.distribute.workers`: who writes what under MultiWorkerMirroredStrategy
  (the chief; the others' scratch directories);
* :mod:`~recsys.distribute.strategy`: :func:`make_strategy` (imports TensorFlow when
  called, after checking TF_CONFIG);
* :mod:`~recsys.distribute.parameter_server` (imports TensorFlow; loaded on first
  use): what a trainer calls under ``ParameterServerStrategy``.
"""

from __future__ import annotations

import importlib
from typing import Any

from recsys.distribute.strategy import (
    DEFAULT_MIN_SHARD_BYTES,
    STRATEGY_KINDS,
    check_cluster,
    make_strategy,
    uses_coordinator,
)
from recsys.distribute.tf_config import TFConfig, TFConfigError, read_tf_config

__all__ = [
    "DEFAULT_MIN_SHARD_BYTES",
    "STRATEGY_KINDS",
    "TFConfig",
    "TFConfigError",
    "check_cluster",
    "make_strategy",
    "parameter_server",
    "read_tf_config",
    "uses_coordinator",
]


def __getattr__(name: str) -> Any:
    if name == "parameter_server":
        return importlib.import_module("recsys.distribute.parameter_server")
    raise AttributeError(f"module 'recsys.distribute' has no attribute {name!r}")
