"""Detect what CPU and memory this process may use, from the kernel's own files.

Reads the allowed CPUs (affinity), ``/sys`` topology (cores, sockets, NUMA nodes),
``/proc/cpuinfo`` (model, ISA flags), ``/proc/meminfo`` and the container's cgroup
limits (CPU quota and memory, v1 and v2) into a :class:`~recsys.hardware.Hardware`.

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

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from recsys.hardware.machine import ISA_FLAGS, Core, Hardware, parse_cpu_list

__all__ = [
    "SystemPaths",
    "detect",
    "free_memory_bytes",
    "read_cpu_quota",
    "read_memory_limit",
]


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


# --------------------------------------------------------------------------- readers


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


def _cgroup_memory(paths: SystemPaths) -> list[tuple[int, int | None]]:
    """``(limit, working set)`` of every cgroup folder of this process with a memory
    limit: v2 ``memory.max`` / ``memory.current``, v1 ``memory.limit_in_bytes`` /
    ``memory.usage_in_bytes``. The working set leaves out inactive page cache (which
    the kernel reclaims before it hits the limit), as container runtimes count it."""
    found: list[tuple[int, int | None]] = []
    for folder in _cgroup_dirs(paths, None):
        limit = _read_int(folder / "memory.max")  # "max" (no limit) reads as None
        if limit is not None and limit > 0:
            usage = _read_int(folder / "memory.current")
            found.append((limit, _working_set(usage, folder / "memory.stat", "inactive_file")))
    for folder in _cgroup_dirs(paths, "memory"):
        limit = _read_int(folder / "memory.limit_in_bytes")
        # v1 reports "no limit" as a huge page-aligned number near 2**63.
        if limit is not None and 0 < limit < 2**60:
            usage = _read_int(folder / "memory.usage_in_bytes")
            found.append(
                (limit, _working_set(usage, folder / "memory.stat", "total_inactive_file"))
            )
    return found


def _working_set(usage: int | None, stat: Path, inactive_key: str) -> int | None:
    if usage is None:
        return None
    match = re.search(rf"^{inactive_key}\s+(\d+)", _read(stat) or "", re.MULTILINE)
    return max(0, usage - int(match.group(1))) if match else usage


def read_memory_limit(paths: SystemPaths) -> int | None:
    """Tightest container memory limit in bytes (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), ignoring "unlimited" sentinels.

    Example:
        >>> read_memory_limit(SystemPaths.under("/nonexistent")) is None
        True
    """
    limits = [limit for limit, _ in _cgroup_memory(paths)]
    return min(limits) if limits else None


def free_memory_bytes(paths: SystemPaths | None = None) -> int | None:
    """Memory this process can still allocate now, in bytes.

    The kernel's ``MemAvailable`` (free memory plus reclaimable cache), capped by the
    container's room: for every cgroup limit over this process, the limit minus what
    the cgroup uses now. Without ``/proc/meminfo`` it falls back to ``os.sysconf``'s
    available pages. Use it to decide whether a job fits before starting it;
    :attr:`Hardware.memory_available_bytes` is the total, not what is free now.

    Args:
        paths: where to read ``/proc`` and the cgroups (default: the real ones).

    Returns:
        Bytes, or ``None`` when neither the kernel nor :mod:`os` says.

    Example:
        >>> free_memory_bytes() > 0
        True
    """
    paths = paths or SystemPaths()
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", _read(paths.proc_meminfo) or "", re.MULTILINE)
    free: int | None = int(match.group(1)) * 1024 if match else None
    if free is None:
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            free = None
    room = [limit - used if used is not None else limit for limit, used in _cgroup_memory(paths)]
    values = [v for v in (free, *room) if v is not None]
    return max(0, min(values)) if values else None


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
