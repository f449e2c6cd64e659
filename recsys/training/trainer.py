"""The Trainer: fit with resume, evaluate and export; what ``conf/trainer`` builds.

:func:`recsys.train.train` builds the data, then asks a :class:`Trainer` to build the
model and optimizer, fit (resuming from the run directory's last checkpoint), evaluate
and export. Everything about *how* a model is trained lives here: checkpoints and
resume, the data order of resumed epochs, batch limits, callbacks, TensorBoard.

How a resumed run sees the data an uninterrupted one would. The data modules'
training pipelines draw a fresh seeded order each time an iterator is made (over the
same dataset object, ``repeat()`` included), so the order of epoch ``k`` is the
``k``-th draw. :meth:`Trainer.fit` hands Keras ``train.repeat()`` with
``steps_per_epoch`` (one iterator for the whole fit, one draw per epoch), after
drawing once more than the completed epochs (the first draw is the iterator earlier
versions let Keras make and never use, so every order stays what it was). A run
resumed ``s`` steps into an epoch skips the ``s`` batches it already trained on
(``Dataset.skip`` on that epoch's order) and starts Keras's epoch at step ``s``
(the counter tf-keras's own ``BackupAndRestore`` sets; that callback, unlike this,
restarts the epoch's data from its first batch).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from recsys._tf import keras, tf
from recsys.checks import (
    check_bool,
    check_nonnegative,
    check_nonnegative_int,
    check_positive_int,
)
from recsys.data.contract import InteractionData, TextData
from recsys.distribute.strategy import uses_coordinator
from recsys.distribute.workers import chief_run_dir
from recsys.run import RunPaths, atomic_path, read_history, replace_directory
from recsys.training.callbacks import (
    EpochMetrics,
    HistoryRecorder,
    TrainingCheckpoints,
    metric_mode,
)
from recsys.training.checkpoints import Position, TrainingState
from recsys.training.signals import StopSignals

__all__ = ["FitResult", "Trainer", "check_learning_rate"]

log = logging.getLogger(__name__)

VERBOSITY = ("auto", 0, 1, 2)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        history: Per-epoch history of every completed epoch (earlier runs' included).
        initial_epoch: Epochs already completed when this fit started (0: a new run).
        completed_epochs: Epochs completed when it ended.
        initial_step: Steps of epoch ``initial_epoch + 1`` already done when it started
            (a run resumed from a step checkpoint).
        checkpoints: The checkpoints this fit saved, in order.
    """

    history: dict[str, list[float]]
    initial_epoch: int
    completed_epochs: int
    initial_step: int = 0
    checkpoints: tuple[str, ...] = ()

    @property
    def train_seconds(self) -> float:
        """Training time over every epoch in the history, resumed runs' earlier ones too."""
        return round(sum(self.history.get("epoch_seconds", [])), 3)


def _split_rows(data: Any, split: str) -> int | None:
    """Rows of ``split`` when the data says (the model-data contract), else None."""
    count = getattr(data, "split_rows", None)
    if callable(count):  # a streaming module counts without encoding the split
        return int(count(split))
    if isinstance(data, InteractionData):
        return len(data.interactions(split))
    if isinstance(data, TextData):
        return len(data.texts(split)[0])
    return None


def _limit(dataset: tf.data.Dataset, batches: int | None) -> tf.data.Dataset:
    return dataset if batches is None else dataset.take(batches)


def _split_dataset(model: keras.Model, data: Any, split: str) -> tf.data.Dataset:
    """``data``'s ``split`` dataset; text data encoded once by the model's encoder.

    A model with ``encode_inputs`` (e.g. :class:`~recsys.models.TextClassifier`)
    then trains from token ids: the texts are vectorized once per split, before
    batching and caching, instead of in every training step.
    """
    own = getattr(model, "training_batches", None) if split == "train" else None
    if callable(own):  # a model that trains on its own batches (e.g. AutoRecModel's items)
        return own()
    method = getattr(data, f"{split}_dataset")
    encode = getattr(model, "encode_inputs", None)
    if isinstance(data, TextData) and encode is not None:
        return method(encode=encode)
    return method()


def _known_steps(dataset: tf.data.Dataset) -> int | None:
    steps = int(dataset.cardinality())
    return steps if steps > 0 else None


def check_learning_rate(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """``optimizer`` itself, when its learning rate (a number, not a schedule) is > 0.

    tf-keras's optimizers accept a negative or zero rate and train backwards or not at
    all; a config that sets one is a mistake to report, not to run.

    Raises:
        ValueError: The learning rate is a number <= 0.
    """
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, tf.Variable | tf.Tensor) and rate.shape.rank == 0:
        value = float(f"{float(rate.numpy()):.7g}")  # the float32 value, as configured
        if not value > 0:
            raise ValueError(
                f"`learning_rate` must be a number > 0. Received: learning_rate={value!r}"
            )
    return optimizer


def _training_input(
    train_data: tf.data.Dataset, start: Position, steps: int | None, epochs: int
) -> tuple[tf.data.Dataset, dict[str, int]]:
    """What ``fit`` gets to see, from ``start``, the orders an uninterrupted run sees.

    With a known epoch length the epochs left are one finite stream: it ends with the
    last step, so no background thread is still producing a next epoch that nobody
    reads when ``fit`` returns (an endless ``repeat()`` made TensorFlow wait 10-20 s
    for them while it destroyed the iterator).

    Returns:
        The dataset and the ``fit`` arguments that go with it (``steps_per_epoch``).
    """
    if steps is None:
        # Keras makes one iterator before the first epoch and a fresh one per epoch.
        for _ in range(start.epoch):
            iter(train_data)
        return train_data, {}
    for _ in range(start.epoch + 1):  # see the module docstring
        iter(train_data)
    x = train_data.repeat(epochs - start.epoch)
    return (x.skip(start.step) if start.step else x), {"steps_per_epoch": steps}


class _ResumeAt:
    """Answers tf-keras's ``fit`` when it asks where to start (epoch, step).

    ``Model.fit`` asks ``model._training_state`` for its initial counters; tf-keras's
    ``BackupAndRestore`` installs its own object there the same way.
    """

    def __init__(self, position: Position) -> None:
        self.position = position

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch: int | None, initial_epoch: int, mode: Any = None
    ) -> tuple[int, int]:
        return self.position.epoch, self.position.step


class _EpochCheckpoints(TrainingCheckpoints):
    """:class:`TrainingCheckpoints` without its batch hook, for ParameterServerStrategy.

    tf-keras refuses callbacks with batch-level hooks under a ``ClusterCoordinator``
    (steps run on remote workers); the Keras default hook put back makes this one
    save at epoch ends and honour stop signals there.
    """

    on_train_batch_end = keras.callbacks.Callback.on_train_batch_end


class _AgreedCheckpoints(TrainingCheckpoints):
    """:class:`TrainingCheckpoints` whose saves every worker of a multi-worker run makes together.

    Under MultiWorkerMirroredStrategy a save reads synchronized variables (Keras
    metrics) through collective operations every worker must join, so all workers
    save at the same steps: epoch ends and every ``every_steps`` steps, not by time.
    A stop signal (which may reach one worker only, or each at another step) is
    honoured at the next epoch end, when the workers agree through one all-reduce.
    """

    def __init__(self, *args: Any, strategy: tf.distribute.Strategy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.strategy = strategy

    def _stop_within_epoch(self) -> bool:
        return False

    def _stop_signal_at_epoch_end(self) -> int | None:
        own = super()._stop_signal_at_epoch_end()
        if not _any_worker(self.strategy, own is not None):
            return None
        return own if own is not None else int(signal.SIGTERM)


def _any_worker(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """Whether ``flag`` is true on any worker (one all-reduce; every worker must call it)."""
    value = tf.constant(1.0 if flag else 0.0)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
    return float(total.numpy()) > 0


def _per_worker(make: Callable[[], tf.data.Dataset], batches: int | None, skip: int = 0) -> Any:
    """A ``DatasetCreator`` each worker calls to build its own, endless pipeline.

    Worker ``i`` of ``n`` reads batches ``i, i + n, ...`` of every pass (one worker: all,
    in the data's order), so together the workers make about one pass per epoch;
    ``skip`` batches (a resumed run's completed epochs), shared by the workers, are left
    out at the start: with one worker, a resumed run sees the orders an uninterrupted
    one would.
    """
    from recsys.distribute.parameter_server import dataset_creator

    def batches_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        dataset = _limit(make(), batches)
        if context.num_input_pipelines > 1:
            dataset = dataset.shard(context.num_input_pipelines, context.input_pipeline_id)
        dataset = dataset.repeat()
        own = skip // context.num_input_pipelines  # each worker did about its share
        return dataset.skip(own) if own else dataset

    return dataset_creator(batches_fn, repeat=False)


def _num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker tasks of ``strategy``'s cluster (1 without one)."""
    # ParameterServerStrategy (TF 2.21) keeps its resolver on itself, while the public
    # ``cluster_resolver`` property reads the extended object's: None there.
    resolver = getattr(strategy, "cluster_resolver", None) or getattr(
        strategy, "_cluster_resolver", None
    )
    if resolver is None:
        return 1
    return max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))


def _create_variables(model: keras.Model, data: Any) -> None:
    """Build ``model`` by calling it on one training batch inside a ``tf.function``.

    Under ParameterServerStrategy the variables must exist (sharded, on the parameter
    servers) before the optimizer's slots are built and a checkpoint is restored.
    Inside a ``tf.function`` each sharded table is read one gather per shard; an
    eager call would bring the whole table to the chief.
    """
    batch = next(iter(_split_dataset(model, data, "train").take(1)))
    x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
    tf.function(lambda inputs: model(inputs, training=False))(x)


@contextlib.contextmanager
def _starting_at(model: keras.Model, position: Position) -> Iterator[None]:
    model._training_state = _ResumeAt(position)
    try:
        yield
    finally:
        model._training_state = None


class Trainer:
    """Builds, fits (with resume), evaluates and exports a model in a run directory.

    A fit resumes from the run directory's last usable checkpoint when there is one:
    weights, optimizer slots (``iterations`` too), the position in the data, the
    running metrics of a cut epoch and the history continue where they stopped, and
    the remaining batches come in the order an uninterrupted run would have seen.
    Checkpoints are saved at every epoch end, every ``checkpoint_every_steps`` steps,
    every ``checkpoint_every_seconds`` seconds, and when a SIGTERM or SIGINT stops the
    run (see :meth:`fit`).

    Step-level checkpoints need the epoch's length from tf.data and batch-level Keras
    callbacks. A distribution strategy that lacks them (ParameterServerStrategy:
    steps run on remote workers, no batch-level callbacks) returns False from
    :meth:`supports_step_checkpoints`; then checkpoints stay at epoch granularity and
    a stop signal is honoured at the next epoch end.

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
        resume: Restart from the run directory's last checkpoint when there is one;
            False deletes the directory's checkpoints and starts over.
        checkpoint_max_to_keep: Checkpoints kept in the run directory (step and
            epoch checkpoints together; at least 2 lets a corrupted newest one fall
            back to the one before it).
        checkpoint_every_steps: Also checkpoint every this many training steps,
            counted from the start of the run (0: not by steps).
        checkpoint_every_seconds: Also checkpoint when this many seconds passed since
            the last checkpoint (0: not by time).
        tensorboard: Write TensorBoard logs.
        export: Write the model's SavedModel export (and the item table).
        verbose: Keras ``fit`` verbosity: ``"auto"`` (a progress bar on a terminal,
            one line per epoch otherwise), 0, 1 or 2.
        callbacks: More Keras callbacks for ``fit`` (e.g. ``EarlyStopping``).
        strategy: The ``tf.distribute.Strategy`` to build, compile and fit under
            (:func:`recsys.distribute.make_strategy`; None: TensorFlow's default, one
            process). Under ParameterServerStrategy (this process is the chief) the
            model's variables and the optimizer's slots are created on the parameter
            servers before a checkpoint is restored, each worker builds its own input
            pipeline, ``steps_per_epoch`` comes from the data, checkpoints are saved
            at epoch ends, and ``verbose=1`` becomes 2; with more than one worker,
            ``SparseAdam(sparse_update="assign")`` is switched to ``"add"``. Under
            MultiWorkerMirroredStrategy every worker runs this trainer: a non-chief
            resumes from the chief's checkpoints (its ``run`` is its scratch
            directory, see :mod:`recsys.distribute.workers`), every worker saves at
            epoch ends and every ``checkpoint_every_steps`` steps (none by time),
            and stop signals are honoured at epoch ends, agreed by all workers.
        steps_per_execution: Training steps per ``tf.function`` call (``compile``'s
            argument; more than 1 saves round trips to remote workers).
        epoch_metrics: After each epoch, add the model's own validation metrics
            (``model.evaluate_metrics(data, "val")``: exact top-100 accuracy, RMSE,
            accuracy) to the epoch's logs as ``val_top100_accuracy``, ``val_rmse``...:
            they enter ``history.json``, ``curves.png`` and TensorBoard, and
            ``EarlyStopping`` can watch them. Needs a validation split.
        early_stopping_patience: Stop when ``early_stopping_monitor`` has not
            improved for this many epochs, and keep the best epoch's weights for the
            evaluation and the export (0: never stop early). The last epoch's
            checkpoint holds the last weights, so running the same command again
            resumes training from there.
        early_stopping_monitor: The logged metric to watch (``val_loss``,
            ``val_top100_accuracy``, ``val_rmse``...); lower is better for losses and
            errors, higher for the rest.

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
        checkpoint_every_steps: int = 0,
        checkpoint_every_seconds: float = 600.0,
        tensorboard: bool = True,
        export: bool = True,
        verbose: str | int = "auto",
        callbacks: Sequence[keras.callbacks.Callback] = (),
        strategy: tf.distribute.Strategy | None = None,
        steps_per_execution: int = 1,
        epoch_metrics: bool = True,
        early_stopping_patience: int = 0,
        early_stopping_monitor: str = "val_loss",
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
        self.validate = check_bool("validate", validate)
        self.val_metrics = check_bool("val_metrics", val_metrics)
        self.resume = check_bool("resume", resume)
        self.checkpoint_max_to_keep = check_positive_int(
            "checkpoint_max_to_keep", checkpoint_max_to_keep
        )
        self.checkpoint_every_steps = check_nonnegative_int(
            "checkpoint_every_steps", checkpoint_every_steps
        )
        self.checkpoint_every_seconds = check_nonnegative(
            "checkpoint_every_seconds", checkpoint_every_seconds
        )
        self.tensorboard = check_bool("tensorboard", tensorboard)
        self.export = check_bool("export", export)
        if verbose not in VERBOSITY:
            raise ValueError(f"`verbose` must be one of {VERBOSITY}. Received: verbose={verbose!r}")
        self.verbose = verbose
        if isinstance(callbacks, str | bytes) or not isinstance(callbacks, Sequence):
            raise ValueError(
                f"`callbacks` must be a list of Keras callbacks. Received: callbacks={callbacks!r}"
            )
        self.callbacks = list(callbacks)
        self.strategy = strategy if strategy is not None else tf.distribute.get_strategy()
        if not isinstance(self.strategy, tf.distribute.Strategy):
            raise ValueError(
                "`strategy` must be a tf.distribute.Strategy (recsys.distribute.make_strategy) "
                f"or None. Received: strategy={strategy!r}"
            )
        self.steps_per_execution = check_positive_int("steps_per_execution", steps_per_execution)
        self.epoch_metrics = check_bool("epoch_metrics", epoch_metrics)
        self.early_stopping_patience = check_nonnegative_int(
            "early_stopping_patience", early_stopping_patience
        )
        if not isinstance(early_stopping_monitor, str) or not early_stopping_monitor:
            raise ValueError(
                "`early_stopping_monitor` must name a logged metric, e.g. 'val_loss' or "
                "'val_top100_accuracy'. Received: "
                f"early_stopping_monitor={early_stopping_monitor!r}"
            )
        self.early_stopping_monitor = early_stopping_monitor
        for callback in self.callbacks:
            if not isinstance(callback, keras.callbacks.Callback):
                raise ValueError(
                    "`callbacks` must hold Keras callbacks (tf_keras.callbacks.Callback). "
                    f"Received: callbacks={self.callbacks!r}"
                )
            if isinstance(callback, keras.callbacks.BackupAndRestore):
                raise ValueError(
                    "`callbacks` must not hold BackupAndRestore: the trainer checkpoints "
                    "and resumes by itself (trainer.checkpoint_every_steps, "
                    f"trainer.checkpoint_every_seconds). Received: callbacks={self.callbacks!r}"
                )

    def supports_step_checkpoints(self) -> bool:
        """Whether checkpoints may be saved within an epoch.

        False under a strategy without batch-level callbacks (ParameterServerStrategy:
        steps run on remote workers): checkpoints then stay at epoch granularity and
        stop signals are honoured at epoch ends.
        """
        return not self.coordinated

    @property
    def multi_worker(self) -> bool:
        """Whether training runs on MultiWorkerMirroredStrategy (every worker runs the program)."""
        return isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    @property
    def is_chief(self) -> bool:
        """Whether this process keeps the run's files (False on a non-chief worker)."""
        return not self.multi_worker or bool(self.strategy.extended.should_checkpoint)

    @property
    def coordinated(self) -> bool:
        """Whether training runs through a ``ClusterCoordinator`` (ParameterServerStrategy)."""
        return uses_coordinator(self.strategy)

    # ------------------------------------------------------------------ build
    def build(
        self,
        model_fn: Callable[..., keras.Model],
        optimizer_fn: Callable[[], keras.optimizers.Optimizer],
        data: Any,
    ) -> keras.Model:
        """The model for ``data``, compiled with a new optimizer, under the strategy.

        Under ParameterServerStrategy the model is also built (called once, inside a
        ``tf.function``) and the optimizer's slots created next to each variable shard,
        so that a checkpoint restored next finds every variable it holds.

        Args:
            model_fn: Builds the model from ``data=`` (e.g. a model class, or Hydra's
                ``instantiate(cfg.model, _partial_=True)``).
            optimizer_fn: Builds the optimizer.
            data: The set-up data module.
        """
        options = {}
        if self.steps_per_execution != 1:
            options["steps_per_execution"] = self.steps_per_execution
        with self.strategy.scope():
            model = model_fn(data=data)
            if not self.coordinated:
                model.compile(optimizer=optimizer_fn(), **options)
                return model
            from recsys.distribute.parameter_server import (
                build_optimizer_slots,
                updates_for_concurrent_workers,
            )

            _create_variables(model, data)
            optimizer = optimizer_fn()
            updates_for_concurrent_workers(optimizer, _num_workers(self.strategy))
            model.compile(optimizer=optimizer, **options)
            build_optimizer_slots(model.optimizer, model.trainable_variables)
        return model

    # -------------------------------------------------------------------- fit
    def _verbosity(self) -> int:
        verbose = (1 if sys.stdout.isatty() else 2) if self.verbose == "auto" else self.verbose
        # tf-keras refuses a progress bar under ParameterServerStrategy (no batch logs).
        return 2 if verbose == 1 and self.coordinated else int(verbose)

    def _has_validation(self, data: Any) -> bool:
        rows = _split_rows(data, "val")
        return rows is None or rows > 0

    def _epoch_metrics(self, data: Any, validating: bool) -> list[keras.callbacks.Callback]:
        """The model's own validation metrics in each epoch's logs (``val_top100_accuracy``)."""
        if not (self.epoch_metrics and validating):
            return []
        return [EpochMetrics(data, split="val")]

    def _early_stopping(self, validating: bool) -> list[keras.callbacks.Callback]:
        if not self.early_stopping_patience:
            return []
        if not validating:
            log.warning(
                "trainer.early_stopping_patience=%d is ignored: there is no validation "
                "split (set data.val_fraction > 0) or trainer.validate is false.",
                self.early_stopping_patience,
            )
            return []
        monitor = self.early_stopping_monitor
        return [
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                mode=metric_mode(monitor),
                patience=self.early_stopping_patience,
                restore_best_weights=True,
                verbose=1,
            )
        ]

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

    def fit(
        self,
        model: keras.Model,
        data: Any,
        run: RunPaths,
        stop: StopSignals | None = None,
    ) -> FitResult:
        """Train ``model`` on ``data``'s training split, resuming ``run``'s checkpoint.

        Args:
            model: A compiled model (see :meth:`build`).
            data: The set-up data module (``train_dataset()``, ``val_dataset()``).
            run: The run directory: checkpoints, history and TensorBoard logs go there.
            stop: The run's stop signals: a SIGTERM or SIGINT during the fit saves a
                checkpoint after the current step and raises
                :class:`~recsys.training.errors.TrainingInterrupted`.

        Returns:
            The history and the epochs completed before and after.

        Raises:
            CheckpointError: The run directory holds checkpoints, none usable.
            TrainingInterrupted: A stop signal arrived; the checkpoint is saved.
        """
        # A non-chief worker saves into its scratch run directory, but resumes from the
        # chief's checkpoints, as every worker must (see recsys.distribute.workers).
        read_from = None if self.is_chief else RunPaths(chief_run_dir(run.root)).checkpoints
        state = TrainingState(
            model, model.optimizer, run.checkpoints, self.checkpoint_max_to_keep, read_from
        )
        if self.resume:
            start = state.restore()
        else:
            state.discard()
            start = Position()
        history = read_history(run.history, start.epoch)
        has_val = self._has_validation(data)
        if not has_val:
            log.info(
                "No validation split (e.g. data.val_fraction=0): no validation, no val/ metrics"
            )
        if start.epoch >= self.epochs:
            log.info(
                "Nothing to train: %d of %d epochs already completed", start.epoch, self.epochs
            )
            state.expect_partial()
            return FitResult(history, start.epoch, state.completed_epochs)

        train_data = _limit(_split_dataset(model, data, "train"), self.limit_train_batches)
        steps = _known_steps(train_data)
        if steps is None:
            # Keras then learns the epoch length by running into the end of the first
            # epoch; that last, empty step still advances optimizer.iterations.
            log.warning(
                "The training dataset's length is unknown to tf.data: checkpoints are saved "
                "at epoch ends only, and each fit() takes one extra optimizer step count "
                "(Adam's bias correction shifts by one), so a resumed run is close to, not "
                "bit-identical with, an uninterrupted one. Fix: end the pipeline with "
                "tf.data.experimental.assert_cardinality(batches)."
            )
        if steps is None and self.coordinated:
            steps = self._coordinated_steps(data, "train", self.limit_train_batches)
        if start.step and self.coordinated:
            log.warning(
                "The checkpoint is %d steps into epoch %d, but under ParameterServerStrategy "
                "training resumes at epoch ends only: the epoch restarts.",
                start.step,
                start.epoch + 1,
            )
            start = Position(start.epoch)
        if start.step and (steps is None or start.step >= steps):
            log.warning(
                "The checkpoint is %d steps into epoch %d, but that epoch now has %s steps "
                "(the data or trainer.limit_train_batches changed): the epoch restarts.",
                start.step,
                start.epoch + 1,
                steps or "an unknown number of",
            )
            start = Position(start.epoch)
        step_level = steps is not None and self.supports_step_checkpoints()
        every_seconds = self.checkpoint_every_seconds if step_level else 0.0
        if self.multi_worker and every_seconds:
            log.info(
                "Under MultiWorkerMirroredStrategy every worker saves at the same steps: "
                "checkpoints at epoch ends%s, none by time (trainer.checkpoint_every_seconds); "
                "a stop signal is honoured at the next epoch end.",
                f" and every {self.checkpoint_every_steps} steps"
                if self.checkpoint_every_steps
                else "",
            )
            every_seconds = 0.0
        if not step_level and (self.checkpoint_every_steps or self.checkpoint_every_seconds):
            log.warning(
                "Checkpoints are saved at epoch ends only in this run: %s.",
                "the epoch length is unknown"
                if steps is None
                else "this trainer does not support step checkpoints",
            )
        validation: dict[str, Any] = {}
        val_data = None
        if self.validate and has_val:
            val_data = _limit(_split_dataset(model, data, "val"), self.limit_val_batches)
            validation["validation_data"] = val_data
        if self.coordinated:
            assert steps is not None  # _coordinated_steps raises otherwise
            x, length = self._coordinated_input(model, data, start, steps, validation)
        else:
            x, length = _training_input(train_data, start, steps, self.epochs)
        saver_class: Callable[..., TrainingCheckpoints] = TrainingCheckpoints
        if self.coordinated:
            saver_class = _EpochCheckpoints
        elif self.multi_worker:
            saver_class = functools.partial(_AgreedCheckpoints, strategy=self.strategy)
        saver = saver_class(
            state,
            steps_per_epoch=steps,
            start=start,
            every_steps=self.checkpoint_every_steps if step_level else 0,
            every_seconds=every_seconds,
            stop=stop,
            steps_per_execution=self.steps_per_execution,
        )
        callbacks = [
            *self._epoch_metrics(data, val_data is not None),
            HistoryRecorder(run.history, history, start=start),
            saver,
            *self._tensorboard(run),
            *self.callbacks,
            # Last: it sees the logs every other callback added.
            *self._early_stopping(val_data is not None),
        ]
        log.info(
            "Training epochs %d..%d%s",
            start.epoch + 1,
            self.epochs,
            f" from step {start.step + 1}" if start.step else "",
        )
        with _starting_at(model, start):
            model.fit(
                x,
                epochs=self.epochs,
                initial_epoch=start.epoch,
                callbacks=callbacks,
                verbose=self._verbosity(),
                **length,
                **validation,
            )
        return FitResult(
            history, start.epoch, state.completed_epochs, start.step, tuple(saver.saved)
        )

    def _coordinated_steps(self, data: Any, split: str, limit: int | None) -> int:
        """Batches of ``split`` under ParameterServerStrategy, from its rows and batch size."""
        from recsys.distribute.parameter_server import steps_per_epoch

        rows, batch_size = _split_rows(data, split), getattr(data, "batch_size", None)
        if not rows or not isinstance(batch_size, int):
            raise ValueError(
                f"Under distribute=parameter_server the {split} split's number of batches "
                "must be known: give a dataset whose length tf.data knows (end it with "
                "tf.data.experimental.assert_cardinality) or a data module with rows and an "
                f"integer batch_size. Received: data of type {type(data).__name__}."
            )
        steps = steps_per_epoch(rows, batch_size)
        return min(steps, limit or steps)

    def _coordinated_input(
        self,
        model: keras.Model,
        data: Any,
        start: Position,
        steps: int,
        validation: dict[str, Any],
    ) -> tuple[Any, dict[str, int]]:
        """``fit``'s input under ParameterServerStrategy: a dataset function per worker.

        Validation (when ``validation`` holds a dataset) becomes one too, with
        ``validation_steps`` from its length (or rows): each batch once with one worker.
        """
        x = _per_worker(
            lambda: _split_dataset(model, data, "train"),
            self.limit_train_batches,
            skip=start.epoch * steps,
        )
        val_data = validation.pop("validation_data", None)
        if val_data is not None:
            val_steps = _known_steps(val_data) or self._coordinated_steps(
                data, "val", self.limit_val_batches
            )
            validation["validation_data"] = _per_worker(
                lambda: _split_dataset(model, data, "val"), self.limit_val_batches
            )
            validation["validation_steps"] = val_steps
        return x, {"steps_per_epoch": steps}

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

        Does nothing when the trainer was built with ``export=False``. Under
        MultiWorkerMirroredStrategy every worker exports (saving reads synchronized
        variables collectively; a non-chief into its scratch directory), then waits for
        the others: the chief, which leads the cluster's coordination service, must not
        leave while another worker still needs it.
        """
        try:
            self._export(model, data, run)
        finally:
            if self.multi_worker:
                _any_worker(self.strategy, False)  # a barrier: every worker is done

    def _export(self, model: keras.Model, data: Any, run: RunPaths) -> None:
        if not self.export:
            return
        # Written under a temporary name and renamed: a killed export leaves the old
        # export (or none), never half of one.
        with replace_directory(run.export) as tmp:
            model.export(str(tmp), data=data)
        log.info("Exported SavedModel to %s", run.export)
        if isinstance(data, InteractionData):
            with atomic_path(run.items) as tmp:
                data.catalogue().to_frame().to_parquet(tmp, index=False)
