"""Reports what TensorFlow got in this process, as one JSON line on stdout.

``python tf_child.py`` imports TensorFlow as any user script would (so only the
environment can reach it); ``python tf_child.py --apply '{"intra_op_threads": 1}'``
goes through ``apply_hardware_plan`` and ``configure_tensorflow_threads`` as
``recsys.train`` does.
"""

import json
import os
import sys
from pathlib import Path


def thread_names() -> dict[str, int]:
    counts: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        counts[name] = counts.get(name, 0) + 1
    return counts


def main() -> None:
    plan = None
    if sys.argv[1:2] == ["--apply"]:
        from recsys.hardware import apply_hardware_plan

        plan = apply_hardware_plan(json.loads(sys.argv[2]), quiet=True)
    from recsys._tf import tf

    configured = None
    if plan is not None:
        from recsys.hardware import configure_tensorflow_threads

        configured = list(configure_tensorflow_threads(plan))
    a = tf.random.normal([128, 128])
    tf.matmul(a, a).numpy()  # starts TensorFlow's thread pools
    report = {
        "pid": os.getpid(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "env": {
            k: os.environ.get(k)
            for k in (
                "OMP_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS",
                "KMP_BLOCKTIME",
                "KMP_AFFINITY",
                "TF_ENABLE_ONEDNN_OPTS",
            )
        },
        "configured": configured,
        "tf_intra": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter": tf.config.threading.get_inter_op_parallelism_threads(),
        # TensorFlow names the threads of its inter-op pool "tf_Compute".
        "tf_compute_threads": thread_names().get("tf_Compute", 0),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
