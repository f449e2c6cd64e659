"""The hardware plan: thread counts and environment for one process, decided, not applied.

:func:`make_plan` turns the machine (:class:`~recsys.hardware.Hardware`, from
:func:`~recsys.hardware.detect`) and the user's requests
(:class:`~recsys.hardware.HardwareConfig`) into a :class:`Plan`: TensorFlow's intra-/
inter-op thread counts, the OpenMP variables oneDNN builds read, TensorFlow's C++ log
level and an allocator preload, each with where it came from. Variables the user
already set are kept and reported as kept; values a recsys launcher set in a parent
process are inherited unless an explicit request says otherwise.

Nothing here changes the process: :mod:`recsys.hardware.process` applies a plan, and
``python -m recsys.launch`` (:mod:`recsys.hardware.cli`) prints one or runs a command
under it.

Example:
    >>> from recsys.hardware import Hardware, HardwareConfig, make_plan
    >>> hw = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3))
    >>> plan = make_plan(HardwareConfig(inter_op_threads=2), hw, environ={})
    >>> plan.intra_op_threads, plan.inter_op_threads, plan.env()["OMP_NUM_THREADS"]
    (4, 2, '4')
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.hardware.allocators import ALLOCATOR_LIBRARIES, find_allocator
from recsys.hardware.config import HardwareConfig
from recsys.hardware.detection import detect
from recsys.hardware.machine import Hardware, format_cpu_list

__all__ = [
    "JEMALLOC_CONF",
    "LAUNCHER_KEYS_VAR",
    "SETTING_HELP",
    "Plan",
    "Setting",
    "make_plan",
    "without_launcher_values",
]

#: Comma-separated env keys that a recsys launcher (not the user) set for this process.
LAUNCHER_KEYS_VAR = "RECSYS_LAUNCH_SET"

JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"

#: TensorFlow's C++ log level unless the user set one: 2 shows errors only (0 all,
#: 1 warnings and errors, 3 nothing), so a first run is not buried in start-up notes.
TF_LOG_LEVEL = "2"

#: One line per setting; used by ``--help``.
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
    "TF_CPP_MIN_LOG_LEVEL": "TensorFlow's C++ log level, 0 all .. 3 none; default "
    f"{TF_LOG_LEVEL} (errors only); set it yourself to see more",
    "LD_PRELOAD": "allocator library loaded at process start (tcmalloc or jemalloc); "
    "auto picks one that is installed",
    "MALLOC_CONF": "jemalloc tuning (set with jemalloc only)",
}


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

    Build it with :func:`make_plan`; apply it with
    :func:`~recsys.hardware.apply_hardware_plan` (in a Python entry point) or
    ``python -m recsys.launch -- CMD`` (for any command).

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
    decider.decide(
        "TF_CPP_MIN_LOG_LEVEL", None, lambda: TF_LOG_LEVEL, "TensorFlow C++ logs: errors only"
    )
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
