"""The machine as one process sees it: CPUs, physical cores, sockets, NUMA nodes, quota.

Plain data, no I/O: :func:`recsys.hardware.detect` builds a :class:`Hardware` from the
kernel's files, tests build one directly, and the plan reads only this. Also the
kernel's CPU-list notation (``"0-3,8"``) and the split of a machine's cores between
concurrent jobs.

Example:
    >>> from recsys.hardware import Core, Hardware, split_cpus
    >>> hw = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3),
    ...               cores=tuple(Core(0, c, (c,)) for c in range(4)))
    >>> hw.physical_cores, split_cpus(hw, 2)
    (4, [(0, 1), (2, 3)])
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Core", "Hardware", "format_cpu_list", "parse_cpu_list", "split_cpus"]

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


# --------------------------------------------------------------------------- CPU lists


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
