"""CPU hardware for TensorFlow training: detect it, plan threads for it, apply the plan.

One module per job, all importable before TensorFlow (none imports it at import time,
since the plan must be in place before TensorFlow starts):

* :mod:`~recsys.hardware.machine`: :class:`Hardware` and :class:`Core` (the machine as
  plain data), CPU lists, :func:`split_cpus` for concurrent jobs;
* :mod:`~recsys.hardware.detection`: :func:`detect` reads affinity, ``/sys``, ``/proc``
  and cgroup limits (:class:`SystemPaths` makes the files injectable);
  :func:`free_memory_bytes`;
* :mod:`~recsys.hardware.allocators`: :func:`find_allocator` (tcmalloc, jemalloc);
* :mod:`~recsys.hardware.config`: :class:`HardwareConfig`, the validated requests
  (``conf/hardware/auto.yaml``);
* :mod:`~recsys.hardware.plan`: :func:`make_plan` decides a :class:`Plan` and changes
  nothing;
* :mod:`~recsys.hardware.process`: :func:`apply_hardware_plan` (environment, pinning,
  allocator re-exec) and :func:`configure_tensorflow_threads`;
* :mod:`~recsys.hardware.cli`: ``python -m recsys.launch``.

Example:
    >>> from recsys.hardware import Hardware, make_plan
    >>> hw = Hardware(allowed_cpus=(0, 1), online_cpus=(0, 1))
    >>> make_plan({"allocator": "none"}, hw, environ={}).intra_op_threads
    2
"""

from __future__ import annotations

from recsys.hardware.allocators import ALLOCATOR_LIBRARIES, default_library_dirs, find_allocator
from recsys.hardware.cli import main
from recsys.hardware.config import ALLOCATOR_CHOICES, HardwareConfig
from recsys.hardware.detection import (
    SystemPaths,
    detect,
    free_memory_bytes,
    read_cpu_quota,
    read_memory_limit,
)
from recsys.hardware.machine import Core, Hardware, format_cpu_list, parse_cpu_list, split_cpus
from recsys.hardware.plan import (
    JEMALLOC_CONF,
    LAUNCHER_KEYS_VAR,
    SETTING_HELP,
    Plan,
    Setting,
    make_plan,
    without_launcher_values,
)
from recsys.hardware.process import (
    REEXEC_VAR,
    apply_hardware_plan,
    configure_tensorflow_threads,
    pin_to_cpus,
)

__all__ = [
    "ALLOCATOR_CHOICES",
    "ALLOCATOR_LIBRARIES",
    "JEMALLOC_CONF",
    "LAUNCHER_KEYS_VAR",
    "REEXEC_VAR",
    "SETTING_HELP",
    "Core",
    "Hardware",
    "HardwareConfig",
    "Plan",
    "Setting",
    "SystemPaths",
    "apply_hardware_plan",
    "configure_tensorflow_threads",
    "default_library_dirs",
    "detect",
    "find_allocator",
    "format_cpu_list",
    "free_memory_bytes",
    "main",
    "make_plan",
    "parse_cpu_list",
    "pin_to_cpus",
    "read_cpu_quota",
    "read_memory_limit",
    "split_cpus",
    "without_launcher_values",
]
