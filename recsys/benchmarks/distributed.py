"""Memory and speed of one model trained in one process and on loopback PSS clusters.

The same model (an Embedding table, default 2M x 64, averaged over 4 ids per example,
a Dense layer, SparseAdam; random ids, fixed seed) trains in each configuration:

* ``single``: one process, no cluster;
* ``1w2ps``: ``python -m recsys.cluster local --ps 2 --workers 1``, this script as chief;
* ``2w2ps``: the same with two workers.

The chief's memory is also read after each phase (connected; its first remote
operation, which starts TensorFlow's remote-execution runtime; built; each epoch;
checkpoint; lookups), and its gain is reported from its baseline and from after that
first remote operation, the runtime's one-time start that no table size changes.

Each configuration trains one warm-up epoch and one timed epoch of ``--steps`` steps
(epoch-level timing: the chief waits for every scheduled step at an epoch end), writes
a checkpoint and looks up rows of the table inside a ``tf.function`` (what
evaluation does). Every process's resident memory is read from ``/proc`` before the
model is built (baseline) and at the end (peak, ``VmHWM``), so the report shows what
each process gained: the coordinator should gain little (the table lives on the
parameter servers), each parameter server about its shard of the table and of
Adam's two slots.

Run::

    python -m recsys.benchmarks.distributed                      # 2M x 64, 100 steps
    python -m recsys.benchmarks.distributed --rows 200000 --steps 20 --output bench.json

All processes share this machine's cores: the cluster figures measure overhead and
memory placement, not a speed-up. Imports TensorFlow only in its child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CONFIGS", "main", "summarize"]

#: Configuration name -> (workers, parameter servers); (0, 0) is one process.
CONFIGS = {"single": (0, 0), "1w2ps": (1, 2), "2w2ps": (2, 2)}
_MARK = "BENCHMARK_RESULT "
#: The phase after which the chief's growth no longer includes the runtime's start.
WARM_PHASE = "first remote op"


def _memory_mib(pid: int | str = "self") -> dict[str, float]:
    """Resident (``VmRSS``) and peak resident (``VmHWM``) memory of ``pid``, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values


def _servers(log_dir: str | None) -> list[dict[str, Any]]:
    if not log_dir:
        return []
    tasks = json.loads((Path(log_dir) / "cluster.json").read_text())["tasks"]
    return [{"role": f"{t['type']} {t['index']}", "pid": int(t["pid"])} for t in tasks]


# ----------------------------------------------------------------------------- child


def run_child(rows: int, dim: int, batch: int, steps: int, log_dir: str | None) -> dict[str, Any]:
    """Train, checkpoint and look up in this process (the chief when TF_CONFIG is set)."""
    import numpy as np

    from recsys._tf import keras, tf
    from recsys.distribute import make_strategy
    from recsys.distribute.parameter_server import build_optimizer_slots, dataset_creator
    from recsys.layers import Embedding
    from recsys.optimizers import SparseAdam

    clustered = bool(os.environ.get("TF_CONFIG"))
    strategy = make_strategy("parameter_server" if clustered else "none")
    servers = _servers(log_dir)
    baseline = {"chief": _memory_mib()["VmRSS"]}
    phases: list[dict[str, Any]] = []

    def phase(name: str) -> None:
        """This process's memory after ``name``: where the chief's gain comes from."""
        memory = _memory_mib()
        phases.append(
            {
                "phase": name,
                "rss_gain_mib": round(memory["VmRSS"] - baseline["chief"], 1),
                "peak_gain_mib": round(memory["VmHWM"] - baseline["chief"], 1),
            }
        )

    phase("connected")
    with strategy.scope():
        # The chief's first remote operation starts TensorFlow's remote-execution
        # runtime (about +40 MiB here, the same for any table): measured apart.
        tf.Variable(0.0, name="warm_up")
    phase(WARM_PHASE)
    baseline.update({s["role"]: _memory_mib(s["pid"])["VmRSS"] for s in servers})

    rng = np.random.default_rng(0)
    ids = rng.integers(0, rows, size=(batch * 8, 4)).astype("int32")
    labels = rng.normal(size=(batch * 8, 1)).astype("float32")

    def batches(context: Any) -> Any:
        return tf.data.Dataset.from_tensor_slices((ids, labels)).batch(batch)

    with strategy.scope():
        inputs = keras.Input(shape=(4,), dtype="int32")
        table = Embedding(rows, dim)
        pooled = keras.layers.GlobalAveragePooling1D()(table(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
        model.compile(optimizer=SparseAdam(1e-3), loss="mse")
        build_optimizer_slots(model.optimizer, model.trainable_variables)
    phase("built (model, optimizer slots)")

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds = time.perf_counter() - self.start
            phase(f"fit epoch {epoch + 1}")

    timer = EpochTimer()
    model.fit(
        dataset_creator(batches),
        epochs=2,
        steps_per_epoch=steps,
        callbacks=[timer],
        verbose=0,
    )
    phase("fit returned")
    with tempfile.TemporaryDirectory() as folder:
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(f"{folder}/ckpt")
    phase("checkpoint written")
    lookup = tf.function(lambda i: table(i))
    for start in range(0, min(rows, 100_000), 10_000):
        lookup(tf.range(start, start + 10_000)).numpy()
    phase("rows looked up")

    processes = [{"role": "chief" if clustered else "process", **_peak("chief", baseline, "self")}]
    processes += [{"role": s["role"], **_peak(s["role"], baseline, s["pid"])} for s in servers]
    shards = getattr(table.embeddings, "variables", [table.embeddings])
    return {
        "rows": rows,
        "dim": dim,
        "batch": batch,
        "steps": steps,
        "table_mib": rows * dim * 4 / 2**20,
        "shards": len(shards),
        "steps_per_second": steps / timer.seconds,
        "processes": processes,
        "phases": phases,
    }


def _peak(role: str, baseline: dict[str, float], pid: int | str) -> dict[str, float]:
    memory = _memory_mib(pid)
    return {
        "baseline_mib": round(baseline[role], 1),
        "peak_mib": round(memory["VmHWM"], 1),
        "gain_mib": round(memory["VmHWM"] - baseline[role], 1),
    }


# ---------------------------------------------------------------------------- parent


def _run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    workers, ps = CONFIGS[name]
    with tempfile.TemporaryDirectory() as log_dir:
        child = [sys.executable, "-m", "recsys.benchmarks.distributed", "--child"]
        child += ["--rows", str(args.rows), "--dim", str(args.dim), "--batch", str(args.batch)]
        child += ["--steps", str(args.steps)]
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if workers:
            child += ["--log-dir", log_dir]
            command = [sys.executable, "-m", "recsys.cluster", "local", "--ps", str(ps)]
            command += ["--workers", str(workers), "--log-dir", log_dir, "--", *child]
        else:
            command = child
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(
                f"configuration {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    result = json.loads(lines[-1][len(_MARK) :])
    return {"config": name, "wall_seconds": round(time.perf_counter() - started, 1), **result}


def summarize(results: Sequence[dict[str, Any]]) -> list[str]:
    """The report's table rows (one per process of each configuration), and checks.

    Checks: the coordinator (chief) gains less than 5% of the table; each parameter
    server gains at most 3 x table / P (its shard of the table and of two slots) plus
    one largest shard (its transient initial value).
    """
    lines = [
        "| config | process | steps/s | baseline MiB | peak MiB | gain MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    checks = []
    for result in results:
        for process in result["processes"]:
            lines.append(
                f"| {result['config']} | {process['role']} | {result['steps_per_second']:.1f} | "
                f"{process['baseline_mib']:,.0f} | {process['peak_mib']:,.0f} | "
                f"{process['gain_mib']:,.0f} |"
            )
        table = result["table_mib"]
        ps = [p for p in result["processes"] if p["role"].startswith("ps")]
        warm = next(
            (p["rss_gain_mib"] for p in result.get("phases", []) if p["phase"] == WARM_PHASE),
            None,
        )
        for process in result["processes"]:
            if process["role"] == "chief":
                share = process["gain_mib"] / table
                checks.append(
                    f"{result['config']}: chief gain {process['gain_mib']:,.0f} MiB = "
                    f"{share:.1%} of the table ({table:,.0f} MiB); target < 5%: "
                    f"{'ok' if share < 0.05 else 'MISSED'}"
                )
                if warm is not None:
                    after = process["gain_mib"] - warm
                    checks.append(
                        f"{result['config']}: chief gain after its first remote op (the "
                        f"runtime's one-time start, {warm:+,.0f} MiB) {after:,.0f} MiB = "
                        f"{after / table:.1%} of the table; target < 5%: "
                        f"{'ok' if after / table < 0.05 else 'MISSED'}"
                    )
        for process in ps:
            bound = 3 * table / len(ps) + table / result["shards"]
            checks.append(
                f"{result['config']}: {process['role']} gain {process['gain_mib']:,.0f} MiB; "
                f"bound 3 x table / P + one shard = {bound:,.0f} MiB: "
                f"{'ok' if process['gain_mib'] <= bound else 'MISSED'}"
            )
    growth = []
    for result in results:
        if not result.get("phases"):
            continue
        steps = ", ".join(
            f"{p['phase']} {p['rss_gain_mib']:+,.0f} (peak {p['peak_gain_mib']:+,.0f})"
            for p in result["phases"]
        )
        who = "chief" if result["config"] != "single" else "process"
        growth.append(f"phases of {result['config']}'s {who}, MiB over its baseline: {steps}")
    return [*lines, "", *checks, "", *growth]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recsys.benchmarks.distributed``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m recsys.benchmarks.distributed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="table rows (default 2M)")
    parser.add_argument("--dim", type=int, default=64, help="embedding width (default 64)")
    parser.add_argument("--batch", type=int, default=4096, help="examples per step (default 4096)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps (default 100)")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated, of {', '.join(CONFIGS)} (default: all)",
    )
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("rows", "dim", "batch", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1. Received: --{name}={getattr(args, name)}")
    if args.child:
        result = run_child(args.rows, args.dim, args.batch, args.steps, args.log_dir)
        print(_MARK + json.dumps(result), flush=True)
        return 0
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        parser.error(
            f"--configs takes names from {', '.join(CONFIGS)}. Received: --configs={args.configs}"
        )
    load = os.getloadavg()[0]
    results = []
    for name in configs:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(_run_config(name, args))
    report = summarize(results)
    print(
        f"Table {args.rows:,} x {args.dim} ({results[0]['table_mib']:,.0f} MiB), batch "
        f"{args.batch}, {args.steps} timed steps; load average {load:.2f} -> "
        f"{os.getloadavg()[0]:.2f}"
    )
    print("\n".join(report))
    if args.output:
        payload = {"load_average": [load, os.getloadavg()[0]], "results": results}
        Path(args.output).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
