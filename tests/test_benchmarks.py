"""The SparseAdam benchmark: its worker processes, its JSON and the ratios it checks."""

import json

import numpy as np
import pytest

from recsys.benchmarks import sparse_adam as bench


def test_make_ids_uniform_and_zipf_stay_in_the_table():
    rows = 1_000_000
    uniform = bench.make_ids(rows, "uniform", n_batches=3)
    zipf = bench.make_ids(rows, "zipf", n_batches=3)
    for ids in (uniform, zipf):
        assert ids.shape == (3, bench.BATCH_IDS) and ids.dtype == np.int32
        assert ids.min() >= 0 and ids.max() < rows
    # Zipf ids repeat far more (about 2,400 distinct of 4,096 against 4,090).
    assert len(np.unique(zipf[0])) < 0.7 * len(np.unique(uniform[0]))
    assert len(np.unique(uniform[0])) > 0.99 * bench.BATCH_IDS


def _result(rows, optimizer, mode, ms, dim=64, dist="uniform"):
    return {
        "rows": rows,
        "dim": dim,
        "optimizer": optimizer,
        "mode": mode,
        "distribution": dist,
        "ms_per_step": ms,
    }


def test_summarize_computes_the_targeted_ratios():
    results = [
        _result(20_000, "sparse_adam", "step", 2.0),
        _result(10_000_000, "sparse_adam", "step", 5.0),
        _result(1_000_000, "sparse_adam", "step", 2.5),
        _result(1_000_000, "keras_adam", "step", 300.0),
        _result(1_000_000, "sparse_adam", "update", 2.0),
        _result(1_000_000, "floor", "floor", 1.0),
    ]
    checks = {c["check"]: c for c in bench.summarize(results)}
    growth = checks["SparseAdam step, 10M rows / 20k rows (64-d, uniform)"]
    assert growth["ratio"] == 2.5 and not growth["met"]
    speedup = checks["tf-keras Adam / SparseAdam step, 1M rows (64-d, uniform)"]
    assert speedup["ratio"] == 120.0 and speedup["met"]
    floor = checks["SparseAdam update / floor, 1,000,000 rows (64-d, uniform)"]
    assert floor["ratio"] == 2.0 and floor["met"]
    # Nothing measured for Zipf ids: no check invented for them.
    assert not any("zipf" in name for name in checks)


@pytest.mark.slow  # trains tf-keras Adam and SparseAdam on small tables (about 30 s)
def test_small_run_writes_json_and_table(tmp_path, capsys):
    output = tmp_path / "bench.json"
    code = bench.main(
        [
            *("--rows", "3000", "--dims", "8", "--rounds", "1", "--output", str(output)),
            *("--optimizers", "sparse_adam,sparse_adam_unfused,keras_adam"),
        ]
    )
    assert code == 0
    payload = json.loads(output.read_text())
    assert not payload["skipped"], payload["skipped"]
    seen = {(r["optimizer"], r["mode"], r["distribution"]) for r in payload["results"]}
    for dist in bench.DISTRIBUTIONS:
        for optimizer, mode in [
            ("sparse_adam", "step"),
            ("sparse_adam", "update"),
            ("sparse_adam_unfused", "step"),
            ("sparse_adam_unfused", "update"),
            ("floor", "floor"),
            ("keras_adam", "step"),
            ("keras_adam", "update"),
        ]:
            assert (optimizer, mode, dist) in seen
    for r in payload["results"]:
        assert r["rows"] == 3000 and r["dim"] == 8
        assert 0 < r["ms_per_step"] <= r["median_ms_per_step"]
        assert r["table_bytes"] == 3000 * 8 * 4 and r["setup_peak_rss_bytes"] > 0
    out = capsys.readouterr().out
    assert "sparse_adam" in out and "keras_adam" in out and str(output) in out


def test_imdb_benchmark_refuses_unknown_optimizers(capsys):
    import pytest

    from recsys.benchmarks import imdb_optimizers

    with pytest.raises(SystemExit):
        imdb_optimizers.main(["--path", "unused", "--order", "adam,lazy_adam"])
    err = capsys.readouterr().err
    assert "unknown optimizers ['lazy_adam']" in err and "sparse_adam_unfused" in err


def test_sparse_adam_benchmark_refuses_unknown_optimizers(capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench.main(["--optimizers", "sparse_adam,sgd"])
    assert "unknown optimizers ['sgd']" in capsys.readouterr().err
