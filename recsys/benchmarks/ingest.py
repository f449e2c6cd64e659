"""Benchmark: your own interaction log, from Parquet files into training batches.

On a synthetic log (``python -m recsys.data synth``; default 50M interactions, 1M
users, 200k items) it measures, each phase in a fresh process so that its peak RSS
is its own (``os.wait4``):

- ``count``: the vocabulary pass of ``data=interactions`` (``setup()`` on an empty
  cache: every row read, validated, split and counted; vocabularies written);
- ``pipeline``: the training pipeline alone, no model: rows per second from the
  Parquet files into shuffled batches (``train_dataset()``), wall and CPU time;
- ``train``: ``python -m recsys.train +experiment=interactions`` on the same log,
  limited to ``--train-steps`` steps and evaluated on a 0.1% test split, next to the
  bytes of the trained variables and of the optimizer's slots (read from the run's
  checkpoint). The history table keeps each user's last ``--history-max-length``
  items, so the model's per-user state is bounded by the users, not the rows.
  Skipped, with the reason, when the experiment is not there;
- ``steps``: the same model built on the training run's cache and timed step by step
  (``--step-batches`` steps after the first, which traces the graph): wall and CPU
  seconds per step (CPU: all of the process's threads).

Several ``--rows`` sizes show whether peak memory depends on the number of rows.
The machine is shared: CPU seconds are printed next to wall seconds (a wall time far
above the CPU time means other processes had the cores).

Run:
    python -m recsys.benchmarks.ingest                          # 50M rows
    python -m recsys.benchmarks.ingest --rows 10000000,50000000 --train-steps 2000
    python -m recsys.benchmarks.ingest --rows 200000 --users 5000 --items 1000 --skip-train
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "run"]

# The training run's split and learning rate (the steps phase builds the same model).
TEST_FRACTION = 0.001
LEARNING_RATE = 0.003
LOG_COLUMNS = {
    "rating_column": "rating",
    "timestamp_column": "timestamp",
    "user_features": {"country": "id"},
    "item_features": {"genres": "multi_hot", "title": "text", "price": "numeric"},
}


# ------------------------------------------------------------------ measuring
def _measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command``; its exit status, wall seconds, peak RSS and last stdout line.

    The 1-minute load averages before and after are kept too: the machine is shared,
    and a number means little without the load it was measured under.
    """
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    return {
        "status": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "result": _json_line(lines) if proc.returncode == 0 else None,
        "stderr_tail": "" if proc.returncode == 0 else tail,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _data_module(args: argparse.Namespace, **overrides: Any) -> Any:
    from recsys.data.interactions import InteractionsDataModule

    return InteractionsDataModule(
        args.path, batch_size=args.batch_size, cache_dir=args.cache, **LOG_COLUMNS, **overrides
    )


def _steps(args: argparse.Namespace) -> dict[str, Any]:
    """Build the training run's model on its cache and time ``args.batches`` steps."""
    start = time.perf_counter()
    dm = _data_module(args, test_fraction=TEST_FRACTION).setup()
    from recsys._tf import keras
    from recsys.models import RetrievalModel
    from recsys.optimizers import SparseAdam

    model = RetrievalModel(
        dm, item_features=None, user_features=None, history_max_length=args.history_max_length
    )
    model.compile(optimizer=SparseAdam(LEARNING_RATE))
    build = time.perf_counter() - start
    wall: list[float] = []
    cpu: list[float] = []

    class _Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            wall.append(time.perf_counter() - self.start[0])
            cpu.append(time.process_time() - self.start[1])

    batches = dm.train_dataset().take(args.batches + 1)
    # verbose=2 as recsys.train off a terminal: Keras's progress logger then runs after
    # every batch (and walks the model's layers each time), as in the training run.
    model.fit(batches, epochs=1, verbose=2, callbacks=[_Timer()])
    return {
        "build_s": build,
        "first_step_s": wall[0],
        "steps": len(wall) - 1,
        "step_s_median": float(np.median(wall[1:])),
        "step_cpu_s_median": float(np.median(cpu[1:])),
        "users": len(model.user_ids),
        "items": len(model.item_ids),
        "history_members": len(dm.recent_histories(args.history_max_length).members),
    }


def _json_line(lines: list[str]) -> Any:
    """The last line parsed as JSON; None when it is not (e.g. ``recsys.train``'s log)."""
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    """One phase, in this process (``--worker count|pipeline|variables|steps``)."""
    if args.worker == "variables":
        from recsys._tf import tf

        latest = tf.train.latest_checkpoint(args.path)
        sizes = {"variables": 0, "optimizer": 0}
        for name, shape in tf.train.list_variables(latest) if latest else []:
            # recsys.training checkpoints hold model/... (the tables and dense
            # weights) and optimizer/... (its slots); float32, 4 bytes a value.
            key = {"model": "variables", "optimizer": "optimizer"}.get(name.split("/")[0])
            if key is not None:
                count = 1
                for dim in shape:
                    count *= dim
                sizes[key] += 4 * count
        return {"checkpoint": latest, **sizes}
    if args.worker == "steps":
        return _steps(args)
    dm = _data_module(args)
    start = time.perf_counter()
    cpu = time.process_time()
    dm.setup()
    if args.worker == "count":
        index = dm.index
        assert index is not None
        return {
            "seconds": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu,
            "rows": index.rows.total,
            "users": len(index.users),
            "items": len(index.items),
            "train_rows": index.rows.train,
            "user_vocabulary": len(dm.id_space("user").ids),
            "item_vocabulary": len(dm.id_space("item").ids),
        }
    from recsys._tf import tf

    dataset = dm.train_dataset()
    limit = args.batches or int(dataset.cardinality())
    rows = batches = 0
    start = time.perf_counter()
    cpu = time.process_time()
    for batch in dataset.take(limit):
        rows += int(batch["user_id"].shape[0])
        batches += 1
    seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "batches": batches,
        "epoch_batches": int(dataset.cardinality()),
        "seconds": seconds,
        "cpu_s": time.process_time() - cpu,
        "rows_per_s": rows / seconds,
    }


def _log(work: Path, rows: int, users: int, items: int) -> tuple[Path, dict[str, Any]]:
    """The synthetic log for these sizes, written once and reused."""
    from recsys.data.interactions.synth import SynthSpec, synthesize

    folder = work / f"log-{rows}-{users}-{items}"
    spec = SynthSpec(users=users, items=items, rows=rows)
    marker = folder / "truth" / "spec.json"
    if marker.is_file() and json.loads(marker.read_text())["rows"] == rows:
        files = sorted(folder.glob("part-*.parquet"))
        return folder, {
            "reused": True,
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
        }
    start = time.perf_counter()
    summary = synthesize(folder, spec)
    return folder, {
        "reused": False,
        "seconds": time.perf_counter() - start,
        "files": len(summary["files"]),
        "bytes": summary["bytes"],
    }


def _experiment_exists() -> bool:
    conf = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "interactions.yaml"
    return conf.is_file()


def _train(
    log: Path, run_dir: Path, cache: Path, steps: int, batch_size: int, history_max_length: int
) -> dict[str, Any]:
    if not _experiment_exists():
        return {"skipped": "conf/experiment/interactions.yaml is not there yet (the model side)"}
    command = [
        sys.executable,
        "-m",
        "recsys.train",
        "+experiment=interactions",
        f"data.path={log}",
        f"data.batch_size={batch_size}",
        f"data.cache_dir={cache}",
        # Training runs over the whole log; the test split is kept to 0.1% because the
        # exact top-k evaluation scores every test user against every item (1M users x
        # 200k items would take longer than the training steps). No export either:
        # what is measured is training's memory.
        f"data.test_fraction={TEST_FRACTION}",
        "trainer.export=false",
        "trainer.tensorboard=false",
        # The synthetic log's columns (python -m recsys.data synth).
        "data.user_column=user_id",
        "data.item_column=item_id",
        "data.rating_column=rating",
        "data.timestamp_column=timestamp",
        "data.user_features={country: id}",
        "data.item_features={genres: multi_hot, title: text, price: numeric}",
        f"model.history_max_length={history_max_length}",
        f"optimizer.learning_rate={LEARNING_RATE}",
        "trainer.epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=10",
        f"hydra.run.dir={run_dir}",
    ]
    # A fresh run (not a resumed one) that counts the log itself, as a first run does.
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    measured = _measured(command, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    measured["command"] = " ".join(command)
    if measured["status"] == 0:
        variables = [sys.executable, "-m", "recsys.benchmarks.ingest", "--worker", "variables"]
        sizes = _measured([*variables, "--path", str(run_dir / "checkpoints")])
        measured["state"] = sizes["result"]
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = {}
        measured["metrics"] = {k: v for k, v in metrics.items() if k != "history"}
    return measured


def run(
    sizes: list[int],
    users: int = 1_000_000,
    items: int = 200_000,
    work_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 4096,
    pipeline_batches: int = 2500,
    train_steps: int = 2000,
    skip_train: bool = False,
    keep: bool = False,
    history_max_length: int = 20,
    step_batches: int = 30,
    train_batch_size: int | None = None,
    only_train: bool = False,
) -> dict[str, Any]:
    """Measure every phase for every size; returns what :func:`main` prints."""
    work = Path(work_dir or Path(tempfile.gettempdir()) / "recsys-ingest")
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    results = []
    for rows in sizes:
        if free < rows * 40:  # about 20 bytes a row of Parquet, plus the cache's labels
            raise SystemExit(
                f"error: {work} has {free / 2**30:.1f} GiB free; {rows:,} rows need about "
                f"{rows * 40 / 2**30:.1f} GiB. Fix: --work-dir on a bigger disk, or fewer --rows"
            )
        log, written = _log(work, rows, min(users, rows), min(items, rows))
        cache = work / f"cache-{rows}"
        shutil.rmtree(cache, ignore_errors=True)
        worker = [sys.executable, "-m", "recsys.benchmarks.ingest", "--path", str(log),
                  "--cache", str(cache), "--batch-size", str(batch_size)]  # fmt: skip
        entry: dict[str, Any] = {"rows": rows, "log": str(log), "synth": written}
        if not only_train:
            entry["count"] = _measured([*worker, "--worker", "count"])
            entry["pipeline"] = _measured(
                [*worker, "--worker", "pipeline", "--batches", str(pipeline_batches)]
            )
        train_batch = train_batch_size or batch_size
        if not skip_train:
            train_cache = work / f"train-cache-{rows}"
            entry["train"] = _train(
                log, work / f"run-{rows}", train_cache, train_steps, train_batch, history_max_length
            )
            if entry["train"].get("status") == 0 and step_batches:
                steps = [sys.executable, "-m", "recsys.benchmarks.ingest", "--path", str(log),
                         "--cache", str(train_cache), "--batch-size", str(train_batch),
                         "--history-max-length", str(history_max_length),
                         "--worker", "steps", "--batches", str(step_batches)]  # fmt: skip
                entry["steps"] = _measured(steps, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if not keep:
                shutil.rmtree(train_cache, ignore_errors=True)
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
        results.append(entry)
    return {
        "users": users,
        "items": items,
        "batch_size": batch_size,
        "train_batch_size": train_batch_size or batch_size,
        "history_max_length": history_max_length,
        "results": results,
        "machine": {
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
    }


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def _load(measured: dict[str, Any]) -> str:
    before, after = measured.get("load_average", (float("nan"), float("nan")))
    return f"{before:.1f} -> {after:.1f}"


def _report(r: dict[str, Any]) -> str:
    lines = [
        f"ingest benchmark: {r['users']:,} users, {r['items']:,} items, batch {r['batch_size']} "
        f"(training {r.get('train_batch_size', r['batch_size'])}), {r['machine']['cpus']} CPUs, "
        f"load average {r['machine']['load_average']}"
    ]
    for entry in r["results"]:
        lines.append(f"{entry['rows']:,} rows ({entry['synth']['files']} Parquet files, "
                     f"{_gib(entry['synth']['bytes'])}) in {entry['log']}")  # fmt: skip
        for phase in ("count", "pipeline"):
            if phase not in entry:
                continue
            m = entry[phase]
            if m["status"] != 0:
                lines.append(f"  {phase}: FAILED (exit {m['status']})\n{m['stderr_tail']}")
                continue
            res = m["result"]
            if phase == "count":
                lines.append(
                    f"  vocabulary pass: {res['seconds']:.1f} s wall, {res['cpu_s']:.1f} s CPU, "
                    f"{res['rows'] / res['seconds']:,.0f} rows/s; peak RSS "
                    f"{_gib(m['peak_rss_bytes'])}; {res['users']:,} users, {res['items']:,} items; "
                    f"load {_load(m)}"
                )
            else:
                lines.append(
                    f"  training pipeline: {res['rows']:,} rows in {res['batches']} of "
                    f"{res['epoch_batches']} batches, {res['seconds']:.1f} s wall "
                    f"({res['rows_per_s']:,.0f} rows/s), {res['cpu_s']:.1f} s CPU "
                    f"({res['rows'] / max(res['cpu_s'], 1e-9):,.0f} rows per CPU-second); "
                    f"peak RSS {_gib(m['peak_rss_bytes'])}; load {_load(m)}"
                )
        train = entry.get("train")
        if train is None:
            continue
        if "skipped" in train:
            lines.append(f"  training run: skipped: {train['skipped']}")
        elif train["status"] != 0:
            lines.append(f"  training run: FAILED (exit {train['status']})\n{train['stderr_tail']}")
        else:
            state = train.get("state") or {}
            lines.append(
                f"  training run: {train['wall_s']:.0f} s, peak RSS {_gib(train['peak_rss_bytes'])}; "
                f"variables {_gib(state.get('variables', 0))}, optimizer slots "
                f"{_gib(state.get('optimizer', 0))}; {train['cpu_s']:.0f} s CPU; load {_load(train)}"
            )
        steps = entry.get("steps")
        if steps is None:
            continue
        if steps["status"] != 0:
            lines.append(f"  step timing: FAILED (exit {steps['status']})\n{steps['stderr_tail']}")
        else:
            res = steps["result"]
            lines.append(
                f"  step timing: {res['users']:,} users, {res['items']:,} items, "
                f"{res['history_members']:,} history members; model built in "
                f"{res['build_s']:.0f} s, first step (trace) {res['first_step_s']:.1f} s, then "
                f"{res['step_s_median']:.2f} s wall / {res['step_cpu_s_median']:.2f} s CPU per "
                f"step (median of {res['steps']}); peak RSS {_gib(steps['peak_rss_bytes'])}; "
                f"load {_load(steps)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="50000000", help="comma-separated log sizes")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--work-dir", default=None, help="logs and caches (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--pipeline-batches", type=int, default=2500, help="batches timed (0: a whole epoch)"
    )
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument(
        "--only-train", action="store_true", help="skip the vocabulary and pipeline phases"
    )
    parser.add_argument(
        "--train-batch-size", type=int, default=None, help="training run's batch (--batch-size)"
    )
    parser.add_argument(
        "--history-max-length", type=int, default=20, help="items kept per user history"
    )
    parser.add_argument(
        "--step-batches", type=int, default=30, help="steps timed after the training run (0: none)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the caches")
    parser.add_argument("--output", default="benchmarks_out/ingest.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return None
    sizes = [int(float(r)) for r in args.rows.split(",")]
    result = run(
        sizes,
        args.users,
        args.items,
        args.work_dir,
        args.batch_size,
        args.pipeline_batches,
        args.train_steps,
        args.skip_train,
        args.keep,
        args.history_max_length,
        args.step_batches,
        args.train_batch_size,
        args.only_train,
    )
    print(_report(result))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
