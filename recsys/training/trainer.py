"""The Trainer: fit with resume, evaluate and export; what ``conf/trainer`` builds.

:func:`recsys.train.train` builds the data, then asks a :class:`Trainer` to build the
model and optimizer, fit (resuming from the run directory's last checkpoint), evaluate
and export. Everything about *how* a model is trained lives here: checkpoints and
resume, the data order of resumed epochs, batch limits, callbacks, TensorBoard.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recsys._tf import keras, tf
from recsys.checks import check_positive_int
from recsys.data.contract import InteractionData, TextData
from recsys.run import RunPaths, read_history
from recsys.training.callbacks import EpochCheckpoint, HistoryRecorder
from recsys.training.checkpoints import TrainingState

__all__ = ["FitResult", "Trainer"]

log = logging.getLogger(__name__)

VERBOSITY = ("auto", 0, 1, 2)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        history: Per-epoch history of every completed epoch (earlier runs' included).
        initial_epoch: Epochs already completed when this fit started (0: a new run).
        completed_epochs: Epochs completed when it ended.
    """

    history: dict[str, list[float]]
    initial_epoch: int
    completed_epochs: int

    @property
    def train_seconds(self) -> float:
        """Training time over every epoch in the history, resumed runs' earlier ones too."""
        return round(sum(self.history.get("epoch_seconds", [])), 3)


def _split_rows(data: Any, split: str) -> int | None:
    """Rows of ``split`` when the data says (the model-data contract), else None."""
    if isinstance(data, InteractionData):
        return len(data.interactions(split))
    if isinstance(data, TextData):
        return len(data.texts(split)[0])
    return None


def _limit(dataset: tf.data.Dataset, batches: int | None) -> tf.data.Dataset:
    return dataset if batches is None else dataset.take(batches)


class Trainer:
    """Builds, fits (with resume), evaluates and exports a model in a run directory.

    A fit resumes from the run directory's last checkpoint when there is one: weights,
    optimizer slots, the epoch count and the history continue where they stopped, and
    the data order of the remaining epochs is the one an uninterrupted run would have
    seen. Checkpoints are saved at every epoch end.

    Example:
        >>> trainer = Trainer(epochs=3, tensorboard=False)
        >>> model = trainer.build(RetrievalModel, lambda: SparseAdam(3e-3), data)
        >>> result = trainer.fit(model, data, RunPaths(Path("runs/ml")))
        >>> metrics = trainer.evaluate(model, data)  # {'val/...': ..., 'test/...': ...}
        >>> trainer.export_model(model, data, RunPaths(Path("runs/ml")))

    Args:
        epochs: Total epochs; a resumed run trains only the missing ones.
        limit_train_batches: Train on at most this many batches per epoch (None: all).
        limit_val_batches: Validate on at most this many batches (None: all).
        validate: Compute the validation loss after each epoch (when there is a
            validation split).
        val_metrics: Also report ``val/...`` metrics at the end.
        resume: Restart from the run directory's last checkpoint when there is one.
        checkpoint_max_to_keep: Checkpoints kept in the run directory.
        tensorboard: Write TensorBoard logs.
        export: Write the model's SavedModel export (and the item table).
        verbose: Keras ``fit`` verbosity: ``"auto"`` (a progress bar on a terminal,
            one line per epoch otherwise), 0, 1 or 2.
        callbacks: More Keras callbacks for ``fit`` (e.g. ``EarlyStopping``).

    Raises:
        ValueError: An argument is out of range.
    """

    def __init__(
        self,
        epochs: int = 3,
        limit_train_batches: int | None = None,
        limit_val_batches: int | None = None,
        validate: bool = True,
        val_metrics: bool = True,
        resume: bool = True,
        checkpoint_max_to_keep: int = 2,
        tensorboard: bool = True,
        export: bool = True,
        verbose: str | int = "auto",
        callbacks: Sequence[keras.callbacks.Callback] = (),
    ) -> None:
        self.epochs = check_positive_int("epochs", epochs)
        self.limit_train_batches = (
            None
            if limit_train_batches is None
            else check_positive_int("limit_train_batches", limit_train_batches)
        )
        self.limit_val_batches = (
            None
            if limit_val_batches is None
            else check_positive_int("limit_val_batches", limit_val_batches)
        )
        self.validate = bool(validate)
        self.val_metrics = bool(val_metrics)
        self.resume = bool(resume)
        self.checkpoint_max_to_keep = check_positive_int(
            "checkpoint_max_to_keep", checkpoint_max_to_keep
        )
        self.tensorboard = bool(tensorboard)
        self.export = bool(export)
        if verbose not in VERBOSITY:
            raise ValueError(f"`verbose` must be one of {VERBOSITY}. Received: verbose={verbose!r}")
        self.verbose = verbose
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, keras.callbacks.Callback):
                raise ValueError(
                    "`callbacks` must hold Keras callbacks (tf_keras.callbacks.Callback). "
                    f"Received: {callback!r}"
                )

    # ------------------------------------------------------------------ build
    def build(
        self,
        model_fn: Callable[..., keras.Model],
        optimizer_fn: Callable[[], keras.optimizers.Optimizer],
        data: Any,
    ) -> keras.Model:
        """The model for ``data``, compiled with a new optimizer.

        Args:
            model_fn: Builds the model from ``data=`` (e.g. a model class, or Hydra's
                ``instantiate(cfg.model, _partial_=True)``).
            optimizer_fn: Builds the optimizer.
            data: The set-up data module.
        """
        model = model_fn(data=data)
        model.compile(optimizer=optimizer_fn())
        return model

    # -------------------------------------------------------------------- fit
    def _verbosity(self) -> int:
        if self.verbose == "auto":
            return 1 if sys.stdout.isatty() else 2
        return int(self.verbose)

    def _has_validation(self, data: Any) -> bool:
        rows = _split_rows(data, "val")
        return rows is None or rows > 0

    def _tensorboard(self, run: RunPaths) -> list[keras.callbacks.Callback]:
        if not self.tensorboard:
            return []
        if importlib.util.find_spec("tensorboard") is None:
            log.warning(
                "trainer.tensorboard is set but TensorBoard is not installed (pip install tensorboard)"
            )
            return []
        return [
            keras.callbacks.TensorBoard(
                log_dir=str(run.tensorboard), write_graph=False, profile_batch=0
            )
        ]

    def fit(self, model: keras.Model, data: Any, run: RunPaths) -> FitResult:
        """Train ``model`` on ``data``'s training split, resuming ``run``'s checkpoint.

        Args:
            model: A compiled model (see :meth:`build`).
            data: The set-up data module (``train_dataset()``, ``val_dataset()``).
            run: The run directory: checkpoints, history and TensorBoard logs go there.

        Returns:
            The history and the epochs completed before and after.
        """
        state = TrainingState(model, model.optimizer, run.checkpoints, self.checkpoint_max_to_keep)
        initial_epoch = state.restore() if self.resume else 0
        history = read_history(run.history, initial_epoch)
        has_val = self._has_validation(data)
        if not has_val:
            log.info(
                "No validation split (e.g. data.val_fraction=0): no validation, no val/ metrics"
            )
        if initial_epoch >= self.epochs:
            log.info(
                "Nothing to train: %d of %d epochs already completed", initial_epoch, self.epochs
            )
            state.expect_partial()
            return FitResult(history, initial_epoch, state.completed_epochs)

        train_data = _limit(data.train_dataset(), self.limit_train_batches)
        if int(train_data.cardinality()) == tf.data.UNKNOWN_CARDINALITY:
            # Keras then learns the epoch length by running into the end of the first
            # epoch; that last, empty step still advances optimizer.iterations.
            log.warning(
                "The training dataset's length is unknown to tf.data; each fit() then takes "
                "one extra optimizer step count (Adam's bias correction shifts by one), so "
                "a resumed run is close to, not bit-identical with, an uninterrupted one. "
                "Fix: end the pipeline with tf.data.experimental.assert_cardinality(batches)."
            )
        # Keras makes one iterator before the first epoch and a fresh one per epoch; a
        # seeded shuffle draws its order when an iterator is made. Drawing the orders of
        # the epochs already done keeps a resumed run on the uninterrupted run's orders.
        for _ in range(initial_epoch):
            iter(train_data)
        val_data = None
        if self.validate and has_val:
            val_data = _limit(data.val_dataset(), self.limit_val_batches)
        callbacks = [
            HistoryRecorder(run.history, history),
            EpochCheckpoint(state),
            *self._tensorboard(run),
            *self.callbacks,
        ]
        log.info("Training epochs %d..%d", initial_epoch + 1, self.epochs)
        model.fit(
            train_data,
            validation_data=val_data,
            epochs=self.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=self._verbosity(),
        )
        return FitResult(history, initial_epoch, state.completed_epochs)

    # --------------------------------------------------------------- evaluate
    def evaluate(self, model: keras.Model, data: Any) -> dict[str, float]:
        """The model's final metrics: ``val/...`` (when asked and present) and ``test/...``."""
        log.info("Evaluating")
        metrics: dict[str, float] = {}
        if self.val_metrics and self._has_validation(data):
            metrics.update(model.evaluate_metrics(data, split="val"))
        metrics.update(model.evaluate_metrics(data, split="test"))
        for name, value in sorted(metrics.items()):
            log.info("%s = %.4f", name, value)
        return metrics

    # ----------------------------------------------------------------- export
    def export_model(self, model: keras.Model, data: Any, run: RunPaths) -> None:
        """Write the model's SavedModel (``export/``) and, for item data, ``items.parquet``.

        Does nothing when the trainer was built with ``export=False``.
        """
        if not self.export:
            return
        model.export(str(run.export))
        log.info("Exported SavedModel to %s", run.export)
        if isinstance(data, InteractionData):
            data.catalogue().to_frame().to_parquet(run.items, index=False)
