"""Benchmark: SparseAdam against tf-keras Adam on huge embedding tables.

Measures milliseconds per step for tables of 20k, 1M and 10M rows (64-d, and 128-d
where memory allows), 4096 ids per step drawn uniformly or Zipf-distributed:

- ``step``: a whole training step (lookup through ``recsys.layers.Embedding``,
  gradient, ``apply_gradients``) inside one ``tf.function``;
- ``update``: ``apply_gradients`` alone on a ready ``tf.IndexedSlices`` gradient;
- ``floor``: what any row-sparse update must do at least, measured in the same
  run: gather the touched rows of the variable and of the optimizer's slots and
  scatter them back (its own floor for each kind of optimizer state).

Each (table, optimizer) pair runs in its own process, so its memory is its own: the
peak RSS while building the table and slots, and the peak during the timed steps.
SparseAdam's floor, update and step are timed in interleaved rounds in one process,
so load from elsewhere on the machine hits them alike; "best" is the fastest round
(the checks use it), "median" the middle one. Prints a table and the ratios the
project targets, and writes JSON.

Lean optimizer state (``--lean``): SparseAdam with bfloat16 moments
(``sparse_adam_lean``) and RowwiseAdagrad (``rowwise_adagrad``, one float per row)
next to full SparseAdam on 10M-row tables, 64-d and 128-d: step times, peak RSS and
state bytes, with the lean/full ratios at 10M x 64 (where both fit). Full SparseAdam
at 10M x 128 (14.3 GiB of table and slots) runs only where free memory allows.

Tables are filled in chunks written in place, so creating a 10M-row table needs no
transient copy of it.

Run:
    python -m recsys.benchmarks.sparse_adam                # full run (several minutes)
    python -m recsys.benchmarks.sparse_adam --quick        # 20k and 1M rows only
    python -m recsys.benchmarks.sparse_adam --lean         # lean state at 10M rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recsys.hardware import free_memory_bytes

BATCH_IDS = 4096
ROWS = (20_000, 1_000_000, 10_000_000)
DIMS = (64, 128)
KINDS = ("sparse_adam", "keras_adam")
# Lean optimizer state: SparseAdam with bfloat16 moments, and row-wise Adagrad.
LEAN_KINDS = ("sparse_adam_lean", "rowwise_adagrad")
# Also accepted by --optimizers: SparseAdam(jit_compile=False), the plain TensorFlow
# sparse path, for comparison with the fused XLA kernel.
ALL_KINDS = (*KINDS, "sparse_adam_unfused", *LEAN_KINDS)
# What --lean runs: the lean kinds beside full SparseAdam on 10M-row tables.
LEAN_RUN = {"rows": (10_000_000,), "dims": (64, 128), "kinds": ("sparse_adam", *LEAN_KINDS)}
# ... but not full SparseAdam at 128-d: 14.3 GiB of table and slots on a machine others
# share. Ask for it by name (--optimizers sparse_adam --rows 10000000 --dims 128).
LEAN_RUN_LEAVES_OUT = {("sparse_adam", 128)}
# Floors are labelled by the state they move; SparseAdam's keeps the plain name.
FLOOR_NAMES = {"sparse_adam": "floor", "sparse_adam_unfused": "floor"}
CHUNK_ROWS = 250_000
DISTRIBUTIONS = ("uniform", "zipf")
ZIPF_EXPONENT = 1.1


def state_bytes(rows: int, dim: int, kind: str) -> int:
    """Bytes of optimizer state (slots) for a float32 `rows x dim` table."""
    if kind == "rowwise_adagrad":
        return rows * 4
    moment_bytes = 2 if kind == "sparse_adam_lean" else 4
    return 2 * rows * dim * moment_bytes


def estimated_bytes(rows: int, dim: int, kind: str) -> int:
    """Rough peak memory of one worker: table, slots, temporaries, TensorFlow itself."""
    table = rows * dim * 4
    if kind == "keras_adam":
        # Dense Adam materialises several table-sized temporaries per step.
        return 7 * table + 600 * 2**20
    # The table is filled in chunks in place (one chunk's random values at a time).
    chunk = 2 * CHUNK_ROWS * dim * 4
    return table + state_bytes(rows, dim, kind) + chunk + 1024 * 2**20


def make_ids(rows: int, distribution: str, n_batches: int, seed: int = 0) -> Any:
    """Pre-drawn id batches (int32 [n_batches, BATCH_IDS]) so timing excludes the RNG."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        return rng.integers(0, rows, size=(n_batches, BATCH_IDS), dtype=np.int64).astype(np.int32)
    ranks = rng.zipf(ZIPF_EXPONENT, size=(n_batches, BATCH_IDS)).astype(np.int64) - 1
    # Scatter the hot ranks over the table as a hashed vocabulary would.
    return ((ranks * 2654435761) % rows).astype(np.int32)


def _time_block(fn: Any, batches: list, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        fn(batches[i % len(batches)])
    return 1000 * (time.perf_counter() - start) / steps


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) for this process, where Linux allows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _init_table_in_chunks(table: Any, tf: Any, chunk_rows: int = CHUNK_ROWS) -> None:
    """Fills `table` with uniform values, a chunk of rows at a time, in place.

    One random tensor the size of a 10M-row table would double peak memory, and so
    would `table[a:b].assign(...)`: the slice reads the variable first, and the write
    then copies the whole table (copy on write). ResourceStridedSliceAssign on the
    handle writes the rows where they are.
    """
    rows, dim = int(table.shape[0]), int(table.shape[1])
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        values = tf.random.uniform((stop - start, dim), -0.05, 0.05, seed=start + 1)
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=table.handle, begin=[start, 0], end=[stop, dim], strides=[1, 1], value=values
        )


def run_worker(rows: int, dim: int, kind: str, rounds: int) -> dict:
    """Times one optimizer on one table in this process.

    For SparseAdam the floor, the update and the whole step are timed in interleaved
    rounds, so a burst of load from elsewhere on the machine hits all three alike; each
    mode reports the best and the median round.
    """
    import recsys  # noqa: F401  (environment before TensorFlow)
    from recsys._tf import keras, tf
    from recsys.layers import Embedding
    from recsys.optimizers import RowwiseAdagrad, SparseAdam

    tf.random.set_seed(0)
    built_at = time.perf_counter()
    layer = Embedding(rows, dim, embeddings_initializer="zeros")
    layer.build(None)
    table = layer.embeddings
    _init_table_in_chunks(table, tf)
    optimizer = {
        "sparse_adam": lambda: SparseAdam(1e-3),
        "sparse_adam_unfused": lambda: SparseAdam(1e-3, jit_compile=False),
        "sparse_adam_lean": lambda: SparseAdam(1e-3, moment_dtype="bfloat16"),
        "rowwise_adagrad": lambda: RowwiseAdagrad(0.1),
        "keras_adam": lambda: keras.optimizers.Adam(1e-3),
    }[kind]()
    optimizer.build([table])
    slots = [s for s in optimizer.variables if s is not optimizer.iterations]
    slot_bytes = sum(s.shape.num_elements() * s.dtype.size for s in slots)
    setup_seconds = time.perf_counter() - built_at
    setup_peak = _peak_rss_bytes()
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
        for variable in (table, *slots):
            variable.scatter_update(tf.IndexedSlices(tf.gather(variable, ids), ids))

    modes = {"step": train_step, "update": update}
    if kind != "keras_adam":
        modes["floor"] = floor
        steps_per_block = 40
    else:
        # Dense Adam touches the whole table each step: seconds per step at 10M rows.
        steps_per_block = 1 if rows >= 1_000_000 else 10
        rounds = min(rounds, 2) if rows >= 10_000_000 else min(rounds, 5)
    tracked = _reset_peak_rss()
    results = []
    for distribution in DISTRIBUTIONS:
        batches = [tf.constant(b) for b in make_ids(rows, distribution, n_batches=8)]
        unique = sum(len(set(b.numpy().tolist())) for b in batches) / len(batches)
        for fn in modes.values():  # trace and warm up
            fn(batches[0])
            fn(batches[1])
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(rounds):
            for mode, fn in modes.items():
                times[mode].append(_time_block(fn, batches, steps_per_block))
        for mode, samples in times.items():
            results.append(
                {
                    "rows": rows,
                    "dim": dim,
                    "optimizer": FLOOR_NAMES.get(kind, f"{kind}_floor")
                    if mode == "floor"
                    else kind,
                    "mode": mode,
                    "distribution": distribution,
                    "unique_ids_per_step": round(unique, 1),
                    "ms_per_step": min(samples),
                    "median_ms_per_step": statistics.median(samples),
                    "steps": steps_per_block * rounds,
                }
            )
    train_peak = _peak_rss_bytes() if tracked else None
    for r in results:
        r["table_bytes"] = rows * dim * 4
        r["state_bytes"] = slot_bytes
        r["setup_seconds"] = round(setup_seconds, 2)
        r["setup_peak_rss_bytes"] = setup_peak
        r["train_peak_rss_bytes"] = train_peak
    return {"results": results}


def _spawn_worker(rows: int, dim: int, kind: str, rounds: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "recsys.benchmarks.sparse_adam",
        "--worker",
        f"{rows},{dim},{kind},{rounds}",
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


def _peak_rss(results: list[dict], **match: Any) -> int | None:
    """The worker's peak RSS (setup or training, whichever is higher)."""
    for r in results:
        if all(r.get(k) == v for k, v in match.items()):
            return max(r.get("setup_peak_rss_bytes") or 0, r.get("train_peak_rss_bytes") or 0)
    return None


def _check(name: str, numerator: float | None, denominator: float | None, target: str) -> list:
    if not numerator or not denominator:
        return []
    ratio = numerator / denominator
    bound = float(target.split()[1])
    met = ratio <= bound if target.startswith("<=") else ratio >= bound
    return [{"check": name, "ratio": ratio, "target": target, "met": met}]


def summarize(results: list[dict]) -> list[dict]:
    """The ratios the project targets, computed from one run's results, for every dim."""

    def ms(rows: int, optimizer: str, mode: str, dim: int, dist: str) -> float | None:
        return _lookup(
            results, rows=rows, optimizer=optimizer, mode=mode, dim=dim, distribution=dist
        )

    checks = []
    for dim in sorted({r["dim"] for r in results}):
        for dist in DISTRIBUTIONS:
            where = f"{dim}-d, {dist}"
            checks += _check(
                f"SparseAdam step, 10M rows / 20k rows ({where})",
                ms(10_000_000, "sparse_adam", "step", dim, dist),
                ms(20_000, "sparse_adam", "step", dim, dist),
                "<= 2",
            )
            checks += _check(
                f"tf-keras Adam / SparseAdam step, 1M rows ({where})",
                ms(1_000_000, "keras_adam", "step", dim, dist),
                ms(1_000_000, "sparse_adam", "step", dim, dist),
                ">= 100",
            )
            for rows in ROWS:
                checks += _check(
                    f"SparseAdam update / floor, {rows:,} rows ({where})",
                    ms(rows, "sparse_adam", "update", dim, dist),
                    ms(rows, "floor", "floor", dim, dist),
                    "<= 3",
                )
            checks += _lean_checks(ms, dim, dist, where)
        checks += _lean_memory_checks(results, dim)
    return checks


_LEAN_NAMES = {"sparse_adam_lean": "lean SparseAdam", "rowwise_adagrad": "RowwiseAdagrad"}


def _lean_checks(ms: Any, dim: int, dist: str, where: str) -> list:
    """Lean state against full SparseAdam (10M rows), and each lean update's floor."""
    checks = []
    for kind, name in _LEAN_NAMES.items():
        checks += _check(
            f"{name} / SparseAdam step, 10M rows ({where})",
            ms(10_000_000, kind, "step", dim, dist),
            ms(10_000_000, "sparse_adam", "step", dim, dist),
            "<= 1.5",
        )
        for rows in ROWS:
            checks += _check(
                f"{name} update / its floor, {rows:,} rows ({where})",
                ms(rows, kind, "update", dim, dist),
                ms(rows, f"{kind}_floor", "floor", dim, dist),
                "<= 3",
            )
    return checks


def _lean_memory_checks(results: list[dict], dim: int) -> list:
    full = _peak_rss(results, rows=10_000_000, dim=dim, optimizer="sparse_adam")
    checks = []
    for kind, bound in (("sparse_adam_lean", "<= 0.75"), ("rowwise_adagrad", "<= 0.5")):
        checks += _check(
            f"peak RSS {_LEAN_NAMES[kind]} / SparseAdam, 10M rows ({dim}-d)",
            _peak_rss(results, rows=10_000_000, dim=dim, optimizer=kind),
            full,
            bound,
        )
    return checks


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}GiB"


def format_table(results: list[dict], checks: list[dict], skipped: list[str]) -> str:
    header = (
        f"{'rows':>11} {'dim':>4} {'ids':>7} {'optimizer':<22} {'mode':<7} {'best ms':>9} "
        f"{'median':>9} {'steps':>5} {'state':>9} {'setup peak':>10} {'train peak':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in sorted(
        results, key=lambda r: (r["dim"], r["rows"], r["distribution"], r["optimizer"], r["mode"])
    ):
        lines.append(
            f"{r['rows']:>11,} {r['dim']:>4} {r['distribution']:>7} {r['optimizer']:<22} "
            f"{r['mode']:<7} {r['ms_per_step']:>9.2f} {r['median_ms_per_step']:>9.2f} "
            f"{r['steps']:>5} {_gib(r.get('state_bytes')):>9} "
            f"{_gib(r['setup_peak_rss_bytes']):>10} {_gib(r['train_peak_rss_bytes']):>10}"
        )
    lines.append("")
    for c in checks:
        lines.append(
            f"{c['check']:<66} {c['ratio']:>9.2f}x  target {c['target']:<6} {'met' if c['met'] else 'NOT met'}"
        )
    lines.extend(f"skipped: {s}" for s in skipped)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the 20k and 1M row tables")
    parser.add_argument(
        "--lean",
        action="store_true",
        help="lean optimizer state: sparse_adam, sparse_adam_lean and rowwise_adagrad on "
        "10M x 64 and 10M x 128 tables (--rows, --dims, --optimizers still apply)",
    )
    parser.add_argument(
        "--dims", default=None, help=f"comma-separated dims (default {','.join(map(str, DIMS))})"
    )
    parser.add_argument("--rows", default=None, help="comma-separated row counts")
    parser.add_argument(
        "--output", default="benchmarks_out/sparse_adam.json", help="where to write the JSON"
    )
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved timing rounds per mode (best is kept)"
    )
    parser.add_argument(
        "--optimizers",
        default=None,
        help=f"comma-separated, from {', '.join(ALL_KINDS)} (default {','.join(KINDS)})",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = LEAN_RUN if args.lean else {"rows": ROWS, "dims": DIMS, "kinds": KINDS}
    if args.optimizers is None:
        args.optimizers = ",".join(defaults["kinds"])
    kinds = args.optimizers.split(",")
    unknown = sorted(set(kinds) - set(ALL_KINDS))
    if unknown:
        parser.error(
            f"unknown optimizers {unknown}; choose from {', '.join(ALL_KINDS)}. "
            f"Received: --optimizers {args.optimizers}"
        )

    if args.worker:
        rows, dim, kind, rounds = args.worker.split(",")
        print(json.dumps(run_worker(int(rows), int(dim), kind, int(rounds))))
        return 0

    rows_list = [int(r) for r in args.rows.split(",")] if args.rows else list(defaults["rows"])
    if args.quick:
        rows_list = [r for r in rows_list if r <= 1_000_000]
    dims = [int(d) for d in args.dims.split(",")] if args.dims else list(defaults["dims"])
    left_out = set()
    if args.lean and args.optimizers == ",".join(LEAN_RUN["kinds"]) and not args.dims:
        left_out = LEAN_RUN_LEAVES_OUT
    results, skipped = [], []
    load_at_start = os.getloadavg()
    for dim in dims:
        for rows in rows_list:
            for kind in kinds:
                if (kind, dim) in left_out and rows >= 10_000_000:
                    skipped.append(
                        f"{kind} at {rows:,} x {dim}: left out of --lean (run it by name: "
                        f"--optimizers {kind} --rows {rows} --dims {dim})"
                    )
                    continue
                # Free memory now, capped by the container's memory limit (cgroups).
                need, have = estimated_bytes(rows, dim, kind), free_memory_bytes()
                if have is not None and need > 0.85 * have:
                    skipped.append(
                        f"{kind} at {rows:,} x {dim}: needs about {need / 2**30:.1f} GiB, "
                        f"{have / 2**30:.1f} GiB available"
                    )
                    continue
                print(f"running {kind} on {rows:,} x {dim} ...", file=sys.stderr, flush=True)
                out = _spawn_worker(rows, dim, kind, args.rounds)
                if "error" in out:
                    skipped.append(f"{kind} at {rows:,} x {dim}: {out['error']}")
                    continue
                results.extend(out["results"])
    checks = summarize(results)
    load_at_end = os.getloadavg()
    print(format_table(results, checks, skipped))
    print(
        "load average (1, 5, 15 min) at start "
        + ", ".join(f"{x:.2f}" for x in load_at_start)
        + "; at end "
        + ", ".join(f"{x:.2f}" for x in load_at_end)
    )
    payload = {
        "benchmark": "sparse_adam",
        "batch_ids": BATCH_IDS,
        "zipf_exponent": ZIPF_EXPONENT,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": {"start": load_at_start, "end": load_at_end},
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
