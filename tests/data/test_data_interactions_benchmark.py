"""python -m recsys.benchmarks.ingest: each phase in its own process with its peak RSS, the
report, and the training phase skipped with its reason until the experiment exists."""

from __future__ import annotations

import json
import sys

import pytest

from recsys.benchmarks import ingest


def test_measured_reports_status_peak_rss_and_the_json_line():
    script = "import json; x = bytearray(300 * 2**20); print('noise'); print(json.dumps({'n': 3}))"
    measured = ingest._measured([sys.executable, "-c", script])
    assert measured["status"] == 0 and measured["result"] == {"n": 3}
    assert measured["peak_rss_bytes"] > 300 * 2**20
    failed = ingest._measured([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert failed["status"] == 1 and failed["result"] is None and "boom" in failed["stderr_tail"]


@pytest.mark.slow
def test_small_run_counts_streams_and_writes_json(tmp_path, capsys):
    output = tmp_path / "ingest.json"
    result = ingest.main(
        [
            *("--rows", "20000", "--users", "500", "--items", "200", "--batch-size", "1024"),
            *("--work-dir", str(tmp_path / "work"), "--output", str(output), "--skip-train"),
            *("--pipeline-batches", "0"),
        ]
    )
    entry = result["results"][0]
    count, pipeline = entry["count"]["result"], entry["pipeline"]["result"]
    assert count["rows"] == 20_000 and count["users"] <= 500
    assert (
        pipeline["rows"] == count["train_rows"] and pipeline["batches"] == pipeline["epoch_batches"]
    )
    assert entry["count"]["peak_rss_bytes"] > 0 and entry["pipeline"]["peak_rss_bytes"] > 0
    assert json.loads(output.read_text())["results"][0]["rows"] == 20_000
    assert "vocabulary pass:" in capsys.readouterr().out
    # The caches go; the synthetic log stays for the next run.
    assert not (tmp_path / "work" / "cache-20000").exists()
    assert (tmp_path / "work" / "log-20000-500-200" / "part-00000.parquet").is_file()
