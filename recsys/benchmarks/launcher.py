"""Training step time under the launcher's hardware plan vs TensorFlow's defaults.

Every configuration trains the same model (a ranking model: user and item Embedding
tables, an MLP, Adam; synthetic data, fixed seed) in a fresh process, so thread pools
and the allocator are set up exactly as each configuration says. Configurations run
interleaved (A B C A B C ...) in one invocation, and the report gives each one's
median step time and its ratio to TensorFlow's defaults measured in the same run.

A second part times a sweep of two jobs started together: with TensorFlow's defaults
(both jobs use every core) against the recsys launcher's split (disjoint cores, one
share of threads each, as ``hydra/launcher=recsys`` does).

Run::

    python -m recsys.benchmarks.launcher            # about a minute on 2 cores
    python -m recsys.benchmarks.launcher --steps 200 --repeats 5

This module imports TensorFlow only in its worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from recsys.hardware import LAUNCHER_KEYS_VAR, detect, format_cpu_list, make_plan, split_cpus

#: Variables the plan may set; removed for the "TensorFlow defaults" baseline.
PLAN_VARS = (
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "TF_ENABLE_ONEDNN_OPTS",
    "LD_PRELOAD",
    "MALLOC_CONF",
    LAUNCHER_KEYS_VAR,
)


# --------------------------------------------------------------------------- worker


def train_steps(steps: int, batch: int, warmup: int) -> dict[str, Any]:
    """Time ``steps`` training steps of the benchmark model in this process."""
    import numpy as np

    from recsys._tf import keras, tf

    n_users, n_items, dim = 50_000, 20_000, 64
    rng = np.random.default_rng(0)
    n = batch * 8
    users = rng.integers(0, n_users, n).astype("int32")
    items = rng.integers(0, n_items, n).astype("int32")
    labels = rng.random(n).astype("float32")

    user_in = keras.Input((), dtype="int32", name="user")
    item_in = keras.Input((), dtype="int32", name="item")
    u = keras.layers.Embedding(n_users, dim)(user_in)
    i = keras.layers.Embedding(n_items, dim)(item_in)
    x = keras.layers.Concatenate()([u, i, u * i])
    for width in (512, 256, 128):
        x = keras.layers.Dense(width, activation="relu")(x)
    out = keras.layers.Dense(1)(x)
    model = keras.Model([user_in, item_in], out)
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.MeanSquaredError()

    @tf.function
    def step(u_ids, i_ids, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, tf.squeeze(model([u_ids, i_ids], training=True), -1))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    batches = [
        (
            tf.constant(users[k : k + batch]),
            tf.constant(items[k : k + batch]),
            tf.constant(labels[k : k + batch]),
        )
        for k in range(0, n, batch)
    ]
    for k in range(warmup):
        step(*batches[k % len(batches)]).numpy()
    times = []
    cpu0 = time.process_time()
    for k in range(steps):
        t0 = time.perf_counter()
        step(*batches[k % len(batches)]).numpy()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    return {
        "step_ms": 1000 * statistics.median(times),
        # CPU time of all threads per step: less moved by other load than wall time.
        "cpu_ms": 1000 * cpu / steps,
        "intra": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter": tf.config.threading.get_inter_op_parallelism_threads(),
        "env": {k: os.environ.get(k) for k in PLAN_VARS if k != LAUNCHER_KEYS_VAR},
        "cpus": format_cpu_list(os.sched_getaffinity(0)),
    }


# --------------------------------------------------------------------------- driver


def baseline_env() -> dict[str, str]:
    """This environment without any of the plan's variables: TensorFlow decides."""
    return {k: v for k, v in os.environ.items() if k not in PLAN_VARS}


def worker_cmd(steps: int, batch: int, warmup: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "recsys.benchmarks.launcher",
        "--worker",
        f"--steps={steps}",
        f"--batch={batch}",
        f"--warmup={warmup}",
    ]


def launched(options: Sequence[str], cmd: Sequence[str]) -> list[str]:
    """``cmd`` started through ``python -m recsys.launch OPTIONS --``."""
    return [sys.executable, "-m", "recsys.launch", "--quiet", *options, "--", *cmd]


def run_worker(cmd: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(env), check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_sweep(cmds: Sequence[Sequence[str]], env: Mapping[str, str]) -> tuple[float, list[dict]]:
    """Start all jobs at once; wall time until the last ends, and their reports."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env)
        )
        for c in cmds
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"sweep job failed ({p.returncode}):\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return time.perf_counter() - t0, results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m recsys.benchmarks.launcher")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="processes per configuration")
    parser.add_argument("--no-sweep", action="store_true", help="skip the 2-job sweep part")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(train_steps(args.steps, args.batch, args.warmup)))
        return 0

    hardware = detect()
    env = baseline_env()
    plan = make_plan(None, hardware, environ=env)
    print(f"machine: {hardware.describe()}")
    # Other processes share the CPUs on a busy machine: say so, since it moves the numbers.
    print(f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"plan: intra-op {plan.intra_op_threads}, inter-op {plan.inter_op_threads}, "
        f"allocator {plan.allocator or 'none found'}"
    )
    print(
        f"model: Embedding 50000x64 + 20000x64, MLP 512-256-128-1, Adam, batch {args.batch}; "
        f"median of {args.steps} steps after {args.warmup} warm-up, {args.repeats} processes each"
    )
    work = worker_cmd(args.steps, args.batch, args.warmup)
    configs: dict[str, list[str]] = {"TensorFlow defaults": work}
    configs["launcher plan, no allocator"] = launched(["--allocator", "none"], work)
    if plan.allocator:
        configs[f"launcher plan + {os.path.basename(plan.allocator)}"] = launched([], work)
    samples: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for name, cmd in configs.items():
            report = run_worker(cmd, env)
            samples[name].append(report["step_ms"])
            cpu[name].append(report["cpu_ms"])
            seen[name] = report
    base = statistics.median(samples["TensorFlow defaults"])
    base_best = min(samples["TensorFlow defaults"])
    print()
    print(
        "step time per process = median over its timed steps; 'median'/'best' over processes "
        "(best is least disturbed by other load); ratio > 1 means faster than defaults"
    )
    print(
        f"{'configuration':<44} {'median ms':>9} {'ratio':>6} {'best ms':>8} {'ratio':>6} "
        f"{'CPU ms':>7}  per process (ms)"
    )
    for name, values in samples.items():
        med, best = statistics.median(values), min(values)
        runs = " ".join(f"{v:.1f}" for v in values)
        print(
            f"{name:<44} {med:9.2f} {base / med:5.2f}x {best:8.2f} {base_best / best:5.2f}x "
            f"{statistics.median(cpu[name]):7.1f}  {runs}"
        )
    print("  CPU ms = CPU time of all the process's threads per step (median over processes)")
    for name, report in seen.items():
        got = report["env"]
        print(
            f"  {name}: TF_NUM_INTRAOP/INTEROP_THREADS="
            f"{got['TF_NUM_INTRAOP_THREADS'] or 'unset'}/{got['TF_NUM_INTEROP_THREADS'] or 'unset'}"
            f", LD_PRELOAD={got['LD_PRELOAD'] or 'unset'}"
        )

    if not args.no_sweep and len(hardware.allowed_cpus) >= 2:
        slots = split_cpus(hardware, 2)
        defaults_cmds = [work, work]
        split_cmds = [
            launched(["--allocator", "none", "--cpus", format_cpu_list(s)], work) for s in slots
        ]
        walls: dict[str, list[float]] = {"defaults": [], "split": []}
        steps_ms: dict[str, list[float]] = {"defaults": [], "split": []}
        for _ in range(args.repeats):
            for key, cmds in (("defaults", defaults_cmds), ("split", split_cmds)):
                wall, reports = time_sweep(cmds, env)
                walls[key].append(wall)
                steps_ms[key].extend(r["step_ms"] for r in reports)
        print()
        print("sweep of 2 jobs started together (wall time includes TensorFlow start-up):")
        d_wall, s_wall = statistics.median(walls["defaults"]), statistics.median(walls["split"])
        d_step, s_step = (
            statistics.median(steps_ms["defaults"]),
            statistics.median(steps_ms["split"]),
        )
        print(
            f"  TF defaults, both on all CPUs:            wall {d_wall:6.2f} s, step {d_step:7.2f} ms"
        )
        print(
            f"  recsys split, CPUs {' | '.join(format_cpu_list(s) for s in slots):<21} "
            f"wall {s_wall:6.2f} s, step {s_step:7.2f} ms"
        )
        print(
            f"  step-time ratio defaults/split: {d_step / s_step:.2f}x; wall ratio {d_wall / s_wall:.2f}x"
        )
    print(f"load average at end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
