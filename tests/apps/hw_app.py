"""A tiny Hydra app for the launcher tests: reports the process, CPUs, env and TF threads.

Run as a script (``python tests/apps/hw_app.py -m hydra/launcher=recsys x=1,2``) or call
:func:`task` through Hydra's API. Each job writes ``report.json`` into its output dir
and returns a small dict.

With ``wait_for_jobs=N`` each job leaves a ``started`` marker in its output dir and
waits until N jobs of the sweep have left one (or ``wait_timeout`` seconds pass); its
report lists the jobs it saw started, so a test proves that jobs ran at the same time
from events, not from clock readings.
"""

import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

REPORTED_ENV = (
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "LD_PRELOAD",
    "RECSYS_LAUNCH_SET",
    "TF_CPP_MIN_LOG_LEVEL",
)


def thread_names() -> dict[str, int]:
    """How many threads of this process carry each name (TF names its inter-op pool)."""
    counts: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        counts[name] = counts.get(name, 0) + 1
    return counts


def started_jobs(out: Path, x: int, wait_for: int, timeout: float) -> list[int]:
    """Leave this job's start marker, wait for ``wait_for`` markers, return their xs."""
    (out / "started").write_text(str(x))
    deadline = time.monotonic() + timeout
    while True:
        seen = sorted(int(p.read_text()) for p in out.parent.glob("*/started"))
        if len(seen) >= wait_for or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def task(cfg: DictConfig) -> dict:
    from recsys.hardware import apply_hardware_plan, configure_tensorflow_threads

    out = Path(HydraConfig.get().runtime.output_dir)
    plan = apply_hardware_plan(cfg.hardware, run_dir=out, quiet=True)
    report = {
        "x": cfg.x,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "env": {k: os.environ.get(k) for k in REPORTED_ENV},
        "plan_intra": plan.intra_op_threads,
        "plan_inter": plan.inter_op_threads,
    }
    if cfg.use_tf:
        from recsys._tf import tf

        configure_tensorflow_threads(plan)
        a = tf.random.normal([64, 64])
        tf.matmul(a, a).numpy()
        report["tf_intra"] = tf.config.threading.get_intra_op_parallelism_threads()
        report["tf_inter"] = tf.config.threading.get_inter_op_parallelism_threads()
        report["tf_compute_threads"] = thread_names().get("tf_Compute", 0)
    if cfg.fail:
        raise ValueError(f"job asked to fail (x={cfg.x})")
    if cfg.crash:
        os._exit(3)
    if cfg.wait_for_jobs:
        report["started_jobs"] = started_jobs(
            out, cfg.x, int(cfg.wait_for_jobs), float(cfg.wait_timeout)
        )
    (out / "report.json").write_text(json.dumps(report))
    return {"x": cfg.x, "pid": os.getpid(), "intra": plan.intra_op_threads}


@hydra.main(config_path="conf", config_name="hw_app", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    return task(cfg)


if __name__ == "__main__":
    main()
