"""Plan and apply the CPU threading environment before TensorFlow starts.

The plan turns :func:`recsys.hardware.detect`'s view of the machine (allowed CPUs,
container quota, physical cores, sockets) into TensorFlow's intra-/inter-op thread
counts, the OpenMP variables oneDNN builds read, and an allocator preload. Variables
the user already set are kept and reported as kept; values a recsys launcher set in
a parent process are inherited unless an explicit override asks otherwise.

Three ways in:

* ``python -m recsys.launch --print-env`` prints ``KEY=VALUE`` lines for a shell;
* ``python -m recsys.launch [options] -- CMD [ARGS...]`` runs any command under the
  plan (the launcher execs it, so its exit status is CMD's);
* :func:`apply_hardware_plan` + :func:`configure_tensorflow_threads` in an entry point
  such as ``recsys.train``.

This module must never import TensorFlow at import time: it runs before it.

Example:
    >>> from recsys.launch import HardwareConfig, make_plan
    >>> from recsys.hardware import Hardware
    >>> hw = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3))
    >>> plan = make_plan(HardwareConfig(inter_op_threads=2), hw, environ={})
    >>> plan.intra_op_threads, plan.inter_op_threads, plan.env()["OMP_NUM_THREADS"]
    (4, 2, '4')
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from recsys.hardware import (
    ALLOCATOR_LIBRARIES,
    Hardware,
    detect,
    find_allocator,
    format_cpu_list,
    parse_cpu_list,
)

__all__ = [
    "LAUNCHER_KEYS_VAR",
    "REEXEC_VAR",
    "HardwareConfig",
    "Plan",
    "Setting",
    "apply_hardware_plan",
    "configure_tensorflow_threads",
    "main",
    "make_plan",
    "pin_to_cpus",
    "without_launcher_values",
]

#: Comma-separated env keys that a recsys launcher (not the user) set for this process.
LAUNCHER_KEYS_VAR = "RECSYS_LAUNCH_SET"
#: Set by a process that re-executed itself to apply LD_PRELOAD: JSON with its pid (exec
#: keeps the pid) and the preload variables' values before, so it re-executes at most once.
REEXEC_VAR = "RECSYS_LAUNCH_REEXEC"

ALLOCATOR_CHOICES = ("auto", "none", *ALLOCATOR_LIBRARIES)
JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"

#: One line per setting; used by ``--help`` and by the summary table.
SETTING_HELP: Mapping[str, str] = {
    "cpus": "CPUs the process runs on (its affinity); default: all CPUs it may use now",
    "intra_op_threads": "threads one TensorFlow op (matmul, conv) is split across; "
    "default: physical cores allowed, capped by the container CPU quota",
    "inter_op_threads": "TensorFlow ops that run at the same time; default: sockets allowed, "
    "at least 2 (small recommender ops overlap) but no more than intra-op threads",
    "TF_NUM_INTRAOP_THREADS": "intra-op threads, read by TensorFlow at start up",
    "TF_NUM_INTEROP_THREADS": "inter-op threads, read by TensorFlow at start up",
    "OMP_NUM_THREADS": "OpenMP threads (oneDNN-with-OpenMP builds, BLAS); default: intra-op threads",
    "KMP_AFFINITY": "Intel OpenMP thread pinning; default granularity=fine,compact "
    "(plus ,1,0 with hyper-threads)",
    "KMP_BLOCKTIME": "ms an Intel OpenMP thread spins after work before sleeping; default 1",
    "TF_ENABLE_ONEDNN_OPTS": "TensorFlow's oneDNN CPU kernels, 1 on / 0 off; default 1",
    "LD_PRELOAD": "allocator library loaded at process start (tcmalloc or jemalloc); "
    "auto picks one that is installed",
    "MALLOC_CONF": "jemalloc tuning (set with jemalloc only)",
}


# --------------------------------------------------------------------------- config


def _positive_int_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer or null (auto); received {value!r}.")
    if not isinstance(value, int):
        try:
            if isinstance(value, str) and value.strip().lower() in ("", "auto", "null", "none"):
                return None
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a positive integer or null (auto); received {value!r}."
            ) from None
    if value < 1:
        raise ValueError(
            f"{name} must be at least 1 (or null to decide from the CPU); received {value}. "
            f"Example: {name}=2."
        )
    return value


@dataclass(frozen=True)
class HardwareConfig:
    """What the user asks of the plan; ``None`` (null in YAML) means "decide from the CPU".

    It mirrors ``conf/hardware/auto.yaml`` and the ``recsys.launch`` command-line options.

    Args:
        intra_op_threads: threads per TensorFlow op.
        inter_op_threads: TensorFlow ops run concurrently (default: sockets, at least 2 so
            independent small ops such as embedding lookups overlap, at most intra-op).
        omp_num_threads: ``OMP_NUM_THREADS`` (default: intra-op threads).
        allocator: ``auto`` (tcmalloc, else jemalloc, when installed), ``none``,
            ``tcmalloc``, ``jemalloc``, or a path to a shared library.
        kmp_affinity: ``KMP_AFFINITY`` value.
        kmp_blocktime: ``KMP_BLOCKTIME`` in ms.
        onednn_opts: ``TF_ENABLE_ONEDNN_OPTS`` (True/False).
        cpus: CPUs to pin the process to (a list or a kernel list such as ``"0-3"``);
            they must be among the CPUs the process may use now.

    Raises:
        ValueError: a thread count below 1, an unknown allocator, or bad CPUs.

    Example:
        >>> HardwareConfig.from_mapping({"intra_op_threads": 2, "cpus": "0-1"}).cpus
        (0, 1)
    """

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    omp_num_threads: int | None = None
    allocator: str = "auto"
    kmp_affinity: str | None = None
    kmp_blocktime: int | None = None
    onednn_opts: bool | None = None
    cpus: Any = None

    def __post_init__(self) -> None:
        for name in ("intra_op_threads", "inter_op_threads", "omp_num_threads"):
            object.__setattr__(self, name, _positive_int_or_none(name, getattr(self, name)))
        if self.kmp_blocktime is not None:
            try:
                blocktime = int(self.kmp_blocktime)
            except (TypeError, ValueError):
                blocktime = -1
            if blocktime < 0:
                raise ValueError(
                    f"kmp_blocktime must be an integer >= 0 (ms) or null; received {self.kmp_blocktime!r}."
                )
            object.__setattr__(self, "kmp_blocktime", blocktime)
        allocator = str(self.allocator if self.allocator is not None else "none")
        if allocator not in ALLOCATOR_CHOICES and "/" not in allocator:
            raise ValueError(
                f"allocator must be one of {', '.join(ALLOCATOR_CHOICES)} or a path to a shared "
                f"library; received {self.allocator!r}."
            )
        object.__setattr__(self, "allocator", allocator)
        if self.cpus is not None:
            cpus = self.cpus
            if isinstance(cpus, int) and not isinstance(cpus, bool):
                cpus = (cpus,)
            elif isinstance(cpus, str):
                cpus = parse_cpu_list(cpus)
            else:
                try:
                    cpus = tuple(sorted({int(c) for c in cpus}))
                except (TypeError, ValueError):
                    raise ValueError(
                        f"cpus must be a CPU list such as '0-3' or [0, 1]; received {self.cpus!r}."
                    ) from None
            if not cpus:
                raise ValueError(f"cpus must name at least one CPU; received {self.cpus!r}.")
            object.__setattr__(self, "cpus", tuple(cpus))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | HardwareConfig | None) -> HardwareConfig:
        """Build from a dict or an OmegaConf ``DictConfig`` (``cfg.hardware``).

        Unknown keys are an error, so a misspelled override is not silently ignored;
        ``_target_`` is allowed and ignored.

        Raises:
            ValueError: a key that is not a field, or a bad value.

        Example:
            >>> HardwareConfig.from_mapping({"_target_": "x", "allocator": "none"}).allocator
            'none'
        """
        if mapping is None:
            return cls()
        if isinstance(mapping, HardwareConfig):
            return mapping
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        unknown: list[str] = []
        for key in mapping:
            if key == "_target_":
                continue
            if key not in known:
                unknown.append(str(key))
                continue
            value = mapping[key]
            if key == "cpus" and value is not None and not isinstance(value, (str, int)):
                value = list(value)  # ListConfig -> list
            values[key] = value
        if unknown:
            raise ValueError(
                f"Unknown hardware setting(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(known))}. Check the spelling in conf/hardware or the override."
            )
        return cls(**values)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Setting:
    """One decided value and where it came from.

    Args:
        key: an environment variable, or ``intra_op_threads`` / ``inter_op_threads`` / ``cpus``.
        value: the value as a string.
        source: ``set`` (the plan sets it), ``kept`` (the user had set it; left alone),
            ``inherited`` (a recsys launcher in a parent process set it), or
            ``detected`` (already true of the process; nothing to change).
        why: a short reason.
    """

    key: str
    value: str
    source: str
    why: str


@dataclass(frozen=True)
class Plan:
    """The decided threading environment for one process.

    Build it with :func:`make_plan`; apply it with :func:`apply_hardware_plan` (in a
    Python entry point) or ``python -m recsys.launch -- CMD`` (for any command).

    Args:
        hardware: the machine the plan was made for (already restricted to ``cpus``).
        intra_op_threads: for ``tf.config.threading.set_intra_op_parallelism_threads``.
        inter_op_threads: for ``tf.config.threading.set_inter_op_parallelism_threads``.
        cpus: CPUs to pin the process to, or ``None`` to leave its affinity alone.
        allocator: path of the preloaded allocator library, or ``None``.
        settings: every decided value with its source.
        warnings: requests that could not be honoured as asked, with the limit.

    Example:
        >>> from recsys.hardware import Hardware
        >>> plan = make_plan(HardwareConfig(allocator="none"),
        ...                  Hardware(allowed_cpus=(0, 1), online_cpus=(0, 1)),
        ...                  environ={"KMP_BLOCKTIME": "0"})
        >>> plan.setting("KMP_BLOCKTIME").source, "KMP_BLOCKTIME" in plan.env()
        ('kept', False)
    """

    hardware: Hardware
    intra_op_threads: int
    inter_op_threads: int
    cpus: tuple[int, ...] | None
    allocator: str | None
    settings: tuple[Setting, ...]
    warnings: tuple[str, ...] = field(default=())

    def setting(self, key: str) -> Setting:
        """The setting named ``key``.

        Raises:
            KeyError: no such setting in the plan.
        """
        for setting in self.settings:
            if setting.key == key:
                return setting
        raise KeyError(f"{key!r} is not in the plan; it has {[s.key for s in self.settings]}.")

    def env(self) -> dict[str, str]:
        """Environment variables this plan puts in place (set and inherited, not kept ones),
        plus the marker that tells a child process which ones a launcher set."""
        out = {
            s.key: s.value
            for s in self.settings
            if s.key.isupper() and s.source in ("set", "inherited")
        }
        if out:
            out[LAUNCHER_KEYS_VAR] = ",".join(sorted(out))
        return out

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with :meth:`env` applied: the child's environment."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.env())
        return merged

    def export_lines(self) -> list[str]:
        """``KEY=VALUE`` lines for every environment setting (kept ones too), shell-quoted."""
        lines = [
            f"{s.key}={shlex.quote(s.value)}"
            for s in self.settings
            if s.key.isupper() and s.source != "detected"
        ]
        marker = self.env().get(LAUNCHER_KEYS_VAR)
        if marker:
            lines.append(f"{LAUNCHER_KEYS_VAR}={shlex.quote(marker)}")
        return lines

    def summary(self) -> str:
        """A short table: what was detected, and each setting with set / kept / inherited."""
        rows = [(s.key, s.value, s.source, s.why) for s in self.settings]
        wk = max(len("setting"), *(len(r[0]) for r in rows))
        wv = min(40, max(len("value"), *(len(r[1]) for r in rows)))
        ws = max(len("source"), *(len(r[2]) for r in rows))
        lines = [
            "recsys hardware plan",
            f"  detected: {self.hardware.describe()}",
            f"  {'setting':<{wk}}  {'value':<{wv}}  {'source':<{ws}}  why",
        ]
        for key, value, source, why in rows:
            shown = value if len(value) <= wv else value[: wv - 3] + "..."
            lines.append(f"  {key:<{wk}}  {shown:<{wv}}  {source:<{ws}}  {why}")
        lines += [f"  note: {note}" for note in self.hardware.notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of the plan (saved as ``hardware.json`` with a run)."""
        return {
            "detected": self.hardware.to_dict(),
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "cpus": format_cpu_list(self.cpus) if self.cpus else None,
            "allocator": self.allocator,
            "settings": [asdict(s) for s in self.settings],
            "env": self.env(),
            "warnings": list(self.warnings),
        }

    def save(self, run_dir: str | os.PathLike[str], name: str = "hardware.json") -> Path:
        """Write :meth:`to_dict` as JSON into ``run_dir`` and return the file's path."""
        path = Path(run_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


class _Decider:
    """Applies the precedence user env (kept) > explicit request > launcher (inherited) > auto."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.from_launcher = {k for k in environ.get(LAUNCHER_KEYS_VAR, "").split(",") if k}
        self.settings: list[Setting] = []
        self.warnings: list[str] = []

    def user_value(self, key: str) -> str | None:
        if key in self.environ and key not in self.from_launcher:
            return self.environ[key]
        return None

    def inherited_value(self, key: str) -> str | None:
        return self.environ.get(key) if key in self.from_launcher else None

    def decide(self, key: str, requested: Any, auto: Callable[[], str | None], why: str) -> str:
        """Decide the env var ``key``; returns the value in force (may be '')."""
        user = self.user_value(key)
        if user is not None:
            if requested is not None and str(requested) != user:
                self.warnings.append(
                    f"{key}={user} was already set in the environment and is kept; the "
                    f"requested {requested} is ignored. Unset {key} to let the plan decide."
                )
            self.settings.append(Setting(key, user, "kept", "set before launch; left as is"))
            return user
        if requested is not None:
            self.settings.append(Setting(key, str(requested), "set", "requested"))
            return str(requested)
        inherited = self.inherited_value(key)
        if inherited is not None:
            self.settings.append(Setting(key, inherited, "inherited", "set by a parent launcher"))
            return inherited
        value = auto()
        if value is not None:
            self.settings.append(Setting(key, value, "set", why))
        return value or ""


def _env_int(key: str, value: str) -> int:
    """A thread count from the environment (or the plan), checked."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(
            f"{key}={value!r} in the environment is not a positive integer. Unset it to let "
            f"the plan decide, or set it to a thread count such as {key}=2."
        )
    return n


def _check_threads(name: str, n: int, hardware: Hardware, warnings_out: list[str]) -> None:
    allowed = len(hardware.allowed_cpus)
    if n > allowed:
        warnings_out.append(
            f"{name}={n} is more than the {allowed} CPUs this process may use "
            f"({format_cpu_list(hardware.allowed_cpus)}); threads will share CPUs. "
            f"Use at most {allowed}."
        )
    elif hardware.quota_cpus is not None and n > hardware.usable_cpus:
        warnings_out.append(
            f"{name}={n} is more than the container CPU quota of {hardware.quota_cpus:g} CPUs; "
            f"the process will be throttled. Use at most {hardware.compute_threads}."
        )


def _resolve_allocator(
    config: HardwareConfig,
    decider: _Decider,
    find: Callable[[str], Path | None],
) -> str | None:
    """Decide LD_PRELOAD (and MALLOC_CONF for jemalloc); returns the allocator path or None."""
    current = decider.environ.get("LD_PRELOAD", "")
    entries = [e for e in current.replace(" ", ":").split(":") if e]
    has_allocator = [e for e in entries if "tcmalloc" in e or "jemalloc" in e]
    if "LD_PRELOAD" in decider.from_launcher:
        decider.settings.append(
            Setting("LD_PRELOAD", current, "inherited", "set by a parent launcher")
        )
        return has_allocator[0] if has_allocator else None
    if config.allocator == "none":
        return None
    if has_allocator:
        decider.settings.append(
            Setting("LD_PRELOAD", current, "kept", "already preloads an allocator")
        )
        return has_allocator[0]
    if config.allocator == "auto":
        path = next((p for p in (find(n) for n in ALLOCATOR_LIBRARIES) if p is not None), None)
        if path is None:
            decider.settings.append(
                Setting(
                    "LD_PRELOAD",
                    current,
                    "kept" if current else "detected",
                    "no tcmalloc/jemalloc installed (apt-get install libtcmalloc-minimal4); "
                    "system malloc used",
                )
            )
            return None
    elif "/" in config.allocator:
        path = Path(config.allocator)
        if not path.is_file():
            raise ValueError(
                f"allocator={config.allocator!r}: no such file. Give the path of an installed "
                "shared library, a name (tcmalloc, jemalloc), auto or none."
            )
    else:
        path = find(config.allocator)
        if path is None:
            package = "libtcmalloc-minimal4" if config.allocator == "tcmalloc" else "libjemalloc2"
            raise ValueError(
                f"allocator={config.allocator!r} was requested but its library is not installed "
                f"(looked for {', '.join(ALLOCATOR_LIBRARIES[config.allocator])}). Install it "
                f"(e.g. apt-get install {package}) or use allocator=auto or allocator=none."
            )
    value = ":".join([str(path), *entries])
    why = f"{config.allocator} allocator" + (" (prepended to the user's)" if entries else "")
    decider.settings.append(Setting("LD_PRELOAD", value, "set", why))
    if "jemalloc" in path.name:
        decider.decide("MALLOC_CONF", None, lambda: JEMALLOC_CONF, "jemalloc tuning")
    return str(path)


def make_plan(
    config: HardwareConfig | Mapping[str, Any] | None = None,
    hardware: Hardware | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    find_library: Callable[[str], Path | None] = find_allocator,
) -> Plan:
    """Decide thread counts and environment for a process; changes nothing.

    Precedence for each variable: a value the user already has in the environment
    (kept) > an explicit request in ``config`` > a value a parent recsys launcher set
    (inherited) > a value derived from the hardware.

    Args:
        config: the requests (a :class:`HardwareConfig`, ``cfg.hardware``, or a dict).
        hardware: the machine (default: :func:`recsys.hardware.detect`).
        environ: the environment to plan against (default: ``os.environ``).
        find_library: allocator name -> library path or ``None`` (tests inject fakes).

    Returns:
        The :class:`Plan`.

    Raises:
        ValueError: impossible requests (threads < 1, CPUs not allowed, an explicit
            allocator that is not installed).

    Example:
        >>> from recsys.hardware import Hardware
        >>> hw = Hardware(allowed_cpus=(0, 1), online_cpus=(0, 1), quota_cpus=1.5)
        >>> make_plan({"allocator": "none"}, hw, environ={}).intra_op_threads
        1
    """
    config = HardwareConfig.from_mapping(config)
    hardware = hardware if hardware is not None else detect()
    environ = os.environ if environ is None else environ
    decider = _Decider(environ)

    cpus: tuple[int, ...] | None = None
    if config.cpus is not None:
        hardware = hardware.restricted_to(config.cpus, quota_cpus=hardware.quota_cpus)
        cpus = hardware.allowed_cpus
        decider.settings.append(Setting("cpus", format_cpu_list(cpus), "set", "requested"))
    else:
        decider.settings.append(
            Setting(
                "cpus",
                format_cpu_list(hardware.allowed_cpus),
                "detected",
                "current affinity",
            )
        )

    intra = _env_int(
        "TF_NUM_INTRAOP_THREADS",
        decider.decide(
            "TF_NUM_INTRAOP_THREADS",
            config.intra_op_threads,
            lambda: str(hardware.compute_threads),
            "physical cores allowed"
            + (f", quota {hardware.quota_cpus:g}" if hardware.quota_cpus is not None else ""),
        ),
    )
    inter = _env_int(
        "TF_NUM_INTEROP_THREADS",
        decider.decide(
            "TF_NUM_INTEROP_THREADS",
            config.inter_op_threads,
            lambda: str(min(hardware.compute_threads, max(2, hardware.sockets))),
            "sockets allowed, at least 2 while there are 2 compute threads",
        ),
    )
    for name, n in (("intra_op_threads", intra), ("inter_op_threads", inter)):
        _check_threads(name, n, hardware, decider.warnings)
    decider.settings[1:1] = [
        Setting("intra_op_threads", str(intra), "set", "tf.config.threading intra-op pool"),
        Setting("inter_op_threads", str(inter), "set", "tf.config.threading inter-op pool"),
    ]
    decider.decide("OMP_NUM_THREADS", config.omp_num_threads, lambda: str(intra), "= intra-op")
    hyper = hardware.threads_per_core > 1
    decider.decide(
        "KMP_AFFINITY",
        config.kmp_affinity,
        lambda: "granularity=fine,compact,1,0" if hyper else "granularity=fine,compact",
        "pin OpenMP threads" + (", one per core first" if hyper else ""),
    )
    decider.decide("KMP_BLOCKTIME", config.kmp_blocktime, lambda: "1", "sleep soon after work")
    onednn = None if config.onednn_opts is None else ("1" if config.onednn_opts else "0")
    decider.decide("TF_ENABLE_ONEDNN_OPTS", onednn, lambda: "1", "oneDNN kernels on")
    allocator = _resolve_allocator(config, decider, find_library)
    return Plan(
        hardware=hardware,
        intra_op_threads=intra,
        inter_op_threads=inter,
        cpus=cpus,
        allocator=allocator,
        settings=tuple(decider.settings),
        warnings=tuple(decider.warnings),
    )


def without_launcher_values(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` minus the variables a recsys launcher set (and its marker).

    Use it as the base when planning for a process whose CPUs differ from this one's
    (a sweep job on a share of the cores), so the parent's decisions are not inherited.

    Example:
        >>> without_launcher_values({"A": "1", "OMP_NUM_THREADS": "2", LAUNCHER_KEYS_VAR: "OMP_NUM_THREADS"})
        {'A': '1'}
    """
    ours = {k for k in environ.get(LAUNCHER_KEYS_VAR, "").split(",") if k}
    return {k: v for k, v in environ.items() if k not in ours and k != LAUNCHER_KEYS_VAR}


# --------------------------------------------------------------------------- apply


def _preload_needs_restart(plan: Plan, environ: Mapping[str, str]) -> bool:
    """Whether the plan's LD_PRELOAD differs from the one this process started with."""
    try:
        wanted = plan.setting("LD_PRELOAD")
    except KeyError:
        return False
    return wanted.source == "set" and environ.get("LD_PRELOAD", "") != wanted.value


def _loaded_libraries() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


def apply_hardware_plan(
    overrides: Mapping[str, Any] | HardwareConfig | None = None,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    hardware: Hardware | None = None,
    stream: TextIO | None = None,
    quiet: bool = False,
    reexec_allowed: bool = True,
    execve: Callable[[str, Sequence[str], Mapping[str, str]], Any] = os.execve,
) -> Plan:
    """Plan and apply the hardware settings to this process, before TensorFlow is imported.

    Sets the plan's environment variables in ``os.environ``, pins the process when the
    plan names CPUs, and, when the allocator preload must change, re-executes the
    process once (``LD_PRELOAD`` only takes effect at process start). A marker holding
    this pid (``RECSYS_LAUNCH_REEXEC``) makes sure that happens at most once. Prints the
    summary table to ``stream`` (stderr) and saves ``hardware.json`` in ``run_dir``.

    Call it first thing in an entry point, then import TensorFlow, then call
    :func:`configure_tensorflow_threads`::

        @hydra.main(config_path="../conf", config_name="train", version_base="1.3")
        def main(cfg):
            from recsys.launch import apply_hardware_plan, configure_tensorflow_threads

            run_dir = hydra.core.hydra_config.HydraConfig.get().runtime.output_dir
            plan = apply_hardware_plan(cfg.get("hardware"), run_dir=run_dir)
            from recsys._tf import tf  # only now
            configure_tensorflow_threads(plan)
            ...

    Args:
        overrides: requests (``cfg.hardware``, a dict, or a :class:`HardwareConfig`).
        run_dir: where to save ``hardware.json`` (``None``: not saved).
        hardware: the machine (default: detect it).
        stream: where the summary goes (default ``sys.stderr``).
        quiet: do not print the summary.
        reexec_allowed: False never re-executes (the preload then only warns). It is
            also never done inside an in-process Hydra multirun (basic launcher).
        execve: replaces the process (tests inject a fake).

    Returns:
        The applied :class:`Plan`.

    Raises:
        ValueError: impossible requests (see :func:`make_plan`).
    """
    if "tensorflow" in sys.modules:
        warnings.warn(
            "TensorFlow was imported before apply_hardware_plan(); the thread and oneDNN "
            "variables it reads at start up will not take effect. Call apply_hardware_plan() "
            "before anything imports TensorFlow.",
            RuntimeWarning,
            stacklevel=2,
        )
    reexec = _reexec_state()
    # After our own re-execution, plan against the environment as it was before it, so
    # the plan (and its table) is the same one that asked for the re-execution.
    plan = make_plan(overrides, hardware, environ=_restored(os.environ, reexec))
    stream = sys.stderr if stream is None else stream
    if _preload_needs_restart(plan, os.environ):
        argv = list(getattr(sys, "orig_argv", []))
        if reexec is not None:
            plan = _with_warning(
                plan,
                f"LD_PRELOAD={plan.setting('LD_PRELOAD').value} differs from the environment "
                "after one re-execution; not re-executing again.",
            )
        elif len(argv) < 2 or not reexec_allowed or _in_hydra_multirun():
            plan = _with_warning(
                plan,
                "LD_PRELOAD cannot take effect without re-executing this process, which is "
                + (
                    "not possible here (no command line to re-execute)"
                    if len(argv) < 2
                    else "switched off"
                    if not reexec_allowed
                    else "not done inside an in-process Hydra multirun (it would restart the sweep)"
                )
                + ". Start the process under `python -m recsys.launch -- ...`, use "
                "hydra/launcher=recsys for sweeps, or set allocator=none.",
            )
        else:
            _reexec(plan, argv, execve)
            return plan  # only reached when execve is a test double
    if (
        plan.allocator
        and reexec is not None
        and Path(plan.allocator).name not in _loaded_libraries()
    ):
        plan = _with_warning(
            plan,
            f"{plan.allocator} is in LD_PRELOAD but did not load "
            "(see the dynamic loader's message above).",
        )
    os.environ.update(plan.env())
    if plan.cpus:
        pin_to_cpus(plan.cpus)
    for message in plan.warnings:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    if not quiet:
        print(plan.summary(), file=stream, flush=True)
    if run_dir is not None:
        plan.save(run_dir)
    return plan


_PRELOAD_KEYS = ("LD_PRELOAD", "MALLOC_CONF")


def _in_hydra_multirun() -> bool:
    """Whether this process is running a Hydra multirun's jobs itself (basic launcher)."""
    if "hydra" not in sys.modules:
        return False
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # no Hydra config, or another Hydra version: assume a plain run
        return False


def _reexec_state() -> dict[str, Any] | None:
    """What this process's own re-execution recorded, or None if it did not re-execute.

    The marker holds the pid (exec keeps it, children get new ones) and the values the
    preload variables had before, so a child process is never mistaken for a re-execution.
    """
    raw = os.environ.get(REEXEC_VAR)
    if not raw:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(state, dict) or state.get("pid") != os.getpid():
        return None
    return state


def _restored(environ: Mapping[str, str], reexec: Mapping[str, Any] | None) -> dict[str, str]:
    env = dict(environ)
    if reexec is not None:
        for key, value in dict(reexec.get("restore", {})).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env.pop(REEXEC_VAR, None)
    return env


def _reexec(
    plan: Plan,
    argv: Sequence[str],
    execve: Callable[[str, Sequence[str], Mapping[str, str]], Any],
) -> None:
    """Replace this process by a fresh start of the same command with the preload set."""
    env = dict(os.environ)
    wanted = plan.env()
    for key in _PRELOAD_KEYS:
        if key in wanted:
            env[key] = wanted[key]
    env[REEXEC_VAR] = json.dumps(
        {"pid": os.getpid(), "restore": {k: os.environ.get(k) for k in _PRELOAD_KEYS}}
    )
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    execve(sys.executable, [sys.executable, *argv[1:]], env)


def pin_to_cpus(cpus: Iterable[int]) -> bool:
    """Restrict this process (and whatever it starts or execs) to ``cpus``.

    Returns:
        True when pinned; False, with a warning, where the OS has no
        ``sched_setaffinity`` (macOS, Windows).

    Example:
        >>> import os
        >>> pin_to_cpus(os.sched_getaffinity(0))  # pinning to the current set changes nothing
        True
    """
    if not hasattr(os, "sched_setaffinity"):
        warnings.warn(
            "CPU pinning is not supported on this OS (no os.sched_setaffinity); the process "
            "keeps all CPUs and only the thread counts follow the plan.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    os.sched_setaffinity(0, set(cpus))
    return True


def _with_warning(plan: Plan, message: str) -> Plan:
    return Plan(**{**plan.__dict__, "warnings": (*plan.warnings, message)})


def configure_tensorflow_threads(plan: Plan) -> tuple[int, int]:
    """Set TensorFlow's intra-/inter-op thread pools to the plan; call right after import.

    Imports TensorFlow (through :mod:`recsys._tf`) if it is not imported yet. Must run
    before TensorFlow executes its first op, since the pools are fixed then.

    Example::

        plan = apply_hardware_plan(cfg.hardware, run_dir=run_dir)  # before TF
        from recsys._tf import tf
        configure_tensorflow_threads(plan)  # -> (plan.intra_op_threads, plan.inter_op_threads)

    Args:
        plan: from :func:`apply_hardware_plan`.

    Returns:
        ``(intra, inter)`` as TensorFlow reports them afterwards.

    Raises:
        RuntimeError: TensorFlow's runtime already started with other thread counts.
    """
    from recsys._tf import tf

    threading = tf.config.threading
    wanted = (plan.intra_op_threads, plan.inter_op_threads)
    current = (
        threading.get_intra_op_parallelism_threads(),
        threading.get_inter_op_parallelism_threads(),
    )
    if current != wanted:
        try:
            threading.set_intra_op_parallelism_threads(plan.intra_op_threads)
            threading.set_inter_op_parallelism_threads(plan.inter_op_threads)
        except RuntimeError as err:
            raise RuntimeError(
                f"TensorFlow's runtime is already initialized with intra/inter-op threads "
                f"{current}; cannot set the plan's {wanted}. Call configure_tensorflow_threads() "
                "right after importing TensorFlow, before any op runs."
            ) from err
    return (
        threading.get_intra_op_parallelism_threads(),
        threading.get_inter_op_parallelism_threads(),
    )


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.launch",
        description=(
            "Detect the CPU (affinity, container quota, cores, sockets) and run a command "
            "with TensorFlow's threading environment set for it. Variables already set in "
            "the environment are kept. Without a command, prints the plan."
        ),
        epilog=(
            "examples:\n"
            "  python -m recsys.launch -- python my_script.py --epochs 3\n"
            "  python -m recsys.launch --intra-op-threads 4 --allocator none -- python -m recsys.train\n"
            '  export $(python -m recsys.launch --print-env)   # or: eval "$(...)"\n\n'
            "settings:\n" + "\n".join(f"  {k:<23} {v}" for k, v in SETTING_HELP.items())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--intra-op-threads", type=int, metavar="N", help=SETTING_HELP["intra_op_threads"]
    )
    parser.add_argument(
        "--inter-op-threads", type=int, metavar="N", help=SETTING_HELP["inter_op_threads"]
    )
    parser.add_argument(
        "--omp-num-threads", type=int, metavar="N", help=SETTING_HELP["OMP_NUM_THREADS"]
    )
    parser.add_argument("--kmp-affinity", metavar="SPEC", help=SETTING_HELP["KMP_AFFINITY"])
    parser.add_argument(
        "--allocator",
        default="auto",
        metavar="{auto,none,tcmalloc,jemalloc,PATH}",
        help="allocator to preload: auto picks tcmalloc, else jemalloc, when installed",
    )
    parser.add_argument("--cpus", metavar="LIST", help="pin to these CPUs, e.g. 0-3 or 0,2")
    parser.add_argument(
        "--kmp-blocktime", type=int, metavar="MS", help=SETTING_HELP["KMP_BLOCKTIME"]
    )
    parser.add_argument(
        "--no-onednn", action="store_true", help="set TF_ENABLE_ONEDNN_OPTS=0 (oneDNN off)"
    )
    parser.add_argument(
        "--print-env", action="store_true", help="print KEY=VALUE lines to export, then exit"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON, then exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the summary")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...] to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m recsys.launch --help``.

    With a command, replaces this process by it (``exec``), so the exit status is the
    command's; returns 127 when it cannot be found and 2 for bad options.

    Example:
        >>> main(["--print-env", "--quiet", "--allocator", "none"])  # doctest: +SKIP
        TF_NUM_INTRAOP_THREADS=2
        ...
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        config = HardwareConfig(
            intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads,
            omp_num_threads=args.omp_num_threads,
            allocator=args.allocator,
            kmp_affinity=args.kmp_affinity,
            kmp_blocktime=args.kmp_blocktime,
            onednn_opts=False if args.no_onednn else None,
            cpus=args.cpus,
        )
        plan = make_plan(config)
    except ValueError as err:
        parser.error(str(err))
    if args.quiet:
        for message in plan.warnings:
            print(f"recsys.launch: warning: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    if args.print_env:
        if not args.quiet:
            print(plan.summary(), file=sys.stderr)
        print("\n".join(plan.export_lines()))
        return 0
    if not args.quiet:
        print(plan.summary(), file=sys.stderr, flush=True)
    if not command:
        return 0
    if plan.cpus:
        pin_to_cpus(plan.cpus)
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, plan.environ(os.environ))
    except FileNotFoundError:
        print(f"recsys.launch: command not found: {command[0]!r}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"recsys.launch: cannot execute {command[0]!r}: permission denied", file=sys.stderr)
        return 126
    return 0  # pragma: no cover - execvpe does not return


if __name__ == "__main__":
    sys.exit(main())
