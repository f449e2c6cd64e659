"""Apply a hardware plan to this process: environment, CPU pinning, allocator re-exec,
TensorFlow's thread pools.

The plan itself (:mod:`recsys.hardware.plan`) changes nothing; everything that mutates
the running process lives here. Order matters, because TensorFlow reads its threading
variables once, when it starts: call :func:`apply_hardware_plan` before anything imports
TensorFlow, then import it, then :func:`configure_tensorflow_threads`.

This module imports TensorFlow only inside :func:`configure_tensorflow_threads`.

Example::

    from recsys.hardware import apply_hardware_plan, configure_tensorflow_threads

    plan = apply_hardware_plan({"allocator": "none"}, run_dir="runs/x")  # before TF
    from recsys._tf import tf  # only now
    configure_tensorflow_threads(plan)
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from recsys.hardware.config import HardwareConfig
from recsys.hardware.machine import Hardware
from recsys.hardware.plan import Plan, make_plan

__all__ = [
    "REEXEC_VAR",
    "apply_hardware_plan",
    "configure_tensorflow_threads",
    "pin_to_cpus",
]

#: Set by a process that re-executed itself to apply LD_PRELOAD: JSON with its pid (exec
#: keeps the pid) and the preload variables' values before, so it re-executes at most once.
REEXEC_VAR = "RECSYS_LAUNCH_REEXEC"


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
            from recsys.hardware import apply_hardware_plan, configure_tensorflow_threads

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
    return replace(plan, warnings=(*plan.warnings, message))


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
