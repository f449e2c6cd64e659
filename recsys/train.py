"""Train, evaluate and export one model from a Hydra config: ``python -m recsys.train``.

Examples::

    python -m recsys.train +experiment=movielens            # retrieval on MovieLens-100K
    python -m recsys.train +experiment=movielens_ranking    # rating prediction
    python -m recsys.train +experiment=imdb                 # IMDB sentiment
    python -m recsys.train +experiment=movielens hydra.run.dir=runs/ml  # choose the run dir
    python -m recsys.train -m +experiment=movielens optimizer.learning_rate=1e-3,3e-3

Everything a run writes goes to Hydra's run directory (``hydra.run.dir``); see
:mod:`recsys.run` for the layout. Run the same command with the same run directory
again and training resumes from the last completed epoch.

The hardware plan (threads, allocator, CPU pinning; :mod:`recsys.launch`) is applied
before TensorFlow is imported, so this module imports nothing TensorFlow-backed at
its top level.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from recsys.run import (
    RunPaths,
    check_resumable,
    metric_value,
    plot_curves,
    read_history,
    register_resolvers,
    save_config,
    write_metrics,
)

__all__ = ["main", "train"]

log = logging.getLogger(__name__)

register_resolvers()


def _apply_hardware(cfg: DictConfig, run_dir: Path) -> None:
    """Apply ``cfg.hardware`` before TensorFlow is imported, then size its thread pools.

    When TensorFlow is already running in this process (a test, or the second job of
    an in-process multirun), thread pools that differ from the plan cannot be changed
    any more: that is reported as a warning, not an error.
    """
    from recsys.launch import apply_hardware_plan, configure_tensorflow_threads

    tf_was_imported = "tensorflow" in sys.modules
    with warnings.catch_warnings():
        if tf_was_imported:
            warnings.filterwarnings("ignore", message="TensorFlow was imported before")
        plan = apply_hardware_plan(cfg.get("hardware"), run_dir=run_dir)
    try:
        configure_tensorflow_threads(plan)
    except RuntimeError as err:
        if not tf_was_imported:
            raise
        log.warning("Thread pools keep their earlier size: %s", err)


def _verbosity(setting: Any) -> int:
    """Keras ``fit`` verbosity: progress bar on a terminal, one line per epoch otherwise."""
    if setting in (None, "auto"):
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def _tensorboard_installed() -> bool:
    """Whether TensorBoard's summary writer is available (it is a separate package)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        return True
    log.warning(
        "trainer.tensorboard is set but TensorBoard is not installed (pip install tensorboard)"
    )
    return False


def _has_rows(datamodule: Any, split: str) -> bool:
    """False when the data module exposes the split as a frame and it is empty."""
    frame = getattr(datamodule, split, None)
    return frame is None or len(frame) > 0


def _limit(dataset: Any, batches: int | None) -> Any:
    return dataset if batches is None else dataset.take(int(batches))


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build data, model and optimizer from ``cfg``; fit, evaluate, export, write artifacts.

    Resumes from the run directory's last checkpoint when there is one (and
    ``trainer.resume`` is true): weights, optimizer slots, the epoch count and the
    history continue where they stopped, and the data order of the remaining epochs
    is the one an uninterrupted run would have seen.

    Args:
        cfg: The composed config (``conf/train.yaml`` plus overrides).

    Returns:
        ``(metrics, objects)``: the final metrics (``test/...``, and ``val/...`` when
        ``trainer.val_metrics``) and the objects built (``datamodule``, ``model``,
        ``optimizer``, ``history``, ``paths``).
    """
    paths = RunPaths(Path(cfg.paths.output_dir).resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, paths)
    _apply_hardware(cfg, paths.root)

    # TensorFlow only now, after the hardware plan.
    from recsys._tf import keras
    from recsys.callbacks import EpochCheckpoint, FaultInjection, HistoryRecorder, TrainingState

    trainer = cfg.trainer
    save_config(cfg, paths.config)
    keras.backend.clear_session()
    if cfg.get("seed") is not None:
        keras.utils.set_random_seed(int(cfg.seed))

    log.info("Loading data <%s>", cfg.data._target_)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    log.info("Building model <%s>", cfg.model._target_)
    model = hydra.utils.instantiate(cfg.model, data=datamodule)
    optimizer = hydra.utils.instantiate(cfg.optimizer)
    model.compile(optimizer=optimizer)

    state = TrainingState(model, optimizer, paths.checkpoints, trainer.checkpoint_max_to_keep)
    initial_epoch = state.restore() if trainer.resume else 0
    history = read_history(paths.history, initial_epoch)
    epochs = int(trainer.epochs)

    has_val = _has_rows(datamodule, "val")
    if not has_val:
        log.info("No validation split (e.g. data.val_fraction=0): no validation, no val/ metrics")
    if initial_epoch < epochs:
        train_data = _limit(datamodule.train_dataset(), trainer.limit_train_batches)
        if int(train_data.cardinality()) == -2:  # tf.data.UNKNOWN_CARDINALITY
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
        if trainer.validate and has_val:
            val_data = _limit(datamodule.val_dataset(), trainer.limit_val_batches)
        callbacks = [HistoryRecorder(paths.history, history), EpochCheckpoint(state)]
        if trainer.tensorboard and _tensorboard_installed():
            callbacks.append(
                keras.callbacks.TensorBoard(
                    log_dir=str(paths.tensorboard), write_graph=False, profile_batch=0
                )
            )
        if trainer.get("fault_after_batches"):
            callbacks.append(FaultInjection(int(trainer.fault_after_batches)))
        log.info("Training epochs %d..%d", initial_epoch + 1, epochs)
        model.fit(
            train_data,
            validation_data=val_data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=_verbosity(trainer.verbose),
        )
    else:
        log.info("Nothing to train: %d of %d epochs already completed", initial_epoch, epochs)
        state.expect_partial()

    log.info("Evaluating")
    metrics: dict[str, float] = {}
    if trainer.val_metrics and has_val:
        metrics.update(model.evaluate_metrics(datamodule, split="val"))
    metrics.update(model.evaluate_metrics(datamodule, split="test"))
    for name, value in sorted(metrics.items()):
        log.info("%s = %.4f", name, value)

    if trainer.export:
        model.export(str(paths.export))
        log.info("Exported SavedModel to %s", paths.export)
    items = getattr(datamodule, "items", None)
    if items is not None:
        items.to_parquet(paths.items, index=False)

    write_metrics(
        paths.metrics,
        metrics,
        history,
        epochs=state.completed_epochs,
        resumed_from_epoch=initial_epoch,
        # Over every epoch in the history, resumed runs' earlier epochs included.
        train_seconds=round(sum(history.get("epoch_seconds", [])), 3),
        task_name=cfg.get("task_name"),
    )
    plot_curves(history, paths.curves, title=str(cfg.get("task_name") or ""))
    log.info("Artifacts in %s", paths.root)

    objects = {
        "datamodule": datamodule,
        "model": model,
        "optimizer": optimizer,
        "history": history,
        "paths": paths,
    }
    return metrics, objects


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: train and return ``cfg.optimized_metric``'s value (for sweeps).

    Args:
        cfg: Composed by Hydra from ``conf/train.yaml`` and the command line.

    Returns:
        The value of the metric named by ``optimized_metric``, or None when unset.
    """
    metrics, _ = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
