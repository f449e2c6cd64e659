"""Keras callbacks of a training run: epoch checkpoints and the per-epoch history."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys._tf import keras
from recsys.run import write_history
from recsys.training.checkpoints import TrainingState

__all__ = ["EpochCheckpoint", "HistoryRecorder"]

log = logging.getLogger(__name__)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save a :class:`TrainingState` at the end of every epoch.

    Args:
        state: What to save.
    """

    def __init__(self, state: TrainingState) -> None:
        super().__init__()
        self.state = state

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """After the first step, check that a restored checkpoint matched the model."""
        if batch == 0:
            self.state.assert_restored()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Save with the number of completed epochs (``epoch + 1``)."""
        path = self.state.save(epoch + 1)
        log.debug("Saved checkpoint %s", path)


class HistoryRecorder(keras.callbacks.Callback):
    """Keep the per-epoch history across resumes, write it, and log each epoch.

    Args:
        path: ``history.json``, rewritten at each epoch end.
        history: History of the epochs already completed (from a previous run of
            the same run directory); extended in place.
    """

    def __init__(self, path: Path, history: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self.path = path
        self.history: dict[str, list[float]] = history if history is not None else {}
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Start the epoch timer."""
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Append this epoch's logs, write ``history.json`` and log one line."""
        logs = dict(logs or {})
        logs["epoch_seconds"] = time.perf_counter() - self._epoch_start
        done = len(self.history.get("epoch", []))
        self.history.setdefault("epoch", []).append(epoch + 1)
        for name, value in logs.items():
            # A metric that appears late is padded so every list lines up with "epoch".
            values = self.history.setdefault(name, [float("nan")] * done)
            values.append(float(value))
        write_history(self.path, self.history)
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(logs.items()))
        log.info("epoch %d: %s", epoch + 1, shown)
