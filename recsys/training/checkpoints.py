"""Checkpoints of a training run: the model, its optimizer's slots and the epoch count.

:class:`TrainingState` saves them together with :class:`tf.train.CheckpointManager`,
so a run killed at any point restarts from its last checkpoint with nothing lost.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from recsys._tf import keras, tf

__all__ = ["TrainingState"]

log = logging.getLogger(__name__)


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
