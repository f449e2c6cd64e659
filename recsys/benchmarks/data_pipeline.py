"""Benchmark: rows per second from the Parquet cache through tf.data to batches.

For one MovieLens release (ML-1M by default) it measures, in one process:

- ``parquet``: reading the cached ratings/items/users tables (``load_movielens`` on a
  warm cache; the first call, which fetches and parses, is timed separately);
- ``build``: turning the train split into tensors and a ``tf.data`` pipeline;
- per epoch, the training pipeline (fresh seeded permutation, batch gather, item
  ``title`` and ragged ``genres`` joined per batch, prefetch) and the evaluation
  pipeline (table order, cached after the first pass), each iterated to the end;
- ``end_to_end``: Parquet read + split + build + one training epoch, in rows/s.

Prints a table and writes JSON (``--out``).

Run:
    python -m recsys.benchmarks.data_pipeline                      # ML-1M, batch 4096
    python -m recsys.benchmarks.data_pipeline --variant 100k --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _iterate(ds: Any) -> tuple[int, int, float]:
    """Rows and batches of one full pass, and its seconds."""
    start = time.perf_counter()
    rows = batches = 0
    for batch in ds:
        rows += int(batch["rating"].shape[0])
        batches += 1
    return rows, batches, time.perf_counter() - start


def run(
    variant: str = "1m",
    batch_size: int = 4096,
    epochs: int = 3,
    path: str | None = None,
    data_dir: str | None = None,
    test_fraction: float = 0.1,
    seed: int = 42,
) -> dict[str, Any]:
    """Measure the pipeline; returns the numbers printed by :func:`main`."""
    from recsys.data import load_movielens, splits

    start = time.perf_counter()
    load_movielens(variant, path=path, data_dir=data_dir, progress=False)
    first_load_s = time.perf_counter() - start

    start = time.perf_counter()
    ml = load_movielens(variant, path=path, data_dir=data_dir, progress=False)
    parquet_s = time.perf_counter() - start
    train, test = splits.random_split(ml.ratings, test_fraction, seed)
    split_s = time.perf_counter() - start - parquet_s

    start = time.perf_counter()
    from recsys._tf import tf  # noqa: F401  (import time is not pipeline time)

    tf_import_s = time.perf_counter() - start
    from recsys.data.pipelines import ratings_dataset

    start = time.perf_counter()
    train_ds = ratings_dataset(train, ml.items, batch_size=batch_size, shuffle=True, seed=seed)
    eval_ds = ratings_dataset(test, ml.items, batch_size=batch_size)
    build_s = time.perf_counter() - start

    train_epochs = []
    for _ in range(epochs):
        rows, batches, seconds = _iterate(train_ds)
        train_epochs.append({"rows": rows, "batches": batches, "seconds": seconds})
    eval_epochs = []
    for _ in range(2):
        rows, batches, seconds = _iterate(eval_ds)
        eval_epochs.append({"rows": rows, "batches": batches, "seconds": seconds})

    first_epoch = train_epochs[0]["seconds"]
    end_to_end_s = parquet_s + split_s + build_s + first_epoch
    return {
        "variant": variant,
        "source": ml.source,
        "rows": len(ml.ratings),
        "train_rows": len(train),
        "test_rows": len(test),
        "batch_size": batch_size,
        "first_load_s": first_load_s,
        "parquet_s": parquet_s,
        "split_s": split_s,
        "tf_import_s": tf_import_s,
        "build_s": build_s,
        "train_epochs": train_epochs,
        "eval_epochs": eval_epochs,
        "train_rows_per_s": [e["rows"] / e["seconds"] for e in train_epochs],
        "eval_rows_per_s": [e["rows"] / e["seconds"] for e in eval_epochs],
        "train_rows_per_s_median": statistics.median(
            e["rows"] / e["seconds"] for e in train_epochs
        ),
        "end_to_end_s": end_to_end_s,
        "end_to_end_rows_per_s": len(train) / end_to_end_s,
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "tensorflow": __import__("tensorflow").__version__,
        },
    }


def _report(r: dict[str, Any]) -> str:
    lines = [
        f"MovieLens {r['variant']} ({r['source']}): {r['rows']:,} ratings, train {r['train_rows']:,} / "
        f"test {r['test_rows']:,}, batch {r['batch_size']}, {r['machine']['cpus']} CPUs",
        f"  first load (fetch/parse or cache) {r['first_load_s']:8.2f} s",
        f"  parquet read (cached load)        {r['parquet_s']:8.2f} s",
        f"  random split                      {r['split_s']:8.2f} s",
        f"  tf.data build (tensors, graph)    {r['build_s']:8.2f} s",
    ]
    for i, (e, rate) in enumerate(zip(r["train_epochs"], r["train_rows_per_s"], strict=True), 1):
        lines.append(
            f"  train epoch {i} (shuffled + item features) {e['seconds']:6.2f} s  "
            f"{rate:12,.0f} rows/s  ({e['batches']} batches)"
        )
    for i, (e, rate) in enumerate(zip(r["eval_epochs"], r["eval_rows_per_s"], strict=True), 1):
        note = "first pass, fills the cache" if i == 1 else "from the tf.data cache"
        lines.append(f"  eval pass {i} ({note}) {e['seconds']:6.2f} s  {rate:12,.0f} rows/s")
    lines.append(
        f"  train median over epochs: {r['train_rows_per_s_median']:,.0f} rows/s "
        "(an epoch far slower than the others means another process took the CPUs)"
    )
    lines.append(
        f"  end to end: parquet -> split -> tf.data -> one train epoch: {r['end_to_end_s']:.2f} s, "
        f"{r['end_to_end_rows_per_s']:,.0f} rows/s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="1m")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--path", default=None, help="local copy (folder, zip or mirror wheel)")
    parser.add_argument(
        "--data-dir", default=None, help="cache root (default $RECSYS_DATA_DIR or ./data)"
    )
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="benchmarks_out/data_pipeline.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(
        args.variant,
        args.batch_size,
        args.epochs,
        args.path,
        args.data_dir,
        args.test_fraction,
        args.seed,
    )
    print(_report(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
