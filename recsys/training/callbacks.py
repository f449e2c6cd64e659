"""Keras callbacks of a training run: checkpoints (steps, time, epochs, stop signals)
and the per-epoch history."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from recsys._tf import keras
from recsys.checks import check_nonnegative, check_nonnegative_int, check_positive_int
from recsys.run import write_history
from recsys.training.checkpoints import Position, TrainingState
from recsys.training.errors import TrainingInterrupted
from recsys.training.signals import StopSignals

__all__ = ["EpochMetrics", "HistoryRecorder", "TrainingCheckpoints", "metric_mode"]

log = logging.getLogger(__name__)


class TrainingCheckpoints(keras.callbacks.Callback):
    """Save a :class:`TrainingState` during training, and stop cleanly on a signal.

    Saves at every epoch end; within an epoch, every ``every_steps`` steps (counted
    from the start of the run, so a resumed run saves at the same steps) and when
    ``every_seconds`` have passed since the last save. When ``stop`` has recorded a
    SIGTERM or SIGINT, it saves after the current step and raises
    :class:`~recsys.training.errors.TrainingInterrupted` (on an epoch's last step it
    lets the epoch end, validation included, and stops after the epoch's checkpoint).

    Args:
        state: What to save.
        steps_per_epoch: Steps in an epoch; None when unknown (then only epoch ends
            are saved and a stop request waits for the epoch end).
        start: Where this ``fit`` starts (a resumed run's restored position).
        every_steps: Save every this many steps (0: not by steps).
        every_seconds: Save when this many seconds passed since the last save (0: not
            by time).
        stop: The run's stop signals (None: signals are not handled here).
        clock: Seconds, monotonic (tests pass a fake).
        steps_per_execution: Steps per ``tf.function`` call (``compile``'s
            ``steps_per_execution``): Keras then calls the batch hook once per call,
            with the last step's index, so a save "every N steps" happens at the first
            call that crosses a multiple of N.

    Example:
        >>> saver = TrainingCheckpoints(state, steps_per_epoch=11, every_steps=5)
        >>> model.fit(data.repeat(), steps_per_epoch=11, epochs=3, callbacks=[saver])  # doctest: +SKIP
    """

    def __init__(
        self,
        state: TrainingState,
        steps_per_epoch: int | None,
        start: Position | None = None,
        every_steps: int = 0,
        every_seconds: float = 0.0,
        stop: StopSignals | None = None,
        clock: Callable[[], float] = time.monotonic,
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        self.state = state
        self.steps_per_execution = check_positive_int("steps_per_execution", steps_per_execution)
        self.steps_per_epoch = steps_per_epoch
        self.start = start or Position()
        self.every_steps = check_nonnegative_int("every_steps", every_steps)
        self.every_seconds = check_nonnegative("every_seconds", every_seconds)
        self.stop = stop
        self.clock = clock
        self.saved: list[str] = []
        self._epoch = self.start.epoch
        self._epoch_start = 0.0
        self._last_save = 0.0
        self._first_batch = True
        self._steps_done = 0  # steps of the current epoch done at the last batch hook

    def _number(self, position: Position) -> int:
        if self.steps_per_epoch is None:
            return position.epoch
        return position.global_step(self.steps_per_epoch)

    def _save(self, position: Position) -> str:
        path = self.state.save(position, self._number(position))
        self._last_save = self.clock()
        self.saved.append(path)
        if position.step:
            where = f"epoch {position.epoch + 1}, step {position.step} of {self.steps_per_epoch}"
        else:
            where = f"end of epoch {position.epoch}"
        log.info("Saved checkpoint %s (%s)", Path(path).name, where)
        return path

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Start the time since the last save."""
        self._last_save = self.clock()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Start the epoch timer; a resumed epoch gets back its metrics and its time."""
        self._epoch = epoch
        resumed = epoch == self.start.epoch and self.start.step > 0
        self._steps_done = self.start.step if resumed else 0
        if resumed:
            self.state.restore_metrics()
        self._epoch_start = self.clock() - (self.start.seconds if resumed else 0.0)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Save when a step or time interval is due, or a stop was requested."""
        if self._first_batch:
            self._first_batch = False
            expected = self.start.step if self._epoch == self.start.epoch else 0
            # With steps_per_execution > 1 the hook comes after the call's last step.
            if not expected <= batch < expected + self.steps_per_execution:
                raise RuntimeError(
                    f"The resumed epoch started at step {batch}, not at step {expected}: this "
                    "tf-keras version ignores the resume position recsys gives fit(). Pin "
                    "tf-keras to a tested version (2.15-2.21)."
                )
            self.state.assert_restored()
        if self.steps_per_epoch is None:
            return
        done, before = batch + 1, self._steps_done
        self._steps_done = done
        if done >= self.steps_per_epoch:
            return  # the epoch end saves
        position = Position(self._epoch, done, self.clock() - self._epoch_start)
        stopping = self._stop_within_epoch()
        # Due when the steps since the last hook crossed a multiple of every_steps.
        first = self._epoch * self.steps_per_epoch
        due = (
            self.every_steps
            and (first + done) // self.every_steps > (first + before) // self.every_steps
        ) or (self.every_seconds and self.clock() - self._last_save >= self.every_seconds)
        if not (due or stopping):
            return
        path = self._save(position)
        if stopping:
            assert self.stop is not None and self.stop.signum is not None
            raise TrainingInterrupted(
                self.stop.signum,
                f"saved checkpoint {Path(path).name} at epoch {position.epoch + 1}, step "
                f"{done} of {self.steps_per_epoch}. Run the same command again to resume there.",
                epoch=position.epoch,
                step=done,
            )

    def _stop_within_epoch(self) -> bool:
        """Whether to save and stop after this step (a stop signal arrived)."""
        return self.stop is not None and self.stop.requested

    def _stop_signal_at_epoch_end(self) -> int | None:
        """The signal to stop with at this epoch end, or None to go on."""
        return self.stop.signum if self.stop is not None else None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Save with ``epoch + 1`` completed epochs; stop here if a stop was requested."""
        path = self._save(Position(epoch + 1, 0, 0.0))
        signum = self._stop_signal_at_epoch_end()
        if signum is not None:
            raise TrainingInterrupted(
                signum,
                f"saved checkpoint {Path(path).name} at the end of epoch {epoch + 1}. Run the "
                "same command again to resume there.",
                epoch=epoch + 1,
                step=0,
            )


class HistoryRecorder(keras.callbacks.Callback):
    """Keep the per-epoch history across resumes, write it, and log each epoch.

    Args:
        path: ``history.json``, rewritten at each epoch end.
        history: History of the epochs already completed (from a previous run of
            the same run directory); extended in place.
        start: Where this ``fit`` starts; a resumed epoch's time counts the seconds
            spent in it before the interruption.
    """

    def __init__(
        self,
        path: Path,
        history: dict[str, list[float]] | None = None,
        start: Position | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.history: dict[str, list[float]] = history if history is not None else {}
        self.start = start or Position()
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """Start the epoch timer."""
        resumed = epoch == self.start.epoch and self.start.step > 0
        self._epoch_start = time.perf_counter() - (self.start.seconds if resumed else 0.0)

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


# Metric names (without a split prefix) that are better when lower.
_LOWER_IS_BETTER = ("loss", "rmse", "mae", "mse", "error", "seen_share")


def metric_mode(name: str) -> str:
    """``"min"`` for losses and errors (``val_loss``, ``val_rmse``), else ``"max"``.

    Example:
        >>> metric_mode("val_rmse"), metric_mode("val_top100_accuracy")
        ('min', 'max')
    """
    return "min" if name.lower().endswith(_LOWER_IS_BETTER) else "max"


class EpochMetrics(keras.callbacks.Callback):
    """At each epoch end, add the model's own metrics on a split to the epoch's logs.

    Keras's validation computes the training loss on the validation batches; what a
    recommender is judged by (exact top-100 accuracy over the whole catalogue, RMSE
    of clipped predictions, accuracy) comes from ``model.evaluate_metrics(data,
    split)``. Its ``"val/top100_accuracy"`` enters the logs as
    ``"val_top100_accuracy"``, so the history, ``curves.png``, TensorBoard and
    callbacks after this one (``EarlyStopping(monitor="val_top100_accuracy")``) see it.
    Put it before the callbacks that read the logs.

    Args:
        data: The data module the model evaluates on.
        split: The split to evaluate (``"val"``).

    Example:
        >>> callbacks = [EpochMetrics(data), HistoryRecorder(path)]
        >>> model.fit(train, epochs=3, callbacks=callbacks)  # doctest: +SKIP
    """

    def __init__(self, data: Any, split: str = "val") -> None:
        super().__init__()
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test'. Received: split={split!r}")
        self.data = data
        self.split = split

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Evaluate and add ``{split}_<metric>`` entries to ``logs`` (in place)."""
        if logs is None:
            return
        started = time.perf_counter()
        metrics = self.model.evaluate_metrics(self.data, split=self.split)
        for name, value in metrics.items():
            logs[name.replace("/", "_", 1)] = float(value)
        log.debug(
            "epoch %d: %s metrics in %.1f s", epoch + 1, self.split, time.perf_counter() - started
        )
