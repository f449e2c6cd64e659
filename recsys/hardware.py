"""What CPU this process may use: allowed CPUs, container quota, topology, ISA, memory.

This module must never import TensorFlow: it runs before it, so that thread counts
and allocator choices can be made while they still take effect.

Every file it reads is named in :class:`SystemPaths`, so tests can point detection
at a fake ``/sys`` and ``/proc`` tree. Missing files (other kernels, minimal
containers) degrade to what :mod:`os` reports, and each fallback is recorded in
:attr:`Hardware.notes`.

Example:
    >>> from recsys.hardware import detect
    >>> hw = detect()
    >>> hw.usable_cpus >= 1
    True
    >>> print(hw.describe())  # doctest: +SKIP
    2 CPUs allowed (0-1) of 2 online; no quota; 2 physical cores, 1 socket, ...
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOCATOR_LIBRARIES",
    "Core",
    "Hardware",
    "SystemPaths",
    "detect",
    "find_allocator",
    "format_cpu_list",
    "parse_cpu_list",
    "split_cpus",
]

# ISA flags (as /proc/cpuinfo spells them) that decide which oneDNN kernels run.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class SystemPaths:
    """Where detection reads the kernel's view of the machine.

    Args:
        sys_cpu: ``/sys/devices/system/cpu`` (``online``, ``cpuN/topology/*``).
        sys_node: ``/sys/devices/system/node`` (``nodeN/cpulist``).
        proc_cpuinfo: ``/proc/cpuinfo`` (model name, ISA flags).
        proc_meminfo: ``/proc/meminfo`` (``MemTotal``).
        proc_self_cgroup: ``/proc/self/cgroup`` (this process's cgroup paths).
        cgroup_root: ``/sys/fs/cgroup`` (v2 unified tree, or v1 controller folders).

    Example:
        >>> paths = SystemPaths.under("/tmp/fake-machine")
        >>> str(paths.proc_cpuinfo)
        '/tmp/fake-machine/proc/cpuinfo'
    """

    sys_cpu: Path = Path("/sys/devices/system/cpu")
    sys_node: Path = Path("/sys/devices/system/node")
    proc_cpuinfo: Path = Path("/proc/cpuinfo")
    proc_meminfo: Path = Path("/proc/meminfo")
    proc_self_cgroup: Path = Path("/proc/self/cgroup")
    cgroup_root: Path = Path("/sys/fs/cgroup")

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> SystemPaths:
        """The standard paths re-rooted under ``root`` (a fake machine for tests).

        Example:
            >>> SystemPaths.under("/x").sys_cpu
            PosixPath('/x/sys/devices/system/cpu')
        """
        root = Path(root)
        default = cls()
        return cls(
            **{
                name: root / Path(str(getattr(default, name))).relative_to("/")
                for name in cls.__dataclass_fields__
            }
        )


# --------------------------------------------------------------------------- helpers


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """Parse a kernel CPU list such as ``"0-3,8,10-11"``.

    Example:
        >>> parse_cpu_list("0-2,5")
        (0, 1, 2, 5)

    Raises:
        ValueError: ``text`` is not a CPU list.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ValueError(
                f"Not a CPU list: {text!r}. Expected comma-separated numbers and ranges, e.g. '0-3,8'."
            )
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
        if hi < lo:
            raise ValueError(f"Not a CPU list: {text!r}: range {part!r} runs backwards.")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Format CPUs as a compact kernel-style list.

    Example:
        >>> format_cpu_list([0, 1, 2, 5, 7, 8])
        '0-2,5,7-8'
    """
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Core:
    """One physical core: the logical CPUs (hyper-threads) that share it.

    Args:
        socket: physical package id.
        core_id: core id within the socket.
        cpus: logical CPU numbers on this core that this process may use.
    """

    socket: int
    core_id: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Hardware:
    """The machine as this process sees it.

    Build it with :func:`detect`; the fields are plain data so tests can also
    construct one directly.

    Args:
        allowed_cpus: logical CPUs this process may run on (its affinity mask).
        online_cpus: logical CPUs online on the machine.
        quota_cpus: container CPU quota in CPUs (``1.5`` = 150 ms per 100 ms), or
            ``None`` when there is none.
        cores: physical cores that hold at least one allowed CPU.
        numa_nodes: NUMA node id -> allowed CPUs on that node.
        isa: the oneDNN-relevant ISA flags present (see ``ISA_FLAGS``).
        model_name: CPU model string from ``/proc/cpuinfo``.
        memory_bytes: physical memory, or ``None`` when unknown.
        memory_limit_bytes: container memory limit, or ``None`` when there is none.
        notes: what could not be read and what was assumed instead.

    Example:
        >>> hw = Hardware(allowed_cpus=(0, 1), online_cpus=(0, 1),
        ...               cores=(Core(0, 0, (0,)), Core(0, 1, (1,))))
        >>> hw.usable_cpus, hw.physical_cores, hw.sockets
        (2.0, 2, 1)
    """

    allowed_cpus: tuple[int, ...]
    online_cpus: tuple[int, ...]
    quota_cpus: float | None = None
    cores: tuple[Core, ...] = ()
    numa_nodes: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    isa: frozenset[str] = frozenset()
    model_name: str = ""
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.allowed_cpus:
            raise ValueError("Hardware needs at least one allowed CPU; received allowed_cpus=().")
        if not self.cores:
            # No topology: every allowed CPU counts as its own core on socket 0.
            object.__setattr__(
                self, "cores", tuple(Core(0, cpu, (cpu,)) for cpu in self.allowed_cpus)
            )

    @property
    def usable_cpus(self) -> float:
        """CPUs of compute this process can get: its affinity, capped by the quota."""
        n = float(len(self.allowed_cpus))
        return min(n, self.quota_cpus) if self.quota_cpus is not None else n

    @property
    def physical_cores(self) -> int:
        """Physical cores holding at least one allowed CPU."""
        return len(self.cores)

    @property
    def sockets(self) -> int:
        """Sockets holding at least one allowed CPU."""
        return len({core.socket for core in self.cores})

    @property
    def threads_per_core(self) -> int:
        """Most allowed hyper-threads on one core (1 when hyper-threading is off or masked)."""
        return max(len(core.cpus) for core in self.cores)

    @property
    def compute_threads(self) -> int:
        """Threads worth running compute on: physical cores, capped by the quota (at least 1).

        Hyper-threads share a core's vector units, so dense kernels gain little from
        them; a fractional quota is rounded down so the process is not throttled.
        """
        n = self.physical_cores
        if self.quota_cpus is not None:
            n = min(n, max(1, math.floor(self.quota_cpus)))
        return max(1, n)

    @property
    def memory_available_bytes(self) -> int | None:
        """Physical memory, capped by the container limit."""
        values = [v for v in (self.memory_bytes, self.memory_limit_bytes) if v is not None]
        return min(values) if values else None

    def restricted_to(self, cpus: Iterable[int], quota_cpus: float | None = None) -> Hardware:
        """The same machine seen by a process pinned to ``cpus`` (a subset of the allowed).

        Args:
            cpus: logical CPUs to keep.
            quota_cpus: the quota share of the restricted process (``None``: no quota).

        Raises:
            ValueError: ``cpus`` is empty or names CPUs this process may not use.

        Example:
            >>> hw = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3))
            >>> hw.restricted_to([2, 3]).allowed_cpus
            (2, 3)
        """
        keep = tuple(sorted(set(cpus)))
        outside = sorted(set(keep) - set(self.allowed_cpus))
        if not keep or outside:
            raise ValueError(
                f"Cannot restrict to CPUs {format_cpu_list(keep) or '(none)'}: this process may "
                f"only use {format_cpu_list(self.allowed_cpus)}"
                + (f" (not {format_cpu_list(outside)})" if outside else "")
                + ". Pick a non-empty subset of the allowed CPUs."
            )
        kept = set(keep)
        cores = tuple(
            replace(core, cpus=tuple(c for c in core.cpus if c in kept))
            for core in self.cores
            if kept.intersection(core.cpus)
        )
        nodes = {
            node: tuple(c for c in node_cpus if c in kept)
            for node, node_cpus in self.numa_nodes.items()
            if kept.intersection(node_cpus)
        }
        return replace(
            self, allowed_cpus=keep, cores=cores, numa_nodes=nodes, quota_cpus=quota_cpus
        )

    def describe(self) -> str:
        """One line a person can read: CPUs, quota, topology, ISA, memory."""
        quota = f"quota {self.quota_cpus:g} CPUs" if self.quota_cpus is not None else "no quota"
        isa = " ".join(sorted(self.isa)) or "none detected"
        mem = self.memory_available_bytes
        memory = f"{mem / 2**30:.1f} GiB" if mem is not None else "unknown"
        nodes = max(1, len(self.numa_nodes))
        return (
            f"{_count(len(self.allowed_cpus), 'CPU')} allowed "
            f"({format_cpu_list(self.allowed_cpus)}) of {len(self.online_cpus)} online; {quota}; "
            f"{_count(self.physical_cores, 'physical core')}, {_count(self.sockets, 'socket')}, "
            f"{_count(self.threads_per_core, 'thread')}/core, {_count(nodes, 'NUMA node')}; "
            f"ISA {isa}; memory {memory}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view, including the derived counts."""
        return {
            "allowed_cpus": format_cpu_list(self.allowed_cpus),
            "online_cpus": format_cpu_list(self.online_cpus),
            "quota_cpus": self.quota_cpus,
            "usable_cpus": self.usable_cpus,
            "physical_cores": self.physical_cores,
            "sockets": self.sockets,
            "threads_per_core": self.threads_per_core,
            "numa_nodes": {str(k): format_cpu_list(v) for k, v in sorted(self.numa_nodes.items())},
            "isa": sorted(self.isa),
            "model_name": self.model_name,
            "memory_bytes": self.memory_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- readers


def read_online_cpus(paths: SystemPaths) -> tuple[int, ...] | None:
    """Online logical CPUs from ``sys_cpu/online``, or ``None`` when unreadable."""
    text = _read(paths.sys_cpu / "online")
    if text is None:
        return None
    try:
        return parse_cpu_list(text) or None
    except ValueError:
        return None


def read_cores(paths: SystemPaths, cpus: Sequence[int]) -> tuple[Core, ...] | None:
    """Group ``cpus`` into physical cores from ``cpuN/topology``; ``None`` if any is missing."""
    by_core: dict[tuple[int, int], list[int]] = {}
    for cpu in cpus:
        topo = paths.sys_cpu / f"cpu{cpu}" / "topology"
        socket = _read_int(topo / "physical_package_id")
        core_id = _read_int(topo / "core_id")
        if socket is None or core_id is None:
            return None
        by_core.setdefault((socket, core_id), []).append(cpu)
    return tuple(
        Core(socket, core_id, tuple(sorted(members)))
        for (socket, core_id), members in sorted(by_core.items(), key=lambda kv: min(kv[1]))
    )


def read_numa_nodes(paths: SystemPaths, cpus: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """NUMA node -> the given CPUs on it, from ``nodeN/cpulist`` (empty when absent)."""
    nodes: dict[int, tuple[int, ...]] = {}
    wanted = set(cpus)
    try:
        entries = sorted(paths.sys_node.iterdir())
    except OSError:
        return nodes
    for entry in entries:
        match = re.fullmatch(r"node(\d+)", entry.name)
        text = _read(entry / "cpulist") if match else None
        if text is None:
            continue
        try:
            on_node = tuple(c for c in parse_cpu_list(text) if c in wanted)
        except ValueError:
            continue
        if on_node:
            nodes[int(match.group(1))] = on_node  # type: ignore[union-attr]
    return nodes


def read_cpuinfo(paths: SystemPaths) -> tuple[str, frozenset[str]]:
    """Model name and the oneDNN-relevant ISA flags of the first CPU in ``/proc/cpuinfo``."""
    text = _read(paths.proc_cpuinfo) or ""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, frozenset(f for f in ISA_FLAGS if f in flags)


def read_memory_bytes(paths: SystemPaths) -> int | None:
    """``MemTotal`` from ``/proc/meminfo`` in bytes, or ``None``."""
    text = _read(paths.proc_meminfo) or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def _cgroup_dirs(paths: SystemPaths, controller: str | None) -> list[Path]:
    """Folders that may hold this process's limits, innermost first, for cgroup v2
    (``controller=None``) or for a v1 controller (``"cpu"``, ``"memory"``)."""
    text = _read(paths.proc_self_cgroup) or ""
    rel: str | None = None
    mounts: list[str] = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, cg_path = parts
        if controller is None and controllers == "":
            rel = cg_path
        elif controller is not None and controller in controllers.split(","):
            rel = cg_path
            mounts = [controllers, controller]
    if controller is None:
        mounts = [""]
    elif not mounts:
        mounts = [controller, "cpu,cpuacct", "cpuacct,cpu"] if controller == "cpu" else [controller]
    rel_parts = [p for p in (rel or "/").split("/") if p]
    dirs: list[Path] = []
    for mount in dict.fromkeys(mounts):
        base = paths.cgroup_root / mount if mount else paths.cgroup_root
        # Inside a container the cgroup namespace usually makes the process's own
        # cgroup the mount root, so walk from the full path up to the root.
        for depth in range(len(rel_parts), -1, -1):
            dirs.append(base.joinpath(*rel_parts[:depth]))
    return list(dict.fromkeys(dirs))


def read_cpu_quota(paths: SystemPaths) -> float | None:
    """Tightest CPU quota (in CPUs) over this process's cgroup and its ancestors.

    Reads cgroup v2 ``cpu.max`` (``"150000 100000"``; ``"max ..."`` is no quota) and
    cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota ``-1`` is none).

    Example:
        >>> read_cpu_quota(SystemPaths.under("/nonexistent")) is None
        True
    """
    quotas: list[float] = []
    for folder in _cgroup_dirs(paths, None):
        text = _read(folder / "cpu.max")
        if text is None:
            continue
        fields = text.split()
        if len(fields) >= 2 and fields[0] != "max":
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                quotas.append(quota / period)
    for folder in _cgroup_dirs(paths, "cpu"):
        quota = _read_int(folder / "cpu.cfs_quota_us")
        period = _read_int(folder / "cpu.cfs_period_us")
        if quota is not None and period and quota > 0:
            quotas.append(quota / period)
    return min(quotas) if quotas else None


def read_memory_limit(paths: SystemPaths) -> int | None:
    """Tightest container memory limit in bytes (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), ignoring "unlimited" sentinels."""
    limits: list[int] = []
    for folder in _cgroup_dirs(paths, None):
        value = _read_int(folder / "memory.max")
        if value is not None and value > 0:
            limits.append(value)
    for folder in _cgroup_dirs(paths, "memory"):
        value = _read_int(folder / "memory.limit_in_bytes")
        # v1 reports "no limit" as a huge page-aligned number near 2**63.
        if value is not None and 0 < value < 2**60:
            limits.append(value)
    return min(limits) if limits else None


def _os_affinity() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def detect(
    paths: SystemPaths | None = None,
    *,
    affinity: Iterable[int] | None = None,
) -> Hardware:
    """Detect the CPUs, quota, topology, ISA and memory available to this process.

    Args:
        paths: where to read ``/sys`` and ``/proc`` (default: the real ones).
        affinity: the CPUs this process may run on (default: ``os.sched_getaffinity(0)``).

    Returns:
        A :class:`Hardware`; anything unreadable is replaced by what :mod:`os` reports,
        with a line in ``notes``.

    Example:
        >>> hw = detect(affinity=[0])
        >>> hw.allowed_cpus, hw.compute_threads
        ((0,), 1)
    """
    paths = paths or SystemPaths()
    notes: list[str] = []
    allowed = tuple(sorted(set(affinity))) if affinity is not None else _os_affinity()
    if not allowed:
        raise ValueError("The affinity mask is empty; pass at least one CPU.")
    online = read_online_cpus(paths)
    if online is None:
        notes.append(f"{paths.sys_cpu / 'online'} unreadable: online CPUs assumed = allowed CPUs")
        online = tuple(sorted(set(allowed) | set(range(os.cpu_count() or 0))))
    cores = read_cores(paths, allowed)
    if cores is None:
        notes.append(
            f"{paths.sys_cpu}/cpuN/topology unreadable: each allowed CPU counted as a core"
        )
        cores = ()
    numa = read_numa_nodes(paths, allowed)
    if not numa:
        notes.append(f"{paths.sys_node} unreadable: one NUMA node assumed")
    model, isa = read_cpuinfo(paths)
    if not model and not isa:
        notes.append(f"{paths.proc_cpuinfo} unreadable: ISA flags unknown")
    memory = read_memory_bytes(paths)
    if memory is None:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            notes.append(f"{paths.proc_meminfo} unreadable: memory from os.sysconf")
        except (ValueError, OSError, AttributeError):
            notes.append(f"{paths.proc_meminfo} unreadable: memory unknown")
    return Hardware(
        allowed_cpus=allowed,
        online_cpus=online,
        quota_cpus=read_cpu_quota(paths),
        cores=cores,
        numa_nodes=numa,
        isa=isa,
        model_name=model,
        memory_bytes=memory,
        memory_limit_bytes=read_memory_limit(paths),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- splitting


def split_cpus(hardware: Hardware, parts: int) -> list[tuple[int, ...]]:
    """Split the usable CPUs into ``parts`` disjoint sets for concurrent jobs.

    Whole physical cores are handed out (hyper-thread siblings stay together), in
    socket order so a job's cores share a socket when the counts allow. When the
    quota is below the allowed CPUs, only ``compute_threads`` cores are used. With
    more parts than cores, cores are split into their hyper-threads.

    Args:
        hardware: the machine (usually :func:`detect`'s result).
        parts: how many disjoint sets; at least 1 and at most the usable CPUs.

    Returns:
        ``parts`` non-empty, disjoint, sorted tuples of logical CPUs.

    Raises:
        ValueError: ``parts`` is below 1 or above the number of usable CPUs.

    Example:
        >>> hw = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3))
        >>> split_cpus(hw, 2)
        [(0, 1), (2, 3)]
    """
    cores = sorted(hardware.cores, key=lambda c: (c.socket, min(c.cpus)))
    if hardware.quota_cpus is not None:
        cores = cores[: hardware.compute_threads]
    units: list[tuple[int, ...]] = [c.cpus for c in cores]
    if parts > len(units):
        units = [(cpu,) for core in cores for cpu in core.cpus]
    if parts < 1 or parts > len(units):
        raise ValueError(
            f"Cannot split {len(units)} usable CPUs ({hardware.describe()}) into {parts} "
            f"disjoint sets: use between 1 and {len(units)} parts (e.g. n_jobs={len(units)})."
        )
    base, extra = divmod(len(units), parts)
    out: list[tuple[int, ...]] = []
    start = 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(tuple(sorted(cpu for unit in units[start : start + size] for cpu in unit)))
        start += size
    return out


# --------------------------------------------------------------------------- allocators

#: Allocator name -> shared-library file names to look for, preferred first.
ALLOCATOR_LIBRARIES: Mapping[str, tuple[str, ...]] = {
    "tcmalloc": (
        "libtcmalloc_minimal.so.4",
        "libtcmalloc.so.4",
        "libtcmalloc_minimal.so",
        "libtcmalloc.so",
    ),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so.1", "libjemalloc.so"),
}

_DEFAULT_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
    "/opt/conda/lib",
)


def _ldconfig_paths() -> dict[str, str]:
    """Library file name -> path from ``ldconfig -p`` (empty when unavailable)."""
    for exe in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):
        try:
            out = subprocess.run(
                [exe, "-p"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        found: dict[str, str] = {}
        for line in out.splitlines():
            match = re.match(r"\s*(\S+)\s.*=>\s*(\S+)", line)
            if match:
                found.setdefault(match.group(1), match.group(2))
        return found
    return {}


def default_library_dirs() -> tuple[str, ...]:
    """Folders searched for allocator libraries: the environment's lib, then system dirs."""
    import sys

    return (os.path.join(sys.prefix, "lib"), *_DEFAULT_LIB_DIRS)


def find_allocator(
    name: str,
    *,
    search_dirs: Sequence[str | os.PathLike[str]] | None = None,
    ldconfig: Callable[[], Mapping[str, str]] | None = _ldconfig_paths,
    libraries: Mapping[str, Sequence[str]] = ALLOCATOR_LIBRARIES,
) -> Path | None:
    """Find the shared library of allocator ``name`` (``"tcmalloc"`` or ``"jemalloc"``).

    Args:
        name: a key of ``libraries``.
        search_dirs: folders to look in (default: :func:`default_library_dirs`).
        ldconfig: returns ``{file name: path}`` from the linker cache; ``None`` to skip it.
        libraries: allocator name -> candidate file names.

    Returns:
        The library's path, or ``None`` when it is not installed.

    Raises:
        ValueError: ``name`` is not a known allocator.

    Example:
        >>> find_allocator("jemalloc", search_dirs=[], ldconfig=None) is None
        True
    """
    if name not in libraries:
        raise ValueError(
            f"Unknown allocator {name!r}; known: {', '.join(sorted(libraries))} "
            "(or give a path to a shared library)."
        )
    dirs = default_library_dirs() if search_dirs is None else tuple(search_dirs)
    cache = ldconfig() if ldconfig is not None else {}
    for filename in libraries[name]:
        for folder in dirs:
            candidate = Path(folder) / filename
            if candidate.is_file():
                return candidate
        if filename in cache and Path(cache[filename]).is_file():
            return Path(cache[filename])
    return None
