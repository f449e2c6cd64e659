"""recsys: row-sparse training of huge embedding tables on TensorFlow.

Importing ``recsys`` is cheap: it does not import TensorFlow. It only makes sure
``TF_USE_LEGACY_KERAS=1`` is in the environment, because tensorflow-recommenders
needs ``tf.keras`` to be Keras 2 (tf-keras) and TensorFlow reads the variable
when ``tf.keras`` is first resolved. TensorFlow is imported the first time a
TensorFlow-backed name is used (``recsys.layers``, ``recsys.optimizers``, ...),
so the hardware launcher can set threading variables before that happens.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from recsys._env import ensure_legacy_keras_env

__version__ = "0.1.0"

ensure_legacy_keras_env()

_SUBMODULES = (
    "benchmarks",
    "cluster",
    "data",
    "distribute",
    "evaluation",
    "hardware",
    "launch",
    "layers",
    "models",
    "optimizers",
    "recommend",
    "towers",
    "train",
)

__all__ = ["__version__", *_SUBMODULES]

if TYPE_CHECKING:  # pragma: no cover
    from recsys import layers, optimizers  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"recsys.{name}")
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
