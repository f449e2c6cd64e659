"""The ``hydra/launcher=recsys`` plugin: separate processes, disjoint cores, own plans."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.recsys_launcher._job import TaskRef, resolve_task, task_reference
from hydra_plugins.recsys_launcher.recsys_launcher import RecsysLauncher, job_plan, job_slots
from recsys.hardware import LAUNCHER_KEYS_VAR, Core, Hardware

REPO = Path(__file__).parents[1]
APP = Path(__file__).parent / "apps" / "hw_app.py"
# The app's module name follows how pytest imported this file: "tests.apps.hw_app" when
# tests/ is a package, "apps.hw_app" when tests/ itself is on sys.path.
APP_MODULE = f"{__package__}.apps.hw_app" if __package__ else "apps.hw_app"
SERVER = Hardware(
    allowed_cpus=tuple(range(8)),
    online_cpus=tuple(range(8)),
    cores=(Core(0, 0, (0, 4)), Core(0, 1, (1, 5)), Core(1, 0, (2, 6)), Core(1, 1, (3, 7))),
)
ALLOWED = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs 2 allowed CPUs")


def clean_env() -> dict[str, str]:
    """This environment without any plan a launcher around pytest may have set."""
    drop = {k for k in os.environ.get(LAUNCHER_KEYS_VAR, "").split(",") if k}
    drop |= {LAUNCHER_KEYS_VAR, "LD_PRELOAD"}
    drop |= {"OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def multirun(
    tmp_path: Path, *overrides: str, sweep_dir: str | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(APP),
            "-m",
            "hydra/launcher=recsys",
            f"hydra.searchpath=[file://{REPO / 'conf'}]",
            f"hydra.sweep.dir={sweep_dir or tmp_path / 'sweep'}",
            "hardware.allocator=none",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
    )


def reports(tmp_path: Path, pattern: str = "sweep/*/report.json") -> list[dict]:
    found = sorted(tmp_path.glob(pattern), key=lambda p: int(p.parent.name))
    return [json.loads(p.read_text()) for p in found]


# --------------------------------------------------------------------------- units


def test_plugin_is_discovered_and_registered() -> None:
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    # Hydra's scan re-executes plugin modules, so compare names, not class objects.
    names = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    assert f"{RecsysLauncher.__module__}.RecsysLauncher" in names
    assert "recsys.yaml" in ConfigStore.instance().list("hydra/launcher")


def test_job_slots_are_disjoint_whole_cores() -> None:
    assert job_slots(SERVER, 2, 10) == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert job_slots(SERVER, None, 10) == [(0, 4), (1, 5), (2, 6), (3, 7)]  # one per core
    assert job_slots(SERVER, 4, 1) == [tuple(range(8))]  # a lone job gets every CPU
    with pytest.warns(RuntimeWarning, match=r"n_jobs=9 is more than the 8 CPUs .*running 8"):
        slots = job_slots(SERVER, 9, 20)
    assert len(slots) == 8 and len({c for s in slots for c in s}) == 8
    with pytest.raises(ValueError, match="n_jobs must be a positive integer or null; received 0"):
        job_slots(SERVER, 0, 3)


def test_job_plan_follows_the_share_and_the_jobs_own_hardware_node() -> None:
    cfg = OmegaConf.create({"hardware": {"inter_op_threads": 2, "allocator": "none"}})
    plan = job_plan(cfg, "hardware", SERVER, (2, 3, 6, 7), shares=2)
    assert plan.cpus == (2, 3, 6, 7)
    assert (plan.intra_op_threads, plan.inter_op_threads) == (2, 2)
    assert plan.env()["KMP_AFFINITY"] == "granularity=fine,compact,1,0"
    quota = Hardware(allowed_cpus=(0, 1, 2, 3), online_cpus=(0, 1, 2, 3), quota_cpus=2.0)
    plan = job_plan(OmegaConf.create({}), "hardware", quota, (2, 3), shares=2)
    assert plan.intra_op_threads == 1  # a 2-CPU quota shared by 2 jobs: one thread each
    with pytest.raises(ValueError, match="intra_op_threads must be at least 1"):
        job_plan(
            OmegaConf.create({"hardware": {"intra_op_threads": 0}}), "hardware", SERVER, (0,), 1
        )


def test_task_reference_unwraps_hydra_main_and_rejects_lambdas() -> None:
    app = importlib.import_module(APP_MODULE)
    ref = task_reference(app.main.__wrapped__)
    assert ref == TaskRef(module=APP_MODULE, qualname="main", unwrap=1)
    assert resolve_task(ref) is app.main.__wrapped__
    assert task_reference(app.task) == TaskRef(module=APP_MODULE, qualname="task", unwrap=0)
    with pytest.raises(ValueError, match="define it at module level"):
        task_reference(lambda cfg: cfg)


# --------------------------------------------------------------------------- sweeps


@needs_two_cpus
def test_two_job_multirun_runs_separate_processes_on_disjoint_cpus(tmp_path: Path) -> None:
    proc = multirun(tmp_path, "hydra.launcher.n_jobs=2", "x=1,2", "wait_for_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = reports(tmp_path)
    assert [j["x"] for j in jobs] == [1, 2]
    # Separate processes, both children of the Hydra process, neither of them pytest.
    pids = {j["pid"] for j in jobs}
    assert len(pids) == 2 and os.getpid() not in pids
    assert len({j["ppid"] for j in jobs}) == 1
    # Disjoint CPU sets, each one of this machine's allowed CPUs.
    cpus = [set(j["affinity"]) for j in jobs]
    assert cpus[0].isdisjoint(cpus[1])
    assert cpus[0] | cpus[1] <= set(ALLOWED)
    # Each job's plan is its share.
    for job in jobs:
        share = len(job["affinity"])
        assert job["plan_intra"] == share
        assert job["env"]["OMP_NUM_THREADS"] == str(share)
        assert job["env"]["TF_NUM_INTRAOP_THREADS"] == str(share)
        # The user's TensorFlow log level (conftest sets one) reaches every job.
        assert job["env"]["TF_CPP_MIN_LOG_LEVEL"] == os.environ["TF_CPP_MIN_LOG_LEVEL"]
    # n_jobs=2: they ran at the same time. Each job, while still running, saw the other's
    # start marker: so each started before the other ended. Run one after the other,
    # the first job would never see the second's marker.
    assert [j["started_jobs"] for j in jobs] == [[1, 2], [1, 2]]
    record = json.loads((tmp_path / "sweep" / "0" / "hardware.json").read_text())
    assert record["detected"]["allowed_cpus"] == ",".join(map(str, jobs[0]["affinity"]))


@needs_two_cpus
@pytest.mark.slow  # two TensorFlow imports in fresh processes
def test_each_sweep_jobs_tensorflow_gets_its_share(tmp_path: Path) -> None:
    proc = multirun(tmp_path, "hydra.launcher.n_jobs=2", "x=1,2", "use_tf=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = reports(tmp_path)
    assert [j["x"] for j in jobs] == [1, 2]
    assert set(jobs[0]["affinity"]).isdisjoint(jobs[1]["affinity"])
    for job in jobs:
        share = len(job["affinity"])
        assert job["plan_intra"] == share
        assert (job["tf_intra"], job["tf_inter"]) == (share, 1)
        assert job["tf_compute_threads"] == 1
        assert job["env"]["OMP_NUM_THREADS"] == str(share)
        assert job["env"]["TF_NUM_INTRAOP_THREADS"] == str(share)


def test_jobs_get_their_own_thread_counts(tmp_path: Path) -> None:
    # The sweep dir holds a ${now:} interpolation: every job must resolve it as Hydra's
    # process did (the resolver cache travels with the job's config), not at its own start.
    sweep_dir = str(tmp_path / "sweep" / "${now:%H-%M-%S_%f}")
    proc = multirun(
        tmp_path, "hydra.launcher.n_jobs=1", "hardware.intra_op_threads=1,2", sweep_dir=sweep_dir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (timestamped,) = (tmp_path / "sweep").iterdir()
    jobs = reports(tmp_path, f"sweep/{timestamped.name}/*/report.json")
    assert len(jobs) == 2
    assert [j["env"]["TF_NUM_INTRAOP_THREADS"] for j in jobs] == ["1", "2"]
    assert [j["plan_intra"] for j in jobs] == [1, 2]
    assert all(j["affinity"] == ALLOWED for j in jobs)  # one at a time: all CPUs each
    assert jobs[0]["pid"] != jobs[1]["pid"]


def test_a_failing_job_is_reported(tmp_path: Path) -> None:
    proc = multirun(tmp_path, "x=1,2", "fail=true")
    assert proc.returncode != 0
    assert "ValueError: job asked to fail (x=1)" in proc.stderr
    assert "Traceback in the job's process" in proc.stderr  # the child's traceback came back


def test_a_crashing_job_is_reported(tmp_path: Path) -> None:
    proc = multirun(tmp_path, "x=1", "crash=true")
    assert proc.returncode != 0
    assert "JobCrashedError" in proc.stderr and "exited with status 3" in proc.stderr


@pytest.fixture
def hydra_state():
    import logging

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    state = Singleton.get_state()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    GlobalHydra.instance().clear()
    Singleton.set_state(state)
    # The launcher configures Hydra's logging, as the basic launcher does; undo it here.
    root.handlers[:] = handlers
    root.setLevel(level)


def in_process_multirun(tmp_path: Path, task, *overrides: str):
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name="hw_app", config_search_path=create_config_search_path(str(APP.parent / "conf"))
    )
    return hydra.multirun(
        config_name="hw_app",
        task_function=task,
        overrides=[
            "hydra/launcher=recsys",
            f"hydra.searchpath=[file://{REPO / 'conf'}]",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hardware.allocator=none",
            *overrides,
        ],
        with_log_configuration=False,
    )


def test_return_values_come_back_to_hydra(tmp_path: Path, hydra_state) -> None:
    from hydra.core.utils import JobStatus

    app = importlib.import_module(APP_MODULE)
    (batch,) = in_process_multirun(tmp_path, app.task, "x=3,4", "hydra.launcher.n_jobs=2")
    assert [r.status for r in batch] == [JobStatus.COMPLETED] * 2
    values = [r.return_value for r in batch]
    assert [v["x"] for v in values] == [3, 4]
    assert os.getpid() not in {v["pid"] for v in values}
    assert [r.overrides[-1] for r in batch] == ["x=3", "x=4"]
    assert batch[0].hydra_cfg.hydra.job.num == 0 and batch[1].hydra_cfg.hydra.job.num == 1
    assert batch[0].task_name == "hw_app"


def test_failed_job_exception_reaches_hydra(tmp_path: Path, hydra_state) -> None:
    app = importlib.import_module(APP_MODULE)
    with pytest.raises(ValueError, match=r"job asked to fail \(x=5\)") as info:
        in_process_multirun(tmp_path, app.task, "x=5", "fail=true")
    assert any("Traceback in the job's process" in n for n in getattr(info.value, "__notes__", []))


def test_basic_launcher_multirun_is_never_restarted_by_the_preload(tmp_path: Path) -> None:
    # With Hydra's basic launcher the jobs share one process: a preload cannot be applied
    # by re-executing it (that would restart the sweep), so the plan warns instead.
    maps = Path("/proc/self/maps").read_text().split()
    lib = next((p for p in maps if "/libc.so" in p or "/libm.so" in p), None)
    if lib is None:
        pytest.skip("no system library found in /proc/self/maps")
    proc = subprocess.run(
        [
            sys.executable,
            str(APP),
            "-m",
            f"hydra.searchpath=[file://{REPO / 'conf'}]",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"hardware.allocator={lib}",
            "x=1,2",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "in-process Hydra multirun" in proc.stderr
    jobs = reports(tmp_path)
    assert [j["x"] for j in jobs] == [1, 2]
    assert jobs[0]["pid"] == jobs[1]["pid"]  # one process, not restarted
    assert (
        proc.stdout.count("Launching 2 jobs locally")
        + proc.stderr.count("Launching 2 jobs locally")
        == 1
    )
