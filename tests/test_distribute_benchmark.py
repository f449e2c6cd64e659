"""``python -m recsys.benchmarks.distributed``: its report and its argument checks."""

from __future__ import annotations

import pytest

from recsys.benchmarks.distributed import CONFIGS, main, summarize


def _result(config, processes, table_mib=1000.0, shards=2):
    return {
        "config": config,
        "table_mib": table_mib,
        "shards": shards,
        "steps_per_second": 12.5,
        "processes": [
            {"role": role, "baseline_mib": 500.0, "peak_mib": 500.0 + gain, "gain_mib": gain}
            for role, gain in processes
        ],
    }


def test_summary_has_a_row_per_process_and_checks_the_memory_targets():
    lines = summarize(
        [
            _result("single", [("process", 3000.0)]),
            _result(
                "1w2ps", [("chief", 30.0), ("worker 0", 10.0), ("ps 0", 1500.0), ("ps 1", 2100.0)]
            ),
        ]
    )
    rows = [line for line in lines if line.startswith("| 1w2ps")]
    assert len(rows) == 4 and "| 12.5 |" in rows[0]
    checks = [line for line in lines if line.startswith("1w2ps")]
    # Chief: 30 MiB of a 1000 MiB table is 3.0% (< 5%).
    assert "chief gain 30 MiB = 3.0% of the table" in checks[0] and checks[0].endswith("ok")
    # Each ps may gain 3 x 1000 / 2 + 1000 / 2 = 2000 MiB.
    assert checks[1].startswith("1w2ps: ps 0 gain 1,500 MiB") and checks[1].endswith("ok")
    assert checks[2].startswith("1w2ps: ps 1 gain 2,100 MiB") and checks[2].endswith("MISSED")
    assert not [line for line in lines if line.startswith("single:")]


def test_configs_are_the_three_of_the_issue():
    assert CONFIGS == {"single": (0, 0), "1w2ps": (1, 2), "2w2ps": (2, 2)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--configs", "4w"], "--configs takes names from single, 1w2ps, 2w2ps"),
        (["--rows", "0"], "--rows must be >= 1. Received: --rows=0"),
    ],
)
def test_bad_arguments_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_summary_shows_where_the_chief_grew():
    result = _result("1w2ps", [("chief", 60.0), ("ps 0", 100.0)])
    result["phases"] = [
        {"phase": "connected", "rss_gain_mib": 0.0, "peak_gain_mib": 0.0},
        {"phase": "fit epoch 1", "rss_gain_mib": 42.4, "peak_gain_mib": 44.0},
    ]
    (line,) = [line for line in summarize([result]) if line.startswith("phases of")]
    assert line == (
        "phases of 1w2ps's chief, MiB over its baseline: connected +0 (peak +0), "
        "fit epoch 1 +42 (peak +44)"
    )


def test_the_chiefs_gain_is_also_checked_after_its_first_remote_op():
    from recsys.benchmarks.distributed import WARM_PHASE

    result = _result("1w2ps", [("chief", 70.0), ("ps 0", 100.0)], table_mib=1000.0)
    result["phases"] = [
        {"phase": "connected", "rss_gain_mib": 0.0, "peak_gain_mib": 0.0},
        {"phase": WARM_PHASE, "rss_gain_mib": 42.0, "peak_gain_mib": 42.0},
    ]
    checks = [line for line in summarize([result]) if line.startswith("1w2ps: chief")]
    assert checks[0].endswith("7.0% of the table (1,000 MiB); target < 5%: MISSED")
    assert "one-time start, +42 MiB) 28 MiB = 2.8% of the table" in checks[1]
    assert checks[1].endswith("ok")
