"""What a user asks of the hardware plan: :class:`HardwareConfig`, validated.

``conf/hardware/auto.yaml`` builds one (``_target_: recsys.hardware.HardwareConfig``),
and so does ``python -m recsys.launch`` from its options. ``None`` (``null`` in YAML)
means "decide from the CPU"; :func:`recsys.hardware.make_plan` does the deciding.

Example:
    >>> from recsys.hardware import HardwareConfig
    >>> HardwareConfig(intra_op_threads="2", allocator="none")
    HardwareConfig(intra_op_threads=2, inter_op_threads=None, omp_num_threads=None, allocator='none', kmp_affinity=None, kmp_blocktime=None, onednn_opts=None, cpus=None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from recsys.hardware.allocators import ALLOCATOR_LIBRARIES
from recsys.hardware.machine import parse_cpu_list

__all__ = ["ALLOCATOR_CHOICES", "HardwareConfig"]

ALLOCATOR_CHOICES = ("auto", "none", *ALLOCATOR_LIBRARIES)


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

    It mirrors ``conf/hardware/auto.yaml`` and the ``python -m recsys.launch``
    command-line options.

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
