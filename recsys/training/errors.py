"""What a training run reports instead of a traceback, and the exit status it uses.

A mistake in what the user gave (a config value, an unknown key, a broken data file),
a run directory another process uses, a run directory without a usable checkpoint and
an interruption by a signal are not bugs: :func:`describe` turns each into one message
and an exit status, and ``python -m recsys.train`` prints that instead of a traceback.
Anything else is a bug and keeps its traceback.

Nothing here imports TensorFlow, so the entry point can use it before the hardware
plan is applied.

Example:
    >>> err = config_error("trainer", {"epochs": -1}, ValueError(
    ...     "`epochs` must be a positive integer. Received: epochs=-1"))
    >>> str(err)
    'trainer.epochs=-1 is not valid: `epochs` must be a positive integer. Received: epochs=-1'
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_NO_CHECKPOINT",
    "EXIT_RUN_DIR_BUSY",
    "CheckpointError",
    "ConfigError",
    "RunDirectoryBusy",
    "TrainingInterrupted",
    "config_error",
    "describe",
    "reading",
]

EXIT_BAD_INPUT = 2
EXIT_RUN_DIR_BUSY = 3
EXIT_NO_CHECKPOINT = 4
# An interrupted run exits with 128 + the signal number, as a shell reports it.
_SIGNAL_BASE = 128


class ConfigError(ValueError):
    """A config value or key refused where it is read; the message names the key.

    Attributes:
        key: The full config key (``"trainer.epochs"``), or the group when the
            refused argument could not be told.
    """

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


class RunDirectoryBusy(RuntimeError):
    """Another live process is using the run directory (exit status 3)."""


class CheckpointError(RuntimeError):
    """The run directory holds checkpoints but none of them can be restored."""


class TrainingInterrupted(Exception):
    """A signal (SIGTERM, SIGINT) stopped the run at a step boundary.

    Attributes:
        signum: The signal's number.
        detail: Where the run stopped and what it saved.
        epoch: Completed epochs at the stop (None when training had not started).
        step: Steps done in the next epoch at the stop.
    """

    def __init__(
        self, signum: int, detail: str, epoch: int | None = None, step: int | None = None
    ) -> None:
        import signal

        self.signum = signum
        self.detail = detail
        self.epoch = epoch
        self.step = step
        name = signal.Signals(signum).name
        super().__init__(f"Interrupted by {name}: {detail}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""
        return _SIGNAL_BASE + self.signum


# ----------------------------------------------------------------- config errors

_ARGUMENT_PATTERNS = (
    re.compile(r"unexpected keyword argument '(\w+)'"),
    re.compile(r"Received: (\w+)="),
    re.compile(r"missing \d+ required (?:positional|keyword-only) arguments?: '(\w+)'"),
    re.compile(r"`(\w+)`"),
    re.compile(r"^(\w+) must be"),
    re.compile(r"^(\w+) is not a valid argument"),
)


def _argument(message: str) -> str | None:
    for pattern in _ARGUMENT_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


def _value(node: Any, name: str) -> tuple[bool, Any]:
    """``(found, value)`` of ``name`` in a config node, unresolved on failure."""
    try:
        if name not in node:
            return False, None
        return True, node[name]
    except Exception:  # an interpolation that does not resolve: show it as written
        try:
            from omegaconf import OmegaConf

            return True, OmegaConf.to_container(node, resolve=False)[name]
        except Exception:
            return False, None


def _unresolvable(group: str, node: Any) -> tuple[str | None, Any]:
    """The first key of ``node`` whose value does not resolve, with its raw value."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if not isinstance(node, DictConfig):
            return None, None
        raw = OmegaConf.to_container(node, resolve=False)
        for name in node:
            try:
                node[name]
            except Exception:
                return f"{group}.{name}", raw.get(name) if isinstance(raw, dict) else None
    except Exception:  # reporting must not fail
        pass
    return None, None


def _settings(target: str | None) -> list[str]:
    """The constructor arguments of a ``_target_``, for an unknown-key message."""
    if not target:
        return []
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # the target itself may be what is wrong
        return []
    return [
        name
        for name, p in signature.parameters.items()
        if name not in ("self", "data") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def config_error(group: str, node: Any, err: BaseException) -> ConfigError:
    """The :class:`ConfigError` for ``err``, raised while reading the config ``node``.

    Finds the argument ``err`` is about (``Received: name=...``, an unexpected keyword,
    a backquoted name) and names it as the full key with the value the config holds.

    Args:
        group: Where ``node`` sits in the config (``"trainer"``, ``"data"``).
        node: The config node that was read (a DictConfig or a mapping), or a value.
        err: What the reading code raised.
    """
    if _is_config_exception(err) and "Instantiation" not in type(err).__name__:
        # OmegaConf: a value that does not resolve; name the key that holds it.
        first = str(err).strip().splitlines()[0]
        key, raw = getattr(err, "full_key", None), None
        if not key:
            key, raw = _unresolvable(group, node)
        shown = f"{key}={raw}" if raw is not None else str(key or group)
        return ConfigError(f"{shown} cannot be resolved: {first}", str(key or group))
    message = (err.args[0] if isinstance(err, KeyError) and err.args else str(err)).strip()
    loading = re.match(r"Error loading '([^']+)'", message)
    if isinstance(err, ImportError) and loading:  # Hydra could not import a _target_
        reason = message.splitlines()[1] if len(message.splitlines()) > 1 else message
        return ConfigError(
            f"{group}._target_={loading.group(1)!r} cannot be imported ({reason}). Fix the "
            "class path or install the package that provides it.",
            f"{group}._target_",
        )
    target = node.get("_target_") if isinstance(node, Mapping) or hasattr(node, "get") else None
    name = _argument(message)
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
    if unexpected:
        key = f"{group}.{unexpected.group(1)}"
        known = _settings(target)
        listed = f" Its settings: {', '.join(known)}." if known else ""
        return ConfigError(
            f"{key} is not a setting of {target or group}.{listed} Fix the name or remove "
            "the override.",
            key,
        )
    if name is not None and hasattr(node, "__contains__") and not isinstance(node, str):
        found, value = _value(node, name)
        if found:
            return _naming(f"{group}.{name}", name, value, message)
    if not hasattr(node, "__contains__") or isinstance(node, str):
        return _naming(group, group.rsplit(".", 1)[-1], node, message)
    where = f"{group} ({target})" if target else group
    return ConfigError(f"Invalid config {where}: {message}", group)


def _naming(key: str, name: str, value: Any, message: str) -> ConfigError:
    """``key=value is not valid: message``, or the message itself when it starts so."""
    if message.startswith(f"{name}="):
        return ConfigError(key + message[len(name) :], key)
    return ConfigError(f"{key}={value!r} is not valid: {message}", key)


# What a config-reading constructor or setup raises for a value it refuses.
_REFUSALS = (ValueError, TypeError, LookupError, OSError, ImportError)


@contextlib.contextmanager
def reading(group: str, node: Any) -> Iterator[None]:
    """Turn what the code reading ``node`` refuses into a :class:`ConfigError`.

    Data errors (:class:`recsys.data.DataError`: a malformed or truncated file, a
    checksum mismatch) keep their own type and message: they name the file.

    Example:
        >>> with reading("trainer", cfg.trainer):  # doctest: +SKIP
        ...     trainer = instantiate(cfg.trainer)
    """
    from recsys.data.sources.errors import DataError

    try:
        yield
    except (DataError, ConfigError, TrainingInterrupted):
        raise
    except Exception as err:
        interrupted = _in_chain(err, TrainingInterrupted)
        if interrupted is not None:  # a signal during an import Hydra wrapped
            raise interrupted from None
        cause = _instantiation_cause(err)
        if isinstance(cause, DataError):
            raise cause from err
        if not isinstance(err, _REFUSALS) and not _is_config_exception(err):
            raise
        group_key = _listed_key(node, group, _instantiation_key(err) or group)
        raise config_error(group_key, _node_at(node, group, group_key), cause or err) from err


def _is_config_exception(err: BaseException) -> bool:
    """Hydra's InstantiationException or an OmegaConf error (a value that does not resolve)."""
    kinds = {type(err).__name__, *(t.__name__ for t in type(err).__mro__)}
    return bool(kinds & {"InstantiationException", "OmegaConfBaseException"})


def _in_chain(err: BaseException, kind: type[BaseException]) -> Any:
    """The first exception of type ``kind`` among ``err``'s causes and contexts."""
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _instantiation_cause(err: BaseException) -> BaseException | None:
    """The original error inside Hydra's InstantiationException, if ``err`` is one."""
    if type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        return err.__cause__
    return None


def _instantiation_key(err: BaseException) -> str | None:
    match = re.search(r"full_key: (\S+)", str(err))
    return match.group(1) if match else None


def _listed_key(node: Any, group: str, key: str) -> str:
    """``key`` as OmegaConf writes it: Hydra drops a list index's brackets (callbacks0)."""
    bracketed = re.sub(r"([A-Za-z_])(\d+)(?=\.|$)", r"\1[\2]", key)
    if bracketed == key or _node_at(node, group, key) is not node:
        return key
    return bracketed if _node_at(node, group, bracketed) is not node else key


def _node_at(node: Any, group: str, key: str) -> Any:
    """The sub-node of ``node`` (which sits at ``group``) that ``key`` names."""
    if key == group or not key.startswith(group + "."):
        return node
    try:
        from omegaconf import OmegaConf

        found = OmegaConf.select(node, key[len(group) + 1 :])
    except Exception:
        return node
    return node if found is None else found


def describe(err: BaseException) -> tuple[int, str] | None:
    """The exit status and the one message for an error the user can fix, else None.

    Args:
        err: What the run raised.

    Returns:
        ``(status, message)``: 2 for a bad config value, key or data file; 3 for a run
        directory in use; 4 for a run directory without a usable checkpoint; 128 + N
        for an interruption by signal N. None for anything else (a bug: keep its
        traceback).
    """
    from recsys.data.sources.errors import DataError

    interrupted = _in_chain(err, TrainingInterrupted)
    if interrupted is not None:
        return interrupted.exit_code, str(interrupted)
    if isinstance(err, RunDirectoryBusy):
        return EXIT_RUN_DIR_BUSY, str(err)
    if isinstance(err, CheckpointError):
        return EXIT_NO_CHECKPOINT, str(err)
    if isinstance(err, ConfigError):
        return EXIT_BAD_INPUT, str(err)
    if isinstance(err, DataError):
        return EXIT_BAD_INPUT, f"Data error: {err}"
    cause = _instantiation_cause(err)
    if cause is not None or type(err).__name__ == "InstantiationException":
        key = _instantiation_key(err) or "config"
        return EXIT_BAD_INPUT, str(config_error(key, {}, cause or err))
    try:
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None) or "config"
        text = str(err).split("\n")[0]
        return EXIT_BAD_INPUT, f"Config error at {key}: {text}"
    return None
