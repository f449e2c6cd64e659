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

This module is the thin entry: it builds the data and the :class:`~recsys.training.Trainer`
from the config, and the trainer builds, fits, evaluates and exports the model. The
hardware plan (threads, allocator, CPU pinning; :mod:`recsys.hardware`) is applied
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
from hydra.utils import instantiate
from omegaconf import DictConfig

from recsys.run import (
    RunPaths,
    check_resumable,
    metric_value,
    plot_curves,
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
    from recsys._env import quiet_tensorflow_startup
    from recsys.hardware import apply_hardware_plan, configure_tensorflow_threads

    tf_was_imported = "tensorflow" in sys.modules
    with warnings.catch_warnings():
        if tf_was_imported:
            warnings.filterwarnings("ignore", message="TensorFlow was imported before")
        plan = apply_hardware_plan(cfg.get("hardware"), run_dir=run_dir)
    try:
        with quiet_tensorflow_startup():  # TensorFlow starts here: import, devices
            configure_tensorflow_threads(plan)
            from recsys._tf import tf

            tf.config.list_logical_devices()
    except RuntimeError as err:
        if not tf_was_imported:
            raise
        log.warning("Thread pools keep their earlier size: %s", err)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build data and trainer from ``cfg``; build, fit, evaluate, export; write artifacts.

    Args:
        cfg: The composed config (``conf/train.yaml`` plus overrides).

    Returns:
        ``(metrics, objects)``: the final metrics (``test/...``, and ``val/...`` when
        ``trainer.val_metrics``) and the objects built (``datamodule``, ``trainer``,
        ``model``, ``optimizer``, ``history``, ``paths``).
    """
    run = RunPaths(Path(cfg.paths.output_dir).resolve())
    run.root.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, run)
    _apply_hardware(cfg, run.root)
    save_config(cfg, run.config)

    from recsys._tf import keras  # TensorFlow only now, after the hardware plan

    keras.backend.clear_session()
    if cfg.get("seed") is not None:
        keras.utils.set_random_seed(int(cfg.seed))
    log.info("Loading data <%s>", cfg.data._target_)
    data = instantiate(cfg.data)
    data.setup()
    trainer = instantiate(cfg.trainer)
    log.info("Building model <%s>", cfg.model._target_)
    model_fn = instantiate(cfg.model, _partial_=True)
    model = trainer.build(model_fn, instantiate(cfg.optimizer, _partial_=True), data)

    fit = trainer.fit(model, data, run)
    metrics = trainer.evaluate(model, data)
    trainer.export_model(model, data, run)
    write_metrics(
        run.metrics,
        metrics,
        fit.history,
        epochs=fit.completed_epochs,
        resumed_from_epoch=fit.initial_epoch,
        train_seconds=fit.train_seconds,
        task_name=cfg.get("task_name"),
    )
    plot_curves(fit.history, run.curves, title=str(cfg.get("task_name") or ""))
    log.info("Artifacts in %s", run.root)
    objects = {"datamodule": data, "trainer": trainer, "model": model, "paths": run}
    return metrics, {**objects, "optimizer": model.optimizer, "history": fit.history}


@hydra.main(version_base="1.3", config_path="pkg://recsys.conf", config_name="train")
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
