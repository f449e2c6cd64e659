"""Records each start of this process, then applies a plan that preloads ``argv[2]``.

``python reexec_child.py RECORD_FILE ALLOCATOR``: every process start appends one JSON
line to RECORD_FILE, so a test can count how often the process (re-)executed.
"""

import json
import os
import sys
import warnings
from pathlib import Path


def main() -> None:
    record, allocator = sys.argv[1], sys.argv[2]
    with open(record, "a") as f:
        f.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "LD_PRELOAD": os.environ.get("LD_PRELOAD"),
                    "marker": os.environ.get("RECSYS_LAUNCH_REEXEC"),
                }
            )
            + "\n"
        )
    from recsys.hardware import apply_hardware_plan

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = apply_hardware_plan({"allocator": allocator, "intra_op_threads": 1}, quiet=True)
    maps = Path("/proc/self/maps").read_text()
    print(
        json.dumps(
            {
                "loaded": Path(allocator).name in maps,
                "LD_PRELOAD": os.environ.get("LD_PRELOAD"),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "warnings": [str(w.message) for w in caught],
                "plan_warnings": list(plan.warnings),
            }
        )
    )


if __name__ == "__main__":
    main()
