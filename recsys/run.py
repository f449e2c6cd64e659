"""The run directory: what one training run leaves behind, and where.

A run directory (Hydra's output directory, ``hydra.run.dir``) holds every artifact
of one run::

    RUN_DIR/
      .hydra/                 Hydra's own record (config before resolution, overrides)
      config.yaml             the resolved config the run used
      train.log               the log (Hydra's job logging)
      metrics.json            final test metrics at the top level, per-epoch history
      history.json            per-epoch history, rewritten at each epoch end
      checkpoints/            model + optimizer + epoch counter (resume from here)
      tensorboard/            TensorBoard event files
      curves.png              training curves
      export/                 SavedModel with a ``serving_default`` signature
      items.parquet           item ids and titles, for ``python -m recsys.recommend``
      .lock                   names the process using the directory (see RunLock)

One process at a time uses a run directory: :class:`RunLock` holds an exclusive
``flock`` on ``.lock`` for as long as the run lives (the kernel drops it when the
process dies, even by ``kill -9``), and the file names that process (pid, host, start
time, command) for the message a second run gets. Every file here is written under a
temporary name and renamed into place, so a run killed at any moment leaves each
artifact complete (old or new) or absent; :func:`remove_partial_files` clears what a
killed run left under a temporary name.

This module does not import TensorFlow (the training loop's Keras callbacks live in
:mod:`recsys.training`), so it is safe to use before the hardware plan is applied.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import math
import numbers
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

# The run's errors live with the training package's errors (no TensorFlow there).
from recsys.training.errors import EXIT_RUN_DIR_BUSY, ConfigError, RunDirectoryBusy

__all__ = [
    "RunDirectoryBusy",
    "RunDirectoryLock",
    "RunLock",
    "RunPaths",
    "atomic_path",
    "check_resumable",
    "config_changes",
    "curve_panels",
    "metric_value",
    "plot_curves",
    "project_root",
    "read_history",
    "register_resolvers",
    "release_run_locks",
    "remove_partial_files",
    "replace_directory",
    "run_lock",
    "save_config",
    "write_history",
    "write_metrics",
]

log = logging.getLogger(__name__)

ROOT_ENV_VAR = "RECSYS_ROOT"

# Config targets that moved, old name -> new: the same class, so not a config change.
_RENAMED_TARGETS = {"recsys.launch.HardwareConfig": "recsys.hardware.HardwareConfig"}

# History entries that are bookkeeping, not training curves.
_NOT_CURVES = frozenset({"epoch", "epoch_seconds"})


@dataclass(frozen=True)
class RunPaths:
    """Where each artifact of a run lives inside its run directory.

    Args:
        root: The run directory (Hydra's ``hydra.run.dir``).

    Example:
        >>> RunPaths(Path("/tmp/run")).metrics
        PosixPath('/tmp/run/metrics.json')
    """

    root: Path

    @property
    def config(self) -> Path:
        """The resolved config (``config.yaml``)."""
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        """Final metrics and history (``metrics.json``)."""
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        """Per-epoch history, rewritten at each epoch end (``history.json``)."""
        return self.root / "history.json"

    @property
    def checkpoints(self) -> Path:
        """Checkpoint folder (``checkpoints/``)."""
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard log folder (``tensorboard/``)."""
        return self.root / "tensorboard"

    @property
    def curves(self) -> Path:
        """Training-curves image (``curves.png``)."""
        return self.root / "curves.png"

    @property
    def export(self) -> Path:
        """The exported SavedModel (``export/``)."""
        return self.root / "export"

    @property
    def items(self) -> Path:
        """Item ids and titles for recommendations (``items.parquet``)."""
        return self.root / "items.parquet"

    @property
    def lock(self) -> Path:
        """The lock file naming the process that uses the directory (``.lock``)."""
        return self.root / ".lock"


# ----------------------------------------------------------- one run per directory


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _describe_owner(owner: Mapping[str, Any] | None) -> str:
    if not owner:
        return "a process that is starting (the lock names no process yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')}, started {started}: "
        f"{owner.get('command', '?')}"
    )


class RunLock:
    """An exclusive lock on a run directory, held while a run uses it.

    ``RUN_DIR/.lock`` is locked with ``flock`` and names its holder (JSON: pid, host,
    start time, command). The kernel releases the lock when the holder dies, however
    it dies, so a lock file left by a killed run is stale by construction: the next
    run takes it over and says so (:attr:`stale_owner`). Where the filesystem refuses
    ``flock``, the holder is judged alive when its pid runs on this host.

    Args:
        root: The run directory (created if missing).

    Example:
        >>> lock = RunLock(Path("runs/ml")).acquire()  # RunDirectoryBusy if in use
        >>> lock.release()
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = RunPaths(self.root).lock
        self.stale_owner: dict[str, Any] | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunDirectoryBusy` naming the live holder."""
        if self._fd is not None:
            return self
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise self._busy(owner) from None
        except OSError as err:  # no flock here (some network filesystems)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            owner = _read_owner(fd)
            if (
                owner
                and owner.get("host") == socket.gethostname()
                and owner.get("pid") != os.getpid()
                and _process_alive(int(owner.get("pid", 0)))
            ):
                os.close(fd)
                raise self._busy(owner) from None
        previous = _read_owner(fd)
        if previous and (previous.get("pid"), previous.get("host")) != (
            os.getpid(),
            socket.gethostname(),
        ):
            self.stale_owner = previous
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty lock file names no one
        finally:
            os.close(fd)  # closing drops the flock

    def _busy(self, owner: Mapping[str, Any] | None) -> RunDirectoryBusy:
        pid = (owner or {}).get("pid", "PID")
        return RunDirectoryBusy(
            f"{self.root} is in use by another run: {_describe_owner(owner)}. Wait for it "
            f"to end, stop it (kill {pid}: it saves a checkpoint and exits), or give this "
            "run another directory (hydra.run.dir=...)."
        )


# Locks this process holds, by directory: the Hydra callback takes a run's lock before
# Hydra writes into the directory, and train() takes it again (a no-op then).
_HELD: dict[Path, tuple[RunLock, int]] = {}


def release_run_locks() -> None:
    """Release every run lock this process holds (it is about to exit).

    The kernel would drop them anyway; releasing clears the lock files, so the next
    run does not report a stale lock of a run that ended normally.
    """
    for lock, _ in list(_HELD.values()):
        lock.release()
    _HELD.clear()


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[RunLock]:
    """Hold ``root``'s :class:`RunLock` for the block; re-entrant within a process.

    Raises:
        RunDirectoryBusy: Another live process uses ``root``.

    Example:
        >>> with run_lock(Path("runs/ml")) as lock:  # doctest: +SKIP
        ...     train_in(lock.root)
    """
    key = Path(root).resolve()
    if not _HELD:  # an exit through SystemExit skips on_run_end: release at exit then
        atexit.unregister(release_run_locks)
        atexit.register(release_run_locks)
    if key in _HELD:
        lock, count = _HELD[key]
        _HELD[key] = (lock, count + 1)
    else:
        lock = RunLock(key).acquire()
        _HELD[key] = (lock, 1)
    try:
        yield lock
    finally:
        lock, count = _HELD[key]
        if count == 1:
            del _HELD[key]
            lock.release()
        else:
            _HELD[key] = (lock, count - 1)


class RunDirectoryLock(Callback):
    """Hydra callback: lock a single run's directory before Hydra writes into it.

    Registered in ``conf/hydra/default.yaml``. A second ``python -m recsys.train`` on
    a directory a live run uses stops here, before touching its ``.hydra/`` records or
    its log, with one message naming that run and exit status 3. Multirun jobs get
    their lock from :func:`recsys.train.train`, each in its own directory.
    """

    def __init__(self) -> None:
        self._block: contextlib.AbstractContextManager[RunLock] | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Take the lock of ``hydra.run.dir``; exit with a message when it is in use."""
        block = run_lock(Path(str(config.hydra.run.dir)))
        try:
            block.__enter__()
        except RunDirectoryBusy as err:
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(EXIT_RUN_DIR_BUSY)
        self._block = block

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Drop the lock."""
        if self._block is not None:
            self._block.__exit__(None, None, None)
            self._block = None


# ------------------------------------------------------- complete or absent files


def _temporary_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file name next to ``path``; on success, rename it to ``path``.

    Example:
        >>> with atomic_path(run.items) as tmp:  # doctest: +SKIP
        ...     frame.to_parquet(tmp)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def replace_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary folder name next to ``path``; on success it replaces ``path``.

    The writer creates the folder (``tf.saved_model.save`` does). Readers see the old
    folder, then for the instant between two renames none, then the new one; never
    a half-written one.

    Example:
        >>> with replace_directory(run.export) as tmp:  # doctest: +SKIP
        ...     model.export(str(tmp))
    """
    tmp = _temporary_name(path, "tmp")
    old = _temporary_name(path, "old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def remove_partial_files(run: RunPaths) -> list[Path]:
    """Delete what a killed run left under a temporary name in the run directory.

    Call while holding the directory's lock (no live run can be writing them).

    Returns:
        The paths removed.
    """
    removed = []
    if not run.root.is_dir():
        return removed
    for path in run.root.iterdir():
        name = path.name
        temporary = name.endswith(".tmp") or (
            name.startswith(".") and (".tmp-" in name or ".old-" in name)
        )
        if not temporary:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ----------------------------------------------------------------------- config


def project_root() -> Path:
    """The project folder: the one holding ``conf/`` next to the ``recsys`` package.

    ``$RECSYS_ROOT`` wins when set. Without it, and when the package is not used from
    a checkout (no ``conf/`` beside it), the current directory is used.
    """
    if os.environ.get(ROOT_ENV_VAR):
        return Path(os.environ[ROOT_ENV_VAR]).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "conf").is_dir():
        return checkout
    return Path.cwd().resolve()


def register_resolvers() -> None:
    """Register recsys's OmegaConf resolvers (idempotent).

    ``${recsys.project_root:}`` resolves to :func:`project_root`, so configs can name
    files relative to the project whatever the current directory is.
    """
    if not OmegaConf.has_resolver("recsys.project_root"):
        OmegaConf.register_new_resolver("recsys.project_root", lambda: str(project_root()))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _job_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` resolved to plain containers, without Hydra's own node."""
    if "hydra" in cfg:  # a test's compose(return_hydra_config=True) keeps Hydra's node
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_changes(cfg: DictConfig, path: Path) -> list[str]:
    """What differs between ``cfg`` and the config a run directory last used.

    Args:
        cfg: The composed config.
        path: ``config.yaml`` of the run directory (missing for a new run).

    Returns:
        ``"key: old -> new"`` for each differing leaf, sorted by key; empty for a new run.
    """
    if not path.exists():
        return []
    before = _flatten(OmegaConf.to_container(OmegaConf.load(path)))
    before = {
        k: _RENAMED_TARGETS.get(v, v) if k.endswith("_target_") else v for k, v in before.items()
    }
    after = _flatten(_job_config(cfg))
    unset = "<unset>"
    return [
        f"{key}: {before.get(key, unset)} -> {after.get(key, unset)}"
        for key in sorted(set(before) | set(after))
        if before.get(key, unset) != after.get(key, unset)
    ]


def check_resumable(cfg: DictConfig, paths: RunPaths) -> None:
    """Refuse to resume a checkpoint with a changed model config; log other changes.

    Call before training starts in a run directory that may hold an earlier run.

    Raises:
        ValueError: The run directory holds a checkpoint, ``trainer.resume`` is true and
            a ``model.`` setting differs from the one the checkpoint was trained with.
    """
    changes = config_changes(cfg, paths.config)
    if not changes or not cfg.trainer.resume or not (paths.checkpoints / "checkpoint").exists():
        return
    model_changes = [c for c in changes if c.startswith("model.")]
    if model_changes:
        raise ConfigError(
            f"{paths.root} holds a checkpoint of a different model ({'; '.join(model_changes)}), "
            "so it cannot be resumed. Use a new run directory (hydra.run.dir=...) or start "
            "over in this one with trainer.resume=false.",
            "model",
        )
    log.warning("Resuming with a changed config: %s", "; ".join(changes))


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write ``cfg`` resolved (every interpolation replaced by its value) as YAML.

    Args:
        cfg: The composed config.
        path: Destination file; its folder is created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, OmegaConf.to_yaml(_job_config(cfg)))


# ---------------------------------------------------------------------- metrics


def _jsonable(value: Any) -> Any:
    """Turn NumPy/TensorFlow scalars and arrays into plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, str | bytes):
        return value.decode() if isinstance(value, bytes) else value
    if isinstance(value, Sequence):
        return [_jsonable(v) for v in value]
    if hasattr(value, "numpy"):  # tf.Tensor / tf.Variable
        value = value.numpy()
    if hasattr(value, "tolist"):  # NumPy scalar or array
        return _jsonable(value.tolist()) if not isinstance(value, numbers.Number) else value.item()
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a killed run never leaves half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_history(path: Path, history: Mapping[str, Sequence[float]]) -> None:
    """Write per-epoch history (``{"epoch": [1, 2, ...], "loss": [...], ...}``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(_jsonable(history), indent=2) + "\n")


def read_history(path: Path, epochs: int) -> dict[str, list[float]]:
    """Read the history written by :func:`write_history`, keeping the first ``epochs``.

    A resumed run keeps the epochs its checkpoint holds and drops any the checkpoint
    does not (an epoch whose history was written but whose checkpoint was not).

    Args:
        path: ``history.json``; a missing file is an empty history.
        epochs: Number of completed epochs to keep.

    Returns:
        Metric name to per-epoch values.
    """
    if epochs <= 0 or not path.exists():
        return {}
    history = json.loads(path.read_text())
    return {name: list(values)[:epochs] for name, values in history.items()}


def write_metrics(
    path: Path,
    metrics: Mapping[str, Any],
    history: Mapping[str, Sequence[float]],
    **extra: Any,
) -> dict[str, Any]:
    """Write ``metrics.json``: final metrics at the top level, history under ``"history"``.

    Args:
        path: Destination file.
        metrics: Final metrics, e.g. ``{"test/recall@100": 0.41, ...}``.
        history: Per-epoch history (see :func:`write_history`).
        **extra: Other top-level entries (``epochs``, ``resumed_from_epoch``, ...).

    Returns:
        The object written.

    Raises:
        ValueError: A metric name collides with ``"history"`` or an ``extra`` key.
    """
    clash = set(metrics) & ({"history"} | set(extra))
    if clash:
        raise ValueError(f"Metric names collide with metrics.json's own keys: {sorted(clash)}")
    payload = {**_jsonable(dict(metrics)), **_jsonable(extra), "history": _jsonable(history)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return payload


def metric_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value of the metric a sweep optimizes.

    Args:
        metrics: What :func:`recsys.train.train` returned.
        name: ``cfg.optimized_metric``; None means nothing is optimized.

    Returns:
        The metric as a float, or None when ``name`` is None.

    Raises:
        KeyError: ``name`` is not among the metrics (the message lists them).
    """
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric={name!r} is not among this run's metrics: {sorted(metrics)}. "
            "Set `optimized_metric` to one of them."
        )
    return float(metrics[name])


# ----------------------------------------------------------------------- curves


def _constant(history: Mapping[str, Sequence[float]], name: str, epochs: int) -> bool:
    """Whether ``name``'s curves (train and ``val_``) say nothing over two or more epochs.

    A panel whose every value is the same (a zero regularization loss) is left out.
    """
    values = [
        float(v)
        for key in (name, f"val_{name}")
        if len(history.get(key, ())) == epochs
        for v in history[key]
        if v == v  # NaN pads of a metric that appeared late are not values
    ]
    return epochs >= 2 and len(set(values)) <= 1


def curve_panels(history: Mapping[str, Sequence[float]]) -> list[str]:
    """The panels :func:`plot_curves` draws: one per metric, constant ones left out.

    Example:
        >>> curve_panels({"epoch": [1, 2], "loss": [2.0, 1.0], "val_loss": [2.5, 1.5],
        ...               "regularization_loss": [0.0, 0.0], "val_rmse": [1.1, 1.0]})
        ['loss', 'rmse']
    """
    epochs = len(history.get("epoch", []))
    names = sorted({k.removeprefix("val_") for k in history if k not in _NOT_CURVES})
    return [name for name in names if not _constant(history, name, epochs)]


def plot_curves(history: Mapping[str, Sequence[float]], path: Path, title: str = "") -> None:
    """Draw one panel per metric (training and ``val_`` curves together) into a PNG.

    Metrics whose values never change over two or more epochs (a zero
    regularization loss) get no panel.

    Args:
        history: Per-epoch history with an ``"epoch"`` entry (1-based epoch numbers).
        path: Destination PNG.
        title: Figure title (e.g. the task name).
    """
    # The object-oriented API: no pyplot, no global backend state, safe in any thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = list(history.get("epoch", []))
    names = curve_panels(history)
    figure = Figure(figsize=(4.5 * max(len(names), 1), 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(len(names), 1), squeeze=False)[0]
    for axis, name in zip(axes, names, strict=False):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history and len(history[key]) == len(epochs):
                axis.plot(epochs, history[key], marker="o", label=label)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend()
        axis.grid(alpha=0.3)
    if not names:
        axes[0].text(0.5, 0.5, "no completed epochs", ha="center", va="center")
        axes[0].set_axis_off()
    if title:
        figure.suptitle(title)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
