"""``python -m recsys.launch``: the CPU launcher's command line; the code is in
:mod:`recsys.hardware`.

Kept as a module because it is the documented command and because run directories
written before :mod:`recsys.hardware` existed saved ``hardware._target_:
recsys.launch.HardwareConfig`` in their ``config.yaml``: those runs must still resume.
New code imports from :mod:`recsys.hardware`.

Example:
    >>> from recsys.launch import HardwareConfig
    >>> from recsys.hardware import HardwareConfig as Current
    >>> HardwareConfig is Current
    True
"""

from __future__ import annotations

import sys

from recsys.hardware import (
    JEMALLOC_CONF,
    LAUNCHER_KEYS_VAR,
    REEXEC_VAR,
    HardwareConfig,
    Plan,
    Setting,
    apply_hardware_plan,
    configure_tensorflow_threads,
    main,
    make_plan,
    pin_to_cpus,
    without_launcher_values,
)

__all__ = [
    "JEMALLOC_CONF",
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

if __name__ == "__main__":
    sys.exit(main())
