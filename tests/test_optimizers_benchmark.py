"""The sparse benchmark's lean-state rows: what --lean runs, its ratios, its memory plan."""

import json

import numpy as np

from recsys.benchmarks import sparse_adam as bench


def _result(rows, optimizer, mode, ms, dim=64, dist="uniform", peak=None):
    return {
        "rows": rows,
        "dim": dim,
        "optimizer": optimizer,
        "mode": mode,
        "distribution": dist,
        "ms_per_step": ms,
        "median_ms_per_step": ms,
        "steps": 40,
        "state_bytes": 0,
        "setup_peak_rss_bytes": peak,
        "train_peak_rss_bytes": peak,
    }


def test_lean_checks_compare_with_full_sparse_adam_in_the_same_run():
    ten_m = 10_000_000
    results = [
        _result(ten_m, "sparse_adam", "step", 4.0, peak=9 * 2**30),
        _result(ten_m, "sparse_adam_lean", "step", 5.0, peak=6 * 2**30),
        _result(ten_m, "sparse_adam_lean", "update", 3.0, peak=6 * 2**30),
        _result(ten_m, "sparse_adam_lean_floor", "floor", 2.0, peak=6 * 2**30),
        _result(ten_m, "rowwise_adagrad", "step", 2.0, peak=4 * 2**30),
        _result(ten_m, "rowwise_adagrad", "update", 1.0, peak=4 * 2**30),
        _result(ten_m, "rowwise_adagrad_floor", "floor", 0.25, peak=4 * 2**30),
        # 128-d: lean only, no full SparseAdam to compare with.
        _result(ten_m, "sparse_adam_lean", "step", 7.0, dim=128, peak=10 * 2**30),
    ]
    checks = {c["check"]: c for c in bench.summarize(results)}
    lean = checks["lean SparseAdam / SparseAdam step, 10M rows (64-d, uniform)"]
    assert lean["ratio"] == 1.25 and lean["met"]
    assert checks["RowwiseAdagrad / SparseAdam step, 10M rows (64-d, uniform)"]["ratio"] == 0.5
    assert checks["lean SparseAdam update / its floor, 10,000,000 rows (64-d, uniform)"]["met"]
    floor = checks["RowwiseAdagrad update / its floor, 10,000,000 rows (64-d, uniform)"]
    assert floor["ratio"] == 4.0 and not floor["met"]
    memory = checks["peak RSS lean SparseAdam / SparseAdam, 10M rows (64-d)"]
    assert memory["ratio"] == 6 / 9 and memory["met"]
    assert checks["peak RSS RowwiseAdagrad / SparseAdam, 10M rows (64-d)"]["ratio"] == 4 / 9
    assert not any("128-d" in name for name in checks)


def test_memory_plan_counts_16_bit_moments_and_one_float_per_row():
    rows, dim = 10_000_000, 128
    table = rows * dim * 4
    assert bench.state_bytes(rows, dim, "sparse_adam") == 2 * table
    assert bench.state_bytes(rows, dim, "sparse_adam_lean") == table
    assert bench.state_bytes(rows, dim, "rowwise_adagrad") == rows * 4
    # No transient copy of the table: table, slots, a chunk and TensorFlow.
    full = bench.estimated_bytes(rows, dim, "sparse_adam")
    lean = bench.estimated_bytes(rows, dim, "sparse_adam_lean")
    assert 3 * table < full < 3 * table + 1.5 * 2**30
    assert full - lean == table
    assert bench.estimated_bytes(rows, dim, "rowwise_adagrad") < 1.5 * table


def test_lean_flag_runs_lean_and_full_on_10m_rows_leaving_out_full_128(
    monkeypatch, tmp_path, capsys
):
    spawned = []

    def fake_worker(rows, dim, kind, rounds):
        spawned.append((rows, dim, kind))
        return {"results": [_result(rows, kind, "step", 1.0, dim=dim, peak=2**30)]}

    monkeypatch.setattr(bench, "_spawn_worker", fake_worker)
    monkeypatch.setattr(bench, "free_memory_bytes", lambda: 64 * 2**30)
    output = tmp_path / "lean.json"
    assert bench.main(["--lean", "--output", str(output)]) == 0
    assert spawned == [
        (10_000_000, 64, "sparse_adam"),
        (10_000_000, 64, "sparse_adam_lean"),
        (10_000_000, 64, "rowwise_adagrad"),
        (10_000_000, 128, "sparse_adam_lean"),
        (10_000_000, 128, "rowwise_adagrad"),
    ]
    payload = json.loads(output.read_text())
    assert any("sparse_adam at 10,000,000 x 128" in s for s in payload["skipped"])
    assert len(payload["load_average"]["start"]) == 3
    assert "load average" in capsys.readouterr().out
    # Asked for by name, full SparseAdam at 128-d runs.
    spawned.clear()
    bench.main(["--lean", "--dims", "128", "--optimizers", "sparse_adam", "--output", str(output)])
    assert spawned == [(10_000_000, 128, "sparse_adam")]


def test_lean_kinds_run_in_a_small_worker():
    out = bench.run_worker(3000, 8, "sparse_adam_lean", rounds=1)["results"]
    seen = {(r["optimizer"], r["mode"]) for r in out}
    assert seen == {
        ("sparse_adam_lean", "step"),
        ("sparse_adam_lean", "update"),
        ("sparse_adam_lean_floor", "floor"),
    }
    assert {r["state_bytes"] for r in out} == {2 * 3000 * 8 * 2}
    rowwise = bench.run_worker(3000, 8, "rowwise_adagrad", rounds=1)["results"]
    assert {r["state_bytes"] for r in rowwise} == {3000 * 4}


def test_table_is_filled_in_place_chunk_by_chunk():
    import recsys  # noqa: F401
    from recsys._tf import tf

    table = tf.Variable(tf.zeros([1000, 4]))
    bench._init_table_in_chunks(table, tf, chunk_rows=300)
    values = table.numpy()
    assert (np.abs(values) <= 0.05).all() and (values != 0).all(axis=1).all()
    # Each chunk drew its own values (seeded by its first row).
    assert not np.array_equal(values[:300], values[300:600])
