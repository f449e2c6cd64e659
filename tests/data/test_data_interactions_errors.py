"""Bad interaction logs: one error line naming the file, the column and the fix, and no
partial cache or vocabulary left behind; the command line prints it without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.__main__ import main as data_cli
from recsys.data.interactions import InteractionsDataModule, LogError, LogNotFoundError
from recsys.data.sources import DataError
from tests.data.test_data_interactions import log_frame, write_log


def _module(path, cache: Path, **overrides) -> InteractionsDataModule:
    settings = {
        "user_column": "uid",
        "item_column": "iid",
        "rating_column": "stars",
        "timestamp_column": "ts",
        "data_dir": cache,
        "block_rows": 64,
        **overrides,
    }
    return InteractionsDataModule(path, **settings)


def _fails(path, tmp_path: Path, match: str, error=LogError, **overrides) -> LogError:
    """Setup fails with one line matching ``match``; nothing is left in the cache."""
    cache = tmp_path / "cache"
    with pytest.raises(error, match=match) as caught:
        _module(path, cache, **overrides).setup()
    message = str(caught.value)
    assert "\n" not in message and "Fix: " in message
    assert isinstance(caught.value, DataError)
    root = cache / "interactions"
    leftovers = [p for p in root.rglob("*")] if root.exists() else []
    assert leftovers == [], f"partial cache left behind: {leftovers}"
    return caught.value


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD = "uid,iid,stars,ts\nu1,i1,4,100\nu2,i2,5,200\n"


@pytest.mark.parametrize("declared", ["userid", "User_Id", "user"])
def test_misspelled_column_suggests_the_close_name(tmp_path, declared):
    path = _csv(tmp_path / "log.csv", "user_id,item_id,stars,ts\nu1,i1,4,100\n")
    error = _fails(
        path,
        tmp_path,
        rf"column '{declared}': not found \(did you mean 'user_id'\?\)",
        user_column=declared,
        item_column="item_id",
    )
    assert error.file == str(path) and error.column == declared
    assert error.fix == "set data.user_column=user_id"


def test_missing_column_without_a_close_name_lists_the_columns(tmp_path):
    path = _csv(tmp_path / "log.csv", GOOD)
    error = _fails(
        path, tmp_path, "not found; the file has 'uid', 'iid', 'stars', 'ts'", rating_column="score"
    )
    assert "data.rating_column" in error.fix


def test_misspelled_feature_column(tmp_path):
    path = _csv(tmp_path / "log.csv", "uid,iid,stars,ts,genres\nu1,i1,4,100,a|b\n")
    _fails(
        path,
        tmp_path,
        r"column 'genre': not found \(did you mean 'genres'\?\).*Fix: rename the key 'genre' of "
        r"data.item_features to 'genres'",
        item_features={"genre": "multi_hot"},
    )


@pytest.mark.parametrize(
    "column,values,match",
    [
        ("uid", [1.5, 2.5], "which a user id column cannot use"),
        ("stars", [[1.0], [2.0]], "which a rating column cannot use"),
        ("ts", [True, False], "which a timestamp column cannot use"),
    ],
)
def test_wrong_type_names_the_type(tmp_path, column, values, match):
    table = {"uid": ["u1", "u2"], "iid": ["i1", "i2"], "stars": [4.0, 5.0], "ts": [1, 2]}
    table[column] = values
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table(table), path)
    error = _fails(path, tmp_path, "is (double|list<element: double>|list<item: double>|bool)")
    assert error.column == column and match in str(error)


def test_wrong_feature_type(tmp_path):
    path = tmp_path / "log.parquet"
    table = {"uid": ["u1"], "iid": ["i1"], "stars": [4.0], "ts": [1], "price": [["a"]]}
    pq.write_table(pa.table(table), path)
    _fails(path, tmp_path, "a numeric feature cannot use", item_features={"price": "numeric"})


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_null_ids_name_the_first_row(tmp_path, fmt):
    frame = pd.DataFrame(
        {"uid": ["u1", "u2", None, "u4"], "iid": ["i1", None, "i3", "i4"], "stars": 4.0, "ts": 1}
    )
    path = tmp_path / f"log.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    error = _fails(path, tmp_path, "1 null ids, the first at data row 3")
    assert error.column == "uid" and error.fix == "drop those rows or fill them"


def test_null_ids_deep_in_a_later_block_leave_no_cache(tmp_path):
    frame = log_frame(rows=500)
    frame.loc[470, "iid"] = None
    path = write_log(frame, tmp_path / "log", files=2)
    error = _fails(path, tmp_path, "null ids, the first at data row 221")
    assert error.file.endswith("part-1.parquet")


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "is empty"),
        ("uid,iid,stars,ts\n", "has no rows"),
    ],
)
def test_empty_csv(tmp_path, text, match):
    _fails(_csv(tmp_path / "log.csv", text), tmp_path, match)


def test_empty_parquet_among_good_files(tmp_path):
    folder = tmp_path / "log"
    _csv(folder / "a.csv", GOOD)
    _csv(folder / "b.csv", "uid,iid,stars,ts\n")
    _fails(folder, tmp_path, r"b\.csv: has no rows. Fix: remove the empty file or fill it")
    table = pa.table({"uid": pa.array([], pa.string()), "iid": pa.array([], pa.string()),
                      "stars": pa.array([], pa.float64()), "ts": pa.array([], pa.int64())})  # fmt: skip
    pq.write_table(table, tmp_path / "empty.parquet")
    _fails(tmp_path / "empty.parquet", tmp_path, "has no rows")


@pytest.mark.parametrize("kind", ["glob", "folder", "missing"])
def test_empty_glob_folder_or_missing_path(tmp_path, kind):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    path = {
        "glob": tmp_path / "empty" / "*.parquet",
        "folder": tmp_path / "empty",
        "missing": tmp_path / "nope.parquet",
    }[kind]
    match = {
        "glob": "the glob matches no .parquet, .csv or .tsv file",
        "folder": "the folder holds no .parquet, .csv or .tsv file",
        "missing": "no such file or folder",
    }[kind]
    error = _fails(path, tmp_path, match, error=LogNotFoundError)
    assert isinstance(error, FileNotFoundError)


def test_files_whose_schemas_differ(tmp_path):
    folder = tmp_path / "log"
    folder.mkdir()
    pq.write_table(
        pa.table({"uid": ["u1"], "iid": ["i1"], "stars": [4.0], "ts": [1]}), folder / "a.parquet"
    )
    pq.write_table(
        pa.table({"uid": [7], "iid": ["i2"], "stars": [5.0], "ts": [2]}), folder / "b.parquet"
    )
    error = _fails(folder, tmp_path, r"column 'uid': is integer here but string in .*a\.parquet")
    assert error.file.endswith("b.parquet")
    assert error.fix == "write every file of the log with the same schema"
    pq.write_table(
        pa.table({"uid": ["u3"], "item": ["i2"], "stars": [5.0], "ts": [2]}), folder / "b.parquet"
    )
    _fails(folder, tmp_path, r"b\.parquet: column 'iid': not found")


def test_mixed_parquet_and_csv(tmp_path):
    folder = tmp_path / "log"
    _csv(folder / "a.csv", GOOD)
    pq.write_table(
        pa.table({"uid": ["u1"], "iid": ["i1"], "stars": [4.0], "ts": [1]}), folder / "b.parquet"
    )
    _fails(folder, tmp_path, "mixes Parquet and CSV/TSV files")


@pytest.mark.parametrize(
    "stars,match",
    [
        ("five", "'five' at data row 2 is not a number"),
        ("", "1 null ratings, the first at data row 2"),
        ("inf", "inf at data row 2 is not a finite number"),
        ("NaN", "1 null ratings"),  # pyarrow reads NaN in CSV as a missing value
    ],
)
def test_non_numeric_ratings(tmp_path, stars, match):
    path = _csv(tmp_path / "log.csv", f"uid,iid,stars,ts\nu1,i1,4,100\nu2,i2,{stars},200\n")
    error = _fails(path, tmp_path, match)
    assert error.column == "stars"


@pytest.mark.parametrize(
    "times,match",
    [
        ("2020-01-01,yesterday", "'yesterday' at data row 2 is not an integer time or an ISO-8601"),
        ("1600000000,16e8", "'16e8' at data row 2 is not an integer time"),
        ("2020-01-01,", "1 null timestamps, the first at data row 2"),
    ],
)
def test_unparsable_timestamps(tmp_path, times, match):
    first, second = times.split(",")
    path = _csv(tmp_path / "log.csv", f"uid,iid,stars,ts\nu1,i1,4,{first}\nu2,i2,5,{second}\n")
    error = _fails(path, tmp_path, match)
    assert error.column == "ts"


def test_good_timestamps_in_every_form(tmp_path):
    path = _csv(
        tmp_path / "log.csv",
        "uid,iid,stars,ts\nu1,i1,4,2020-01-01\nu2,i2,5,2020-01-01T01:00:00Z\n"
        "u3,i3,5,2020-01-01T03:00:00+02:00\n",
    )
    dm = _module(path, tmp_path / "cache", test_fraction=0.01).setup()
    times = np.concatenate([dm.interactions(s).timestamps for s in ("train", "test")])
    assert sorted(times.tolist()) == [1577836800, 1577836800 + 3600, 1577836800 + 3600]


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = _csv(tmp_path / "log.csv", GOOD)
    status = data_cli(
        [
            "interactions",
            "--path",
            str(path),
            "--user-column",
            "ui",
            "--data-dir",
            str(tmp_path / "c"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: column 'ui': not found (did you mean 'uid'?)")


def test_settings_are_checked_before_reading(tmp_path):
    with pytest.raises(ValueError, match="`test_fraction` must be a number in"):
        _module(tmp_path, tmp_path, test_fraction=1.5)
    with pytest.raises(ValueError, match=r"`item_features\.genres` must be one of"):
        _module(tmp_path, tmp_path, item_features={"genres": "tags"})
    with pytest.raises(ValueError, match="declared twice"):
        _module(tmp_path, tmp_path, item_features={"uid": "id"})
    with pytest.raises(ValueError, match=r"split=time needs data\.timestamp_column"):
        _module(tmp_path, tmp_path, split="time", timestamp_column=None)
    with pytest.raises(ValueError, match="`vocabulary` keys must be 'user' and/or 'item'"):
        _module(tmp_path, tmp_path, vocabulary={"users": "hashed"})


def test_cache_dir_that_is_not_a_cache_is_not_replaced(tmp_path):
    path = _csv(tmp_path / "log.csv", GOOD)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(LogError, match="exists and is not a recsys interactions cache"):
        _module(path, tmp_path / "c", cache_dir=folder).setup()
    assert (folder / "precious.txt").read_text() == "keep me"


def test_train_command_prints_one_line_exits_2_and_leaves_nothing(tmp_path):
    """`python -m recsys.train +experiment=interactions` with a misspelled column: the
    user of the command line sees the error line, never a traceback."""
    path = _csv(tmp_path / "log.csv", GOOD)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys.train",
            "+experiment=interactions",
            f"data.path={path}",
            "data.user_column=ui",
            "data.item_column=iid",
            f"data.data_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "hardware.allocator=none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    output = run.stdout + run.stderr
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    assert str(path) in errors[0] and "'ui'" in errors[0] and "did you mean 'uid'?" in errors[0]
    root = tmp_path / "cache" / "interactions"
    assert not root.exists() or list(root.rglob("*")) == []
