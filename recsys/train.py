"""Train, evaluate and export one model from a Hydra config: ``python -m recsys.train``.

Examples::

    python -m recsys.train +experiment=movielens            # retrieval on MovieLens-100K
    python -m recsys.train +experiment=movielens_ranking    # rating prediction
    python -m recsys.train +experiment=imdb                 # IMDB sentiment
    python -m recsys.train +experiment=movielens hydra.run.dir=runs/ml  # choose the run dir
    python -m recsys.train -m +experiment=movielens optimizer.learning_rate=1e-3,3e-3

Everything a run writes goes to Hydra's run directory (``hydra.run.dir``); see
:mod:`recsys.run` for the layout. Run the same command with the same run directory
again and training resumes from the last checkpoint (an epoch end, a step checkpoint,
or where a SIGTERM/SIGINT stopped it). One run at a time uses a run directory.

A mistake the user can fix (a config value or key, a data file, a busy run directory,
no usable checkpoint) or an interruption ends with one message on stderr and a
non-zero exit status (see :mod:`recsys.training.errors`), not a traceback;
``HYDRA_FULL_ERROR=1`` shows the traceback too.

This module is the thin entry: it builds the data and the :class:`~recsys.training.Trainer`
from the config, and the trainer builds, fits, evaluates and exports the model. The
hardware plan (threads, allocator, CPU pinning; :mod:`recsys.hardware`) is applied
before TensorFlow is imported, so this module imports nothing TensorFlow-backed at
its top level.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from recsys.checks import check_int
from recsys.run import (
    RunPaths,
    check_resumable,
    metric_value,
    plot_curves,
    read_history,
    register_resolvers,
    release_run_locks,
    remove_partial_files,
    run_lock,
    save_config,
    write_metrics,
)
from recsys.training.errors import EXIT_BAD_INPUT, TrainingInterrupted, describe, reading
from recsys.training.signals import StopSignals

__all__ = ["cli", "main", "train"]

log = logging.getLogger(__name__)

register_resolvers()


def _plan_hardware(cfg: DictConfig, run_dir: Path) -> Any:
    """Apply ``cfg.hardware`` (environment, pinning) before TensorFlow is imported."""
    from recsys.hardware import apply_hardware_plan

    with warnings.catch_warnings():
        if "tensorflow" in sys.modules:
            warnings.filterwarnings("ignore", message="TensorFlow was imported before")
        with reading("hardware", cfg.get("hardware")):
            return apply_hardware_plan(cfg.get("hardware"), run_dir=run_dir)


def _start_tensorflow(plan: Any, before_devices: Callable[[], Any] | None = None) -> Any:
    """Start TensorFlow with the plan's thread pools; returns ``before_devices()``.

    ``before_devices`` runs after the thread pools are set and before TensorFlow's
    runtime starts (MultiWorkerMirroredStrategy must configure its collective ops
    then). When TensorFlow is already running in this process (a test, or the second
    job of an in-process multirun), thread pools that differ from the plan cannot be
    changed any more: that is reported as a warning, not an error.
    """
    from recsys._env import quiet_tensorflow_startup
    from recsys.hardware import configure_tensorflow_threads

    tf_was_running = "tensorflow" in sys.modules
    made = None
    try:
        with quiet_tensorflow_startup():  # TensorFlow starts here: import, devices
            configure_tensorflow_threads(plan)
            from recsys._tf import tf

            made = before_devices() if before_devices is not None else None
            tf.config.list_logical_devices()
    except RuntimeError as err:
        # A strategy that could not join its cluster is an error wherever it happens.
        if not tf_was_running or (before_devices is not None and made is None):
            raise
        log.warning("Thread pools keep their earlier size: %s", err)
    return made


def _read(group: str, cfg: DictConfig, build: Callable[..., Any]) -> Callable[..., Any]:
    """``build``, with what it refuses reported as a mistake in ``cfg[group]``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with reading(group, cfg[group]):
            return build(*args, **kwargs)

    return call


def _write_interrupted(run: RunPaths, err: TrainingInterrupted, cfg: DictConfig) -> None:
    """metrics.json of an interrupted run: its status, where it stopped, its history."""
    history = read_history(run.history, sys.maxsize)
    write_metrics(
        run.metrics,
        {},
        history,
        status="interrupted",
        interrupted={"signal": err.signum, "epoch": err.epoch, "step": err.step},
        epochs=len(history.get("epoch", [])),
        task_name=cfg.get("task_name"),
    )


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Build data and trainer from ``cfg``; build, fit, evaluate, export; write artifacts.

    The run directory is locked for the run (one run per directory); SIGTERM and
    SIGINT stop training at the next step with a checkpoint saved.

    Args:
        cfg: The composed config (``conf/train.yaml`` plus overrides).

    Returns:
        ``(metrics, objects)``: the final metrics (``test/...``, and ``val/...`` when
        ``trainer.val_metrics``) and the objects built (``datamodule``, ``trainer``,
        ``model``, ``optimizer``, ``history``, ``paths``, and ``fit``: what
        :meth:`~recsys.training.Trainer.fit` did).

    Raises:
        RunDirectoryBusy: Another live process uses the run directory.
        ConfigError, DataError: A config value or a data file is refused.
        CheckpointError: The run directory holds checkpoints, none of them usable.
        TrainingInterrupted: A SIGTERM or SIGINT stopped the run.
    """
    run = RunPaths(Path(cfg.paths.output_dir).resolve())
    with run_lock(run.root) as lock, StopSignals() as stop:
        if lock.stale_owner:
            log.warning("Took over the lock of a run that is gone: %s", lock.stale_owner)
        remove_partial_files(run)
        check_resumable(cfg, run)
        data, trainer, model = _build(cfg, run, stop)
        save_config(cfg, run.config)
        try:
            stop.phase = "training"
            fit = trainer.fit(model, data, run, stop)
            with stop.immediate("evaluating"):
                metrics = trainer.evaluate(model, data)
            with stop.immediate("exporting"):
                trainer.export_model(model, data, run)
        except TrainingInterrupted as err:
            _write_interrupted(run, err, cfg)
            raise
        stop.phase = "writing the results"  # a signal now lets the finished run end
        write_metrics(
            run.metrics,
            metrics,
            fit.history,
            status="completed",
            epochs=fit.completed_epochs,
            resumed_from_epoch=fit.initial_epoch,
            resumed_from_step=fit.initial_step,
            train_seconds=fit.train_seconds,
            task_name=cfg.get("task_name"),
        )
        plot_curves(fit.history, run.curves, title=str(cfg.get("task_name") or ""))
    log.info("Artifacts in %s", run.root)
    objects = {"datamodule": data, "trainer": trainer, "model": model, "paths": run}
    return metrics, {**objects, "optimizer": model.optimizer, "history": fit.history, "fit": fit}


def _distribute(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.distribute`` (absent: one process), with the cluster checked against TF_CONFIG.

    Checked before the data and TensorFlow, so a cluster that does not fit the strategy
    (no TF_CONFIG, no ps task, this process not the chief) fails in a second.
    """
    from recsys.distribute import (
        DEFAULT_MIN_SHARD_BYTES,
        TFConfigError,
        check_cluster,
        read_tf_config,
    )
    from recsys.distribute.workers import is_scratch_dir

    node = cfg.get("distribute")
    settings: dict[str, Any] = {
        "kind": "none",
        "min_shard_bytes": DEFAULT_MIN_SHARD_BYTES,
        "max_shards": None,
        "steps_per_execution": 1,
    }
    with reading("distribute", node):
        if node is not None:
            unknown = sorted(set(node) - set(settings))
            if unknown:
                raise ValueError(
                    f"Unknown key distribute.{unknown[0]}: the keys are {', '.join(settings)}. "
                    f"Received: distribute.{unknown[0]}={node[unknown[0]]!r}"
                )
            settings.update(node)
        if settings["kind"] != "none":
            check_cluster(settings["kind"], read_tf_config())
        if settings["kind"] != "multi_worker" and is_scratch_dir(cfg.paths.output_dir):
            raise TFConfigError(
                f"The run directory {cfg.paths.output_dir} is a non-chief worker's scratch "
                "directory (TF_CONFIG names this process a non-chief worker of a cluster "
                f"without parameter servers), but distribute.kind={settings['kind']!r}. Use "
                "distribute=multi_worker on every worker, or unset TF_CONFIG."
            )
    return settings


def _build(cfg: DictConfig, run: RunPaths, stop: StopSignals) -> tuple[Any, Any, Any]:
    """The hardware plan, then the data, TensorFlow, the trainer and the compiled model.

    Whatever a constructor refuses is reported as a mistake in its config group. The
    data comes before TensorFlow starts, so a bad data setting or file fails in seconds.
    Under ``distribute=parameter_server`` this process is the chief of the TF_CONFIG
    cluster: the strategy connects to its servers before the model is built.
    """
    distribute = _distribute(cfg)
    plan = _plan_hardware(cfg, run.root)
    log.info("Loading data <%s>", cfg.data._target_)
    # Import the module before a signal may interrupt: a cut import can crash the exit.
    _read("data", cfg, hydra.utils.get_class)(cfg.data._target_)
    with stop.immediate("loading data"):
        data = _read("data", cfg, lambda: instantiate(cfg.data).setup())()
    from recsys.distribute import make_strategy

    def strategy_fn() -> Any:
        return _read("distribute", cfg, make_strategy)(
            distribute["kind"],
            min_shard_bytes=distribute["min_shard_bytes"],
            max_shards=distribute["max_shards"],
        )

    stop.phase = "starting TensorFlow"
    # TensorFlow only now, after the hardware plan. MultiWorkerMirroredStrategy joins
    # its cluster before TensorFlow's runtime starts (its collective ops need that).
    multi_worker = distribute["kind"] == "multi_worker"
    strategy = _start_tensorflow(plan, strategy_fn if multi_worker else None)

    from recsys._tf import keras
    from recsys.training.trainer import check_learning_rate

    keras.backend.clear_session()
    if cfg.get("seed") is not None:
        keras.utils.set_random_seed(_read("seed", cfg, check_int)("seed", cfg.seed))

    stop.phase = "connecting to the cluster"
    if not multi_worker:
        strategy = strategy_fn()
    else:
        stop.reinstall()  # the strategy's coordination service took over SIGTERM
    trainer = _read("trainer", cfg, instantiate)(
        cfg.trainer, strategy=strategy, steps_per_execution=distribute["steps_per_execution"]
    )
    stop.phase = "building the model"
    log.info("Building model <%s>", cfg.model._target_)
    model_fn = _read("model", cfg, _read("model", cfg, instantiate)(cfg.model, _partial_=True))
    optimizer = _read("optimizer", cfg, instantiate)(cfg.optimizer, _partial_=True)
    optimizer_fn = _read("optimizer", cfg, lambda: check_learning_rate(optimizer()))
    model = trainer.build(model_fn, optimizer_fn, data)
    stop.check()
    return data, trainer, model


def _report(message: str) -> None:
    """Print ``message`` to stderr, and into the run's log file when there is one."""
    print(message, file=sys.stderr, flush=True)
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(version_base="1.3", config_path="pkg://recsys.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: train and return ``cfg.optimized_metric``'s value (for sweeps).

    A mistake the user can fix, or an interruption, exits with one message and its
    status (:func:`recsys.training.errors.describe`) instead of a traceback.

    Args:
        cfg: Composed by Hydra from ``conf/train.yaml`` and the command line.

    Returns:
        The value of the metric named by ``optimized_metric``, or None when unset.
    """
    try:
        metrics, _ = train(cfg)
        with reading("optimized_metric", cfg.get("optimized_metric")):
            return metric_value(metrics, cfg.get("optimized_metric"))
    except Exception as err:
        described = describe(err)
        if described is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        status, message = described
        _report(message if isinstance(err, TrainingInterrupted) else f"Error: {message}")
        sys.exit(status)


def _check_override_syntax(argv: list[str]) -> None:
    """Exit with one message naming an override Hydra's grammar cannot read.

    Hydra's own message for a syntax error says what the parser expected but not
    which override it was; composition errors (an unknown key, a missing config)
    already name the key and are left to Hydra.
    """
    try:  # Hydra's own command-line parser, so its flags are told from overrides
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import OverrideParseException

        overrides = get_args_parser().parse_known_args(argv)[0].overrides
        parser = OverridesParser.create()
    except Exception:  # pragma: no cover - Hydra reports it itself
        return
    for override in overrides:
        try:
            (parsed,) = parser.parse_overrides([override])
            if not parsed.key_or_group:
                raise OverrideParseException(override, "the key before '=' is empty")
        except OverrideParseException as err:
            first = str(err.message).strip().splitlines()[0]
            _report(
                f"Error: cannot read the override {override!r}: {first}. An override is "
                "key=value (trainer.epochs=5), +key=value to add a key, or group=option "
                "(optimizer=adam); quote values holding spaces or brackets "
                "(https://hydra.cc/docs/advanced/override_grammar/basic/)."
            )
            sys.exit(EXIT_BAD_INPUT)


def cli() -> None:
    """``python -m recsys.train``: check the overrides' syntax, then run :func:`main`.

    A run stopped by a signal leaves at once once its checkpoint and files are
    written: tearing down TensorFlow's objects at interpreter exit takes seconds that
    a preempted machine may not give.
    """
    _check_override_syntax(sys.argv[1:])
    scratch = _worker_scratch()
    try:
        main()
    except SystemExit as leaving:
        if isinstance(leaving.code, int) and leaving.code > 128:  # 128 + signal number
            release_run_locks()
            logging.shutdown()  # flushes the log file
            sys.stdout.flush()
            sys.stderr.flush()
            _remove_scratch(scratch)
            os._exit(leaving.code)
        raise
    finally:
        _remove_scratch(scratch)


def _worker_scratch() -> Path | None:
    """A non-chief multi_worker process runs in its scratch directory (see
    :mod:`recsys.distribute.workers`): ``sys.argv`` is rewritten to it; returns it."""
    from recsys.distribute import TFConfigError
    from recsys.distribute.workers import multi_worker_role, worker_argv

    try:
        role = multi_worker_role()
    except TFConfigError:
        return None  # a malformed TF_CONFIG is reported by distribute=... if it is used
    try:
        sys.argv[1:], scratch = worker_argv(sys.argv[1:], role)
    except TFConfigError as err:
        _report(f"Error: {err}")
        sys.exit(EXIT_BAD_INPUT)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)  # a killed earlier run's leftovers
    return scratch


def _remove_scratch(scratch: Path | None) -> None:
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    cli()
