"""Hydra launcher that runs sweep jobs in parallel processes on disjoint CPU cores.

Select it with ``hydra/launcher=recsys``::

    python -m recsys.train -m hydra/launcher=recsys hydra.launcher.n_jobs=2 \\
        optimizer.learning_rate=0.01,0.1

Each job runs in a fresh Python process (see :mod:`hydra_plugins.recsys_launcher._job`),
``n_jobs`` at a time. The allowed CPUs are split into ``n_jobs`` disjoint sets of whole
cores (:func:`recsys.hardware.split_cpus`); a job's process is pinned to its set and
started with a hardware plan made for it (:func:`recsys.hardware.make_plan`): thread
counts for its share, plus whatever the job's own ``hardware`` config node asks. Each
job's :class:`~hydra.core.utils.JobReturn` (status and return value) comes back to Hydra
as with the basic launcher; a job that raises or whose process dies is returned as
FAILED, and Hydra's sweeper then reports it.
"""

import logging
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.recsys_launcher._job import (
    JobCrashedError,
    picklable_singletons,
    task_reference,
    write_payload,
)
from recsys.hardware import (
    Hardware,
    HardwareConfig,
    Plan,
    detect,
    format_cpu_list,
    make_plan,
    split_cpus,
    without_launcher_values,
)

log = logging.getLogger(__name__)


@dataclass
class RecsysLauncherConf:
    """``hydra/launcher=recsys`` settings.

    Args:
        n_jobs: jobs run at the same time, each on its own share of the cores;
            ``null``: as many as there are physical cores (at most the number of jobs).
        hardware_key: config node of each job whose fields override its hardware plan
            (see ``conf/hardware/auto.yaml``); a missing node means all defaults.
        python: interpreter for the job processes; ``null``: the one running Hydra.
    """

    _target_: str = "hydra_plugins.recsys_launcher.recsys_launcher.RecsysLauncher"
    # OmegaConf reads these annotations at runtime: keep them as Optional[...].
    n_jobs: Optional[int] = None  # noqa: UP045
    hardware_key: str = "hardware"
    python: Optional[str] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/launcher", name="recsys", node=RecsysLauncherConf, provider="recsys"
)


def job_slots(hardware: Hardware, n_jobs: int | None, n_pending: int) -> list[tuple[int, ...]]:
    """Disjoint CPU sets for the jobs that run at once.

    Args:
        hardware: the CPUs Hydra's process may use.
        n_jobs: requested concurrency (``None``: one job per physical core).
        n_pending: jobs in this batch (no more slots than jobs).

    Raises:
        ValueError: ``n_jobs`` below 1.

    Example:
        >>> hw = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3))
        >>> job_slots(hw, 2, 5)
        [(0, 1), (2, 3)]
    """
    if n_jobs is not None and (isinstance(n_jobs, bool) or int(n_jobs) < 1):
        raise ValueError(
            f"hydra.launcher.n_jobs must be a positive integer or null; received {n_jobs!r}."
        )
    wanted = hardware.compute_threads if n_jobs is None else int(n_jobs)
    limit = (
        hardware.compute_threads if hardware.quota_cpus is not None else len(hardware.allowed_cpus)
    )
    if wanted > limit:
        warnings.warn(
            f"hydra.launcher.n_jobs={wanted} is more than the {limit} CPUs this sweep may use "
            f"({format_cpu_list(hardware.allowed_cpus)}"
            + (f", quota {hardware.quota_cpus:g}" if hardware.quota_cpus is not None else "")
            + f"); running {limit} jobs at a time so each has its own CPU.",
            RuntimeWarning,
            stacklevel=2,
        )
        wanted = limit
    return split_cpus(hardware, max(1, min(wanted, n_pending)))


def job_plan(
    job_config: DictConfig, hardware_key: str, hardware: Hardware, cpus: Sequence[int], shares: int
) -> Plan:
    """The hardware plan of one job pinned to ``cpus`` (one of ``shares`` concurrent jobs).

    The job's own ``hardware`` node is honoured, except ``cpus``: the launcher decides
    those. Values the sweep's own launcher set are not inherited, since they were
    planned for all the CPUs.
    """
    node = OmegaConf.select(job_config, hardware_key) if hardware_key else None
    requested = HardwareConfig.from_mapping(node)
    if requested.cpus is not None and tuple(requested.cpus) != tuple(cpus):
        log.warning(
            f"{hardware_key}.cpus={format_cpu_list(requested.cpus)} is replaced by the "
            f"launcher's share {format_cpu_list(cpus)}; the recsys launcher assigns CPUs."
        )
    share = None if hardware.quota_cpus is None else hardware.quota_cpus / shares
    return make_plan(
        replace(requested, cpus=tuple(cpus)),
        replace(hardware, quota_cpus=share),
        environ=without_launcher_values(os.environ),
    )


class RecsysLauncher(Launcher):
    """Runs each job in its own process, ``n_jobs`` at a time, on disjoint cores.

    Example::

        python my_app.py -m hydra/launcher=recsys hydra.launcher.n_jobs=2 lr=0.1,0.01
    """

    def __init__(
        self, n_jobs: int | None = None, hardware_key: str = "hardware", python: str | None = None
    ) -> None:
        self.n_jobs = n_jobs
        self.hardware_key = hardware_key
        self.python = python or sys.executable
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not job_overrides:
            return []

        task_ref = task_reference(self.task_function)
        hardware = detect()
        slots = job_slots(hardware, self.n_jobs, len(job_overrides))
        log.info(
            f"recsys launcher: {len(job_overrides)} jobs, {len(slots)} at a time, on CPUs "
            + " | ".join(format_cpu_list(s) for s in slots)
        )
        free: queue.Queue = queue.Queue()
        for slot in slots:
            free.put(slot)
        singletons = picklable_singletons()

        # Compose every job's config here, in one thread, as the basic launcher does;
        # the worker threads below only start and wait for processes.
        configs = []
        for i, overrides in enumerate(job_overrides):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = initial_job_idx + i
                sweep_config.hydra.job.num = initial_job_idx + i
            configs.append(sweep_config)

        def run(idx: int, overrides: Sequence[str], sweep_config: DictConfig) -> JobReturn:
            cpus = free.get()
            try:
                return self._run_job(
                    idx, overrides, sweep_config, cpus, hardware, len(slots), task_ref, singletons
                )
            finally:
                free.put(cpus)

        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            futures = [
                pool.submit(run, initial_job_idx + i, overrides, configs[i])
                for i, overrides in enumerate(job_overrides)
            ]
            returns = [f.result() for f in futures]
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _run_job(
        self,
        idx: int,
        overrides: Sequence[str],
        sweep_config: DictConfig,
        cpus: tuple[int, ...],
        hardware: Hardware,
        shares: int,
        task_ref: Any,
        singletons: dict[Any, Any],
    ) -> JobReturn:
        lst = " ".join(filter_overrides(overrides))
        try:
            plan = job_plan(sweep_config, self.hardware_key, hardware, cpus, shares)
        except ValueError as err:
            log.error(f"\t#{idx} : {lst} : bad hardware settings: {err}")
            return _failed(sweep_config, overrides, err)
        log.info(
            f"\t#{idx} : {lst} : CPUs {format_cpu_list(cpus)}, "
            f"{plan.intra_op_threads} intra-op / {plan.inter_op_threads} inter-op threads"
        )
        with tempfile.TemporaryDirectory(prefix=f"recsys-job{idx}-") as tmp:
            payload, result = Path(tmp) / "payload.pkl", Path(tmp) / "result.pkl"
            write_payload(
                payload,
                task_ref=task_ref,
                sweep_config=sweep_config,
                singletons=singletons,
                sys_path=sys.path,
                cwd=os.getcwd(),
            )
            cmd = [
                self.python,
                "-m",
                "hydra_plugins.recsys_launcher._job",
                "--cpus",
                ",".join(map(str, cpus)),
                str(payload),
                str(result),
            ]
            # The plan was made without the values a launcher around Hydra set for all
            # the CPUs; the job's environment must not carry them either.
            code = subprocess.call(cmd, env=plan.environ(without_launcher_values(os.environ)))
            if result.exists():
                with open(result, "rb") as f:
                    ret: JobReturn = pickle.load(f)
                return ret
        reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        err = JobCrashedError(
            f"Job #{idx} ({lst or 'no overrides'}) on CPUs {format_cpu_list(cpus)} {reason} "
            "without reporting a result; its output is above and in its job directory."
        )
        log.error(str(err))
        return _failed(sweep_config, overrides, err)


def _failed(sweep_config: DictConfig, overrides: Sequence[str], err: BaseException) -> JobReturn:
    task_cfg = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
    ret = JobReturn(
        overrides=list(overrides),
        cfg=task_cfg,
        hydra_cfg=sweep_config,
        working_dir=None,
        task_name=str(OmegaConf.select(sweep_config, "hydra.job.name")),
        status=JobStatus.FAILED,
    )
    ret.return_value = err
    return ret
