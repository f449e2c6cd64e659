"""A tiny Hydra app for the launcher tests: reports the process, CPUs, env and TF threads.

Run as a script (``python tests/apps/hw_app.py -m hydra/launcher=recsys x=1,2``) or call
:func:`task` through Hydra's API. Each job writes ``report.json`` into its output dir
and returns a small dict.
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


def task(cfg: DictConfig) -> dict:
    from recsys.launch import apply_hardware_plan, configure_tensorflow_threads

    out = Path(HydraConfig.get().runtime.output_dir)
    start = time.time()
    plan = apply_hardware_plan(cfg.hardware, run_dir=out, quiet=True)
    report = {
        "x": cfg.x,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "env": {k: os.environ.get(k) for k in REPORTED_ENV},
        "plan_intra": plan.intra_op_threads,
        "plan_inter": plan.inter_op_threads,
        "start": start,
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
    time.sleep(float(cfg.sleep))
    report["end"] = time.time()
    (out / "report.json").write_text(json.dumps(report))
    return {"x": cfg.x, "pid": os.getpid(), "intra": plan.intra_op_threads}


@hydra.main(config_path="conf", config_name="hw_app", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    return task(cfg)


if __name__ == "__main__":
    main()
