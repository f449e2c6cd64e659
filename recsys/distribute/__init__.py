"""Training on a tf.distribute cluster: TF_CONFIG, free ports, the strategy, PSS helpers.

Importing this package does not import TensorFlow: :mod:`recsys.distribute.tf_config`
and :mod:`recsys.distribute.ports` are plain Python, and
:func:`~recsys.distribute.strategy.make_strategy` imports TensorFlow when called.
:mod:`recsys.distribute.parameter_server` (imported on first use) holds what a
trainer calls under ``ParameterServerStrategy``.
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
