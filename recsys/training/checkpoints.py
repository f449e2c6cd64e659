"""Checkpoints of a training run: model, optimizer slots and the position in the data.

:class:`TrainingState` saves the model, its optimizer (slots and ``iterations``, so
Adam's bias correction continues exactly) and the :class:`Position` (completed epochs,
steps done in the current epoch, seconds spent in it) together, with
:class:`tf.train.CheckpointManager` keeping a bounded number of them.

A checkpoint is complete or ignored. TensorFlow writes its files under
``ckpt-N_temp/`` and renames them into place, then names the checkpoint in the
``checkpoint`` index file, which it replaces atomically (temporary file, then
rename): a checkpoint counts once that file lists it. On resume, the newest listed
checkpoint is read in full before anything is restored (TensorFlow checks each
tensor's CRC32C); a truncated or corrupted one is moved to ``unusable/`` with a
warning and the one before it is used; when none is usable the run stops with
:class:`~recsys.training.errors.CheckpointError` instead of starting over. Files a
killed save left behind (``ckpt-N_temp/``, checkpoints never listed) are removed.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys._tf import keras, tf
from recsys.checks import check_positive_int
from recsys.training.errors import CheckpointError

__all__ = ["Position", "TrainingState", "verify_checkpoint"]

log = logging.getLogger(__name__)

PREFIX = "ckpt"
UNUSABLE = "unusable"
_STATE_FILE = "checkpoint"
_NUMBERED = re.compile(rf"^{PREFIX}-(\d+)\.index$")


@dataclass(frozen=True)
class Position:
    """Where training stands: epochs completed, and steps done in the next one.

    Attributes:
        epoch: Completed epochs (the ``initial_epoch`` of a resumed ``fit``).
        step: Training steps already done in epoch ``epoch + 1`` (0 at an epoch end).
        seconds: Training seconds already spent in that epoch.

    Example:
        >>> Position(epoch=1, step=4).global_step(11)
        15
    """

    epoch: int = 0
    step: int = 0
    seconds: float = 0.0

    def global_step(self, steps_per_epoch: int) -> int:
        """Training steps done since the start of the run."""
        return self.epoch * steps_per_epoch + self.step


def verify_checkpoint(prefix: str) -> str | None:
    """Read every tensor of a checkpoint; what is wrong with it, or None when it is whole.

    TensorFlow checks the index's block checksums and each tensor's CRC32C as it
    reads, so a truncated file, a flipped byte or a missing shard all show here.

    Args:
        prefix: The checkpoint's path prefix (``.../ckpt-20``).
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_dtype_map():
            reader.get_tensor(name)
    except Exception as err:  # OpError, IndexError ("Read less bytes"), ValueError, ...
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{type(err).__name__}: {text}"
    return None


def _checkpoint_files(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.glob(f"{name}.*") if p.is_file()]


class TrainingState:
    """Model, optimizer and :class:`Position`, checkpointed together.

    Restoring works before the model or the optimizer has created its variables:
    TensorFlow restores each variable when it is created (deferred restoration).

    Args:
        model: The Keras model.
        optimizer: Its optimizer (slots and ``iterations`` are saved too).
        directory: Checkpoint folder.
        max_to_keep: Number of checkpoints kept (step and epoch ones together).
        read_directory: Restore from this folder instead, without changing it (a
            non-chief worker of a multi-worker run resumes from the chief's
            checkpoints and saves into its own scratch folder); None: ``directory``.

    Example:
        >>> state = TrainingState(model, model.optimizer, run_dir / "checkpoints")
        >>> position = state.restore()  # Position(0, 0) when there is nothing to resume
        >>> state.save(Position(epoch=1, step=0), number=11)
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        directory: Path,
        max_to_keep: int = 2,
        read_directory: Path | None = None,
    ) -> None:
        self.max_to_keep = check_positive_int("max_to_keep", max_to_keep)
        self.directory = Path(directory)
        self.read_directory = None if read_directory is None else Path(read_directory)
        self.model = model
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="completed_epochs")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_steps")
        self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_seconds")
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=self.epoch,
            step=self.step,
            epoch_seconds=self.seconds,
        )
        self._manager: tf.train.CheckpointManager | None = None
        self._restore_status: Any = None
        self._metric_values: list[tuple[tf.Variable, Any]] = []
        self.restored_from: str | None = None

    @property
    def manager(self) -> tf.train.CheckpointManager:
        """The checkpoint manager (made after :meth:`restore` has tidied the folder)."""
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self.checkpoint,
                str(self.directory),
                max_to_keep=self.max_to_keep,
                checkpoint_name=PREFIX,
            )
        return self._manager

    @property
    def position(self) -> Position:
        """The position restored or last saved."""
        return Position(
            int(self.epoch.numpy()), int(self.step.numpy()), float(self.seconds.numpy())
        )

    @property
    def completed_epochs(self) -> int:
        """Number of epochs the model has completed (restored or trained here)."""
        return int(self.epoch.numpy())

    # ------------------------------------------------------------ restore
    def _listed(self, directory: Path | None = None) -> list[str] | None:
        """Committed checkpoints, oldest first, from the index file; None if unreadable."""
        directory = self.directory if directory is None else directory
        state_file = directory / _STATE_FILE
        if not state_file.exists():
            return []
        state = tf.train.get_checkpoint_state(str(directory))
        if state is None:  # TensorFlow logs why (unparsable)
            return None
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        return [str(directory / Path(p).name) for p in paths if p]

    def _found(self, directory: Path | None = None) -> list[str]:
        """Checkpoints present on disk, oldest first (when the index file is unreadable)."""
        directory = self.directory if directory is None else directory
        numbered = []
        for path in directory.glob(f"{PREFIX}-*.index"):
            match = _NUMBERED.match(path.name)
            if match:
                numbered.append((int(match.group(1)), str(path.with_suffix(""))))
        return [prefix for _, prefix in sorted(numbered)]

    def _remove_leftovers(self, keep: list[str]) -> None:
        """Delete what killed saves left: temporary folders, files of unlisted checkpoints."""
        kept = {Path(p).name for p in keep}
        for path in self.directory.iterdir():
            name = path.name
            if path.is_dir() and name.startswith(f"{PREFIX}-") and name.endswith("_temp"):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file():
                unlisted = name.startswith(f"{PREFIX}-") and name.split(".", 1)[0] not in kept
                if unlisted or name.startswith(f"{_STATE_FILE}.tmp"):
                    path.unlink(missing_ok=True)

    def _set_aside(self, prefix: str) -> Path:
        """Move an unusable checkpoint's files to ``unusable/`` (kept for inspection)."""
        target = self.directory / UNUSABLE
        target.mkdir(exist_ok=True)
        for path in _checkpoint_files(self.directory, Path(prefix).name):
            path.replace(target / path.name)
        return target

    def _write_index(self, listed: list[str]) -> None:
        if not listed:
            (self.directory / _STATE_FILE).unlink(missing_ok=True)
            return
        tf.__internal__.train.update_checkpoint_state(
            save_dir=str(self.directory),
            model_checkpoint_path=listed[-1],
            all_model_checkpoint_paths=listed,
            save_relative_paths=True,
        )

    def restore(self) -> Position:
        """Restore the newest usable checkpoint, if any.

        Returns:
            The restored :class:`Position` (``Position()`` with no checkpoint).

        Raises:
            CheckpointError: Checkpoints exist but none of them can be read; the
                message lists each one's problem and how to start over.
        """
        if self.read_directory is not None and self.read_directory != self.directory:
            return self._restore_from(self.read_directory)
        if not self.directory.is_dir():
            return Position()
        listed = self._listed()
        committed = True
        if listed is None:
            log.warning(
                "The checkpoint index %s cannot be read; looking for checkpoints in the folder",
                self.directory / _STATE_FILE,
            )
            listed = self._found()
        elif not listed:
            # No index: nothing was committed, but a first save cut after its files were
            # renamed into place (before the index) leaves a complete checkpoint.
            listed, committed = self._found(), False
        self._remove_leftovers(listed)
        problems: list[tuple[str, str]] = []
        chosen = None
        for prefix in reversed(listed):
            problem = verify_checkpoint(prefix)
            if problem is None:
                chosen = prefix
                break
            problems.append((prefix, problem))
            log.warning("Checkpoint %s is unusable: %s", Path(prefix).name, problem)
        if chosen is None:
            if problems and committed:  # never start over silently: the user decides
                raise CheckpointError(self._none_usable(problems))
            if problems:
                log.warning("Removed the files of a checkpoint save that was cut short")
                self._remove_leftovers([])
            return Position()
        if problems:
            for prefix, _ in problems:
                self._set_aside(prefix)
            self._write_index([p for p in listed if p not in dict(problems)])
            log.warning(
                "Falling back to checkpoint %s; the unusable ones were moved to %s/",
                Path(chosen).name,
                self.directory / UNUSABLE,
            )
        return self._restore_checkpoint(chosen)

    def _restore_from(self, directory: Path) -> Position:
        """Restore the newest whole checkpoint of another run's ``directory``, read only.

        The same choice its owner makes (the newest listed one that reads in full), so
        every worker of a multi-worker run resumes at the same position; the owner
        tidies its folder itself.
        """
        if not directory.is_dir():
            return Position()
        listed = self._listed(directory) or self._found(directory)
        for prefix in reversed(listed):
            problem = verify_checkpoint(prefix)
            if problem is None:
                return self._restore_checkpoint(prefix)
            log.warning("Checkpoint %s is unusable: %s", Path(prefix).name, problem)
        if listed:
            raise CheckpointError(
                f"No usable checkpoint in {directory} to resume this worker from; the "
                "chief reports why. Start over with trainer.resume=false on every worker."
            )
        return Position()

    def _restore_checkpoint(self, chosen: str) -> Position:
        self._restore_status = self.checkpoint.restore(chosen)
        self.restored_from = chosen
        # Keras zeroes the metrics at each epoch start; a resumed epoch puts back the
        # running values it had when the checkpoint was saved (see restore_metrics).
        self._metric_values = [
            (variable, variable.numpy())
            for metric in self.model.metrics
            for variable in metric.variables
        ]
        position = self.position
        log.info(
            "Resuming from %s: %d completed epochs%s",
            chosen,
            position.epoch,
            f", {position.step} steps into epoch {position.epoch + 1}" if position.step else "",
        )
        return position

    def _none_usable(self, problems: list[tuple[str, str]]) -> str:
        lines = [
            f"No usable checkpoint in {self.directory}; this run will not start over by itself:"
        ]
        lines += [f"  {Path(p).name}: {problem}" for p, problem in problems]
        lines.append(
            "To train from the start, use trainer.resume=false (deletes these checkpoints), "
            f"move {self.directory} away, or give the run another hydra.run.dir."
        )
        return "\n".join(lines)

    def restore_metrics(self) -> None:
        """Put back the metric values the restored checkpoint held (a resumed epoch)."""
        for variable, value in self._metric_values:
            variable.assign(value)

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
                f"The checkpoint in {self.directory} does not match this model: "
                "the run directory was probably used with another model config. Use a new "
                "run directory (hydra.run.dir=...) or start over with trainer.resume=false. "
                f"TensorFlow says: {err}"
            ) from err

    def expect_partial(self) -> None:
        """Silence warnings about checkpointed values never used (e.g. optimizer slots
        of a finished run that is only evaluated again)."""
        if self._restore_status is not None:
            self._restore_status.expect_partial()

    # --------------------------------------------------------------- save
    def save(self, position: Position, number: int) -> str:
        """Save the state at ``position`` as ``ckpt-<number>``; returns its path prefix.

        Args:
            position: Where training stands.
            number: The checkpoint's number: the global step, so names sort by progress.
        """
        self.epoch.assign(position.epoch)
        self.step.assign(position.step)
        self.seconds.assign(position.seconds)
        return self.manager.save(checkpoint_number=number)

    def discard(self) -> None:
        """Delete every checkpoint (``trainer.resume=false``: start over)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.name == UNUSABLE:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith((PREFIX, _STATE_FILE)):
                path.unlink(missing_ok=True)
        self._manager = None
