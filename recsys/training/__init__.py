"""Training: the :class:`Trainer` (fit with resume, evaluate, export), its checkpoints
and callbacks. ``conf/trainer`` builds the Trainer; :func:`recsys.train.train` drives it.

The TensorFlow-backed names load on first use, so :mod:`recsys.training.errors` and
:mod:`recsys.training.signals` can be imported before the hardware plan is applied.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CheckpointError",
    "FitResult",
    "HistoryRecorder",
    "Position",
    "StopSignals",
    "Trainer",
    "TrainingCheckpoints",
    "TrainingInterrupted",
    "TrainingState",
]

_HOMES = {
    "CheckpointError": "errors",
    "TrainingInterrupted": "errors",
    "StopSignals": "signals",
    "HistoryRecorder": "callbacks",
    "TrainingCheckpoints": "callbacks",
    "Position": "checkpoints",
    "TrainingState": "checkpoints",
    "FitResult": "trainer",
    "Trainer": "trainer",
}

if TYPE_CHECKING:  # pragma: no cover
    from recsys.training.callbacks import HistoryRecorder, TrainingCheckpoints
    from recsys.training.checkpoints import Position, TrainingState
    from recsys.training.errors import CheckpointError, TrainingInterrupted
    from recsys.training.signals import StopSignals
    from recsys.training.trainer import FitResult, Trainer


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"recsys.training.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'recsys.training' has no attribute {name!r}")
