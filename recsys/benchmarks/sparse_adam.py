"""Benchmark: SparseAdam against tf-keras Adam on huge embedding tables.

Measures milliseconds per step for tables of 20k, 1M and 10M rows (64-d, and 128-d
where memory allows), 4096 ids per step drawn uniformly or Zipf-distributed:

- ``step``: a whole training step (lookup through ``recsys.layers.Embedding``,
  gradient, ``apply_gradients``) inside one ``tf.function``;
- ``update``: ``apply_gradients`` alone on a ready ``tf.IndexedSlices`` gradient;
- ``floor``: what any row-sparse update must do at least, measured in the same
  run: gather the touched rows of the variable and both slots and scatter them back.

Each (table, optimizer) pair runs in its own process so its peak memory (max RSS)
is its own. Prints a table and the ratios the project targets, and writes JSON.

Run:
    python -m recsys.benchmarks.sparse_adam                # full run (several minutes)
    python -m recsys.benchmarks.sparse_adam --quick        # 20k and 1M rows only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BATCH_IDS = 4096
ROWS = (20_000, 1_000_000, 10_000_000)
DIMS = (64, 128)
KINDS = ("sparse_adam", "keras_adam", "floor")
DISTRIBUTIONS = ("uniform", "zipf")
ZIPF_EXPONENT = 1.1


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def estimated_bytes(rows: int, dim: int, kind: str) -> int:
    """Rough peak memory of one worker: the table, two slots, and dense temporaries."""
    table = rows * dim * 4
    # Dense Adam materialises several table-sized temporaries per step.
    copies = 7 if kind == "keras_adam" else 3
    return copies * table + 600 * 2**20


def make_ids(rows: int, distribution: str, n_batches: int, seed: int = 0) -> Any:
    """Pre-drawn id batches (int32 [n_batches, BATCH_IDS]) so timing excludes the RNG."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        return rng.integers(0, rows, size=(n_batches, BATCH_IDS), dtype=np.int64).astype(np.int32)
    ranks = rng.zipf(ZIPF_EXPONENT, size=(n_batches, BATCH_IDS)).astype(np.int64) - 1
    # Scatter the hot ranks over the table as a hashed vocabulary would.
    return ((ranks * 2654435761) % rows).astype(np.int32)


def _time_calls(fn: Any, batches: list, min_steps: int, max_steps: int, min_seconds: float) -> dict:
    for ids in batches[:2]:  # trace and warm up
        fn(ids)
    steps, start = 0, time.perf_counter()
    while steps < max_steps and (steps < min_steps or time.perf_counter() - start < min_seconds):
        fn(batches[steps % len(batches)])
        steps += 1
    elapsed = time.perf_counter() - start
    return {"ms_per_step": 1000 * elapsed / steps, "steps": steps}


def run_worker(rows: int, dim: int, kind: str) -> dict:
    """Times every (distribution, mode) of one optimizer on one table, in this process."""
    import recsys  # noqa: F401  (environment before TensorFlow)
    from recsys._tf import keras, tf
    from recsys.layers import Embedding
    from recsys.optimizers import SparseAdam

    tf.random.set_seed(0)
    built_at = time.perf_counter()
    layer = Embedding(rows, dim, embeddings_initializer="zeros")
    layer.build(None)
    layer.embeddings.assign(tf.random.uniform((rows, dim), -0.05, 0.05, seed=1))
    table = layer.embeddings
    big = rows * dim >= 10**8
    slow = kind == "keras_adam" and rows >= 1_000_000
    optimizer = SparseAdam(1e-3) if kind != "keras_adam" else keras.optimizers.Adam(1e-3)
    optimizer.build([table])
    slot = optimizer._index_dict[optimizer._var_key(table)]
    m, v = optimizer._momentums[slot], optimizer._velocities[slot]
    setup_seconds = time.perf_counter() - built_at
    dense_shape = tf.constant([rows, dim], dtype=tf.int32)
    values = tf.random.normal((BATCH_IDS, dim), seed=2)

    @tf.function
    def train_step(ids: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(ids) - 0.01))
        optimizer.apply_gradients([(tape.gradient(loss, table), table)])
        return loss

    @tf.function
    def update(ids: Any) -> Any:
        return optimizer.apply_gradients([(tf.IndexedSlices(values, ids, dense_shape), table)])

    @tf.function
    def floor(ids: Any) -> None:
        for variable in (table, m, v):
            variable.scatter_update(tf.IndexedSlices(tf.gather(variable, ids), ids))

    if slow:
        budget = {"min_steps": 1 if big else 3, "max_steps": 2 if big else 5, "min_seconds": 0.0}
    else:
        budget = {"min_steps": 10, "max_steps": 300, "min_seconds": 1.5}
    modes = {"floor": floor} if kind == "floor" else {"step": train_step, "update": update}
    results = []
    for distribution in DISTRIBUTIONS:
        batches = [tf.constant(b) for b in make_ids(rows, distribution, n_batches=8)]
        unique = sum(len(set(b.numpy().tolist())) for b in batches) / len(batches)
        for mode, fn in modes.items():
            timing = _time_calls(fn, batches, **budget)
            results.append(
                {
                    "rows": rows,
                    "dim": dim,
                    "optimizer": kind,
                    "mode": mode,
                    "distribution": distribution,
                    "unique_ids_per_step": round(unique, 1),
                    **timing,
                }
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for r in results:
        r["peak_rss_bytes"] = peak
        r["table_bytes"] = rows * dim * 4
        r["setup_seconds"] = round(setup_seconds, 2)
    return {"results": results}


def _spawn_worker(rows: int, dim: int, kind: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "recsys.benchmarks.sparse_adam",
        "--worker",
        f"{rows},{dim},{kind}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": f"worker exited with {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _lookup(results: list[dict], **match: Any) -> float | None:
    for r in results:
        if all(r.get(k) == v for k, v in match.items()):
            return r["ms_per_step"]
    return None


def summarize(results: list[dict]) -> list[dict]:
    """The ratios the project targets, computed from one run's results (64-d tables)."""
    checks = []
    for dist in DISTRIBUTIONS:
        base = dict(dim=64, distribution=dist)
        small = _lookup(results, rows=20_000, optimizer="sparse_adam", mode="step", **base)
        huge = _lookup(results, rows=10_000_000, optimizer="sparse_adam", mode="step", **base)
        if small and huge:
            checks.append(
                {
                    "check": f"SparseAdam step, 10M rows / 20k rows ({dist})",
                    "ratio": huge / small,
                    "target": "<= 2",
                    "met": huge / small <= 2,
                }
            )
        dense = _lookup(results, rows=1_000_000, optimizer="keras_adam", mode="step", **base)
        sparse = _lookup(results, rows=1_000_000, optimizer="sparse_adam", mode="step", **base)
        if dense and sparse:
            checks.append(
                {
                    "check": f"tf-keras Adam / SparseAdam step, 1M rows ({dist})",
                    "ratio": dense / sparse,
                    "target": ">= 100",
                    "met": dense / sparse >= 100,
                }
            )
        for rows in ROWS:
            upd = _lookup(results, rows=rows, optimizer="sparse_adam", mode="update", **base)
            flo = _lookup(results, rows=rows, optimizer="floor", mode="floor", **base)
            if upd and flo:
                checks.append(
                    {
                        "check": f"SparseAdam update / floor, {rows:,} rows ({dist})",
                        "ratio": upd / flo,
                        "target": "<= 3",
                        "met": upd / flo <= 3,
                    }
                )
    return checks


def format_table(results: list[dict], checks: list[dict], skipped: list[str]) -> str:
    header = f"{'rows':>11} {'dim':>4} {'ids':>7} {'optimizer':<12} {'mode':<7} {'ms/step':>10} {'steps':>5} {'peak RSS':>9}"
    lines = [header, "-" * len(header)]
    for r in sorted(
        results, key=lambda r: (r["dim"], r["rows"], r["distribution"], r["optimizer"], r["mode"])
    ):
        lines.append(
            f"{r['rows']:>11,} {r['dim']:>4} {r['distribution']:>7} {r['optimizer']:<12} "
            f"{r['mode']:<7} {r['ms_per_step']:>10.2f} {r['steps']:>5} "
            f"{r['peak_rss_bytes'] / 2**30:>7.2f}Gi"
        )
    lines.append("")
    for c in checks:
        lines.append(
            f"{c['check']:<52} {c['ratio']:>9.2f}x  target {c['target']:<6} {'met' if c['met'] else 'NOT met'}"
        )
    lines.extend(f"skipped: {s}" for s in skipped)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the 20k and 1M row tables")
    parser.add_argument("--dims", default=",".join(map(str, DIMS)), help="comma-separated dims")
    parser.add_argument("--rows", default=None, help="comma-separated row counts")
    parser.add_argument(
        "--output", default="benchmarks_out/sparse_adam.json", help="where to write the JSON"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        rows, dim, kind = args.worker.split(",")
        print(json.dumps(run_worker(int(rows), int(dim), kind)))
        return 0

    rows_list = [int(r) for r in args.rows.split(",")] if args.rows else list(ROWS)
    if args.quick:
        rows_list = [r for r in rows_list if r <= 1_000_000]
    dims = [int(d) for d in args.dims.split(",")]
    results, skipped = [], []
    for dim in dims:
        for rows in rows_list:
            for kind in KINDS:
                need, have = estimated_bytes(rows, dim, kind), _available_memory_bytes()
                if need > 0.85 * have:
                    skipped.append(
                        f"{kind} at {rows:,} x {dim}: needs about {need / 2**30:.1f} GiB, "
                        f"{have / 2**30:.1f} GiB available"
                    )
                    continue
                print(f"running {kind} on {rows:,} x {dim} ...", file=sys.stderr, flush=True)
                out = _spawn_worker(rows, dim, kind)
                if "error" in out:
                    skipped.append(f"{kind} at {rows:,} x {dim}: {out['error']}")
                    continue
                results.extend(out["results"])
    checks = summarize(results)
    print(format_table(results, checks, skipped))
    payload = {
        "benchmark": "sparse_adam",
        "batch_ids": BATCH_IDS,
        "zipf_exponent": ZIPF_EXPONENT,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
        "checks": checks,
        "skipped": skipped,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
