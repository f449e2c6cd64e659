"""Keras callbacks and checkpoint state for a resumable training run.

:class:`TrainingState` checkpoints the model, its optimizer (slots included) and an
epoch counter with :class:`tf.train.CheckpointManager`; :class:`EpochCheckpoint`
saves it at every epoch end and :class:`HistoryRecorder` writes the per-epoch history
next to it, so a run killed at any point restarts from its last completed epoch with
nothing lost. :class:`FaultInjection` raises after a given number of batches, to test
exactly that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys._tf import keras, tf
from recsys.run import write_history

__all__ = [
    "EpochCheckpoint",
    "FaultInjection",
    "HistoryRecorder",
    "SimulatedFault",
    "TrainingState",
]

log = logging.getLogger(__name__)


class SimulatedFault(RuntimeError):
    """Raised by :class:`FaultInjection` to stand for a crash or a kill."""


class TrainingState:
    """Model, optimizer and completed-epoch count, checkpointed together.

    Restoring works before the model or the optimizer has created its variables:
    TensorFlow restores each variable when it is created (deferred restoration), so
    the state can be restored right after ``compile``.

    Args:
        model: The Keras model.
        optimizer: Its optimizer (slots are saved too).
        directory: Checkpoint folder.
        max_to_keep: Number of checkpoints kept.

    Example:
        >>> state = TrainingState(model, model.optimizer, run_dir / "checkpoints")
        >>> initial_epoch = state.restore()  # 0 when there is nothing to resume
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        directory: Path,
        max_to_keep: int = 2,
    ) -> None:
        if max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be >= 1. Received: max_to_keep={max_to_keep}")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(directory), max_to_keep=max_to_keep
        )
        self._restore_status: Any = None

    @property
    def completed_epochs(self) -> int:
        """Number of epochs the model has completed (restored or trained here)."""
        return int(self.epoch.numpy())

    def restore(self) -> int:
        """Restore the latest checkpoint, if any.

        Returns:
            The number of completed epochs (0 with no checkpoint): the
            ``initial_epoch`` to give ``fit``.
        """
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        self._restore_status = self.checkpoint.restore(latest)
        log.info("Resuming from %s (%d completed epochs)", latest, self.completed_epochs)
        return self.completed_epochs

    def assert_restored(self) -> None:
        """Check that every variable created so far was found in the checkpoint.

        Call after training has built the model and optimizer; a no-op when nothing
        was restored.

        Raises:
            AssertionError: The checkpoint does not match the model (e.g. the run
                directory belongs to a different model config).
        """
        if self._restore_status is None:
            return
        try:
            self._restore_status.assert_existing_objects_matched()
        except AssertionError as err:
            raise AssertionError(
                f"The checkpoint in {self.manager.directory} does not match this model: "
                "the run directory was probably used with another model config. Use a new "
                "run directory (hydra.run.dir=...) or start over with trainer.resume=false. "
                f"TensorFlow says: {err}"
            ) from err

    def expect_partial(self) -> None:
        """Silence warnings about checkpointed values never used (e.g. optimizer slots
        of a finished run that is only evaluated again)."""
        if self._restore_status is not None:
            self._restore_status.expect_partial()

    def save(self, completed_epochs: int) -> str:
        """Save the state after ``completed_epochs`` epochs; returns the checkpoint path."""
        self.epoch.assign(completed_epochs)
        return self.manager.save(checkpoint_number=completed_epochs)


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


class FaultInjection(keras.callbacks.Callback):
    """Raise :class:`SimulatedFault` after a given number of training batches.

    For testing resumption: the batch count is over the whole ``fit`` call, so
    ``after_batches = steps_per_epoch + 1`` fails one step into the second epoch,
    after the first epoch's checkpoint was written.

    Args:
        after_batches: Training batches to run before raising (>= 1).
    """

    def __init__(self, after_batches: int) -> None:
        super().__init__()
        if after_batches < 1:
            raise ValueError(
                f"`after_batches` must be >= 1. Received: after_batches={after_batches}"
            )
        self.after_batches = after_batches
        self.seen = 0

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Count the batch and raise once ``after_batches`` have run."""
        self.seen += 1
        if self.seen >= self.after_batches:
            raise SimulatedFault(
                f"Simulated fault after {self.seen} training batches "
                "(trainer.fault_after_batches is set)."
            )
