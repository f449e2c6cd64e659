"""The routes helper: local path > cache > official > mirror, cached once, every failure named."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys.data.sources import (
    ChecksumError,
    DatasetUnavailableError,
    DownloadError,
    MalformedDataError,
    ParquetCache,
    Route,
    fetch_dataset,
    missing_route,
)

FIX = "To fix it, pass path=/path/to/copy."


class Fakes:
    """Routes that record when they are asked and serve tables marked with their name."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failing: dict[str, BaseException] = {}

    @staticmethod
    def tables(origin: str) -> dict[str, pd.DataFrame]:
        return {"rows": pd.DataFrame({"origin": [origin, origin], "value": [1, 2]})}

    def read_local(self, path):
        self.calls.append("local")
        return self.tables("local"), f"local:{path}"

    def route(self, name: str, **kwargs) -> Route:
        def fetch():
            self.calls.append(name)
            if name in self.failing:
                raise self.failing[name]
            return name

        return Route(name, name, fetch=fetch, read=self.tables, **kwargs)

    def fetch(self, cache_dir, path=None, routes=None):
        return fetch_dataset(
            "Fake data",
            cache_dir,
            routes if routes is not None else [self.route("official"), self.route("mirror")],
            path=path,
            read_local=self.read_local,
            fix=FIX,
            meta={"dataset": "fake"},
            local_name="fake",
        )


@pytest.fixture
def writes(monkeypatch):
    """Every ParquetCache.write, by folder."""
    done = []
    write = ParquetCache.write

    def spy(self, tables, meta):
        done.append(self.folder)
        return write(self, tables, meta)

    monkeypatch.setattr(ParquetCache, "write", spy)
    return done


def _origin(fetched) -> str:
    return fetched.tables["rows"]["origin"].iloc[0]


def test_official_first_then_the_cache_and_one_write(tmp_path, writes):
    fakes = Fakes()
    first = fakes.fetch(tmp_path / "fake" / "ds")
    assert fakes.calls == ["official"]  # the mirror is not asked when the official route works
    assert (first.source, _origin(first), first.from_cache) == ("official", "official", False)
    assert first.cache_dir == tmp_path / "fake" / "ds"
    second = fakes.fetch(tmp_path / "fake" / "ds")
    assert fakes.calls == ["official"]  # the cache beats every remote route
    assert (second.source, _origin(second), second.from_cache) == ("official", "official", True)
    assert writes == [tmp_path / "fake" / "ds"]  # stored once
    manifest = ParquetCache(first.cache_dir).manifest()
    assert (manifest["dataset"], manifest["source"]) == ("fake", "official")


def test_mirror_when_the_official_route_fails(tmp_path, writes):
    fakes = Fakes()
    fakes.failing["official"] = DownloadError("could not reach the host")
    got = fakes.fetch(tmp_path / "ds")
    assert fakes.calls == ["official", "mirror"]
    assert (got.source, _origin(got)) == ("mirror", "mirror")
    assert writes == [tmp_path / "ds"]


def test_a_local_path_beats_the_cache_and_every_route(tmp_path, writes):
    fakes = Fakes()
    fakes.fetch(tmp_path / "ds")  # fills the dataset's own cache from the official route
    copy = tmp_path / "my-copy.zip"
    copy.write_bytes(b"the user's copy")
    got = fakes.fetch(tmp_path / "ds", path=copy)
    assert fakes.calls == ["official", "local"]
    assert (got.source, _origin(got)) == (f"local:{copy}", "local")
    assert got.cache_dir.parent == tmp_path and got.cache_dir.name.startswith("ds-local-")
    again = fakes.fetch(tmp_path / "ds", path=copy)  # its own cache, keyed by the copy
    assert fakes.calls == ["official", "local"] and again.from_cache
    assert writes == [tmp_path / "ds", got.cache_dir]


def test_a_local_path_is_never_replaced_by_a_download(tmp_path):
    fakes = Fakes()
    with pytest.raises(FileNotFoundError, match=r"nope\.zip: no such file or folder \(the fake"):
        fakes.fetch(tmp_path / "ds", path=tmp_path / "nope.zip")
    assert fakes.calls == []


def test_every_failure_is_listed_in_order_with_the_fix(tmp_path, writes):
    fakes = Fakes()
    fakes.failing["official"] = DownloadError("could not reach https://official")
    fakes.failing["mirror"] = ChecksumError("sha256 mismatch")
    routes = [fakes.route("official"), fakes.route("mirror"), missing_route("TFDS", "none known")]
    with pytest.raises(DatasetUnavailableError) as err:
        fakes.fetch(tmp_path / "ds", routes=routes)
    assert fakes.calls == ["official", "mirror"]
    assert str(err.value) == "\n".join(
        [
            "could not get Fake data; every route failed:",
            "  1. local path: not given (path=None)",
            f"  2. cache: {tmp_path / 'ds'} holds no complete cache",
            "  3. official: could not reach https://official",
            "  4. mirror: sha256 mismatch",
            "  5. TFDS: none known",
            FIX,
        ]
    )
    assert writes == []


def test_only_the_declared_errors_move_on_to_the_next_route(tmp_path, writes):
    fakes = Fakes()
    fakes.failing["tfds"] = FileNotFoundError("not prepared")
    tfds = fakes.route("tfds", skip_on=(FileNotFoundError,))
    got = fakes.fetch(tmp_path / "a", routes=[tfds, fakes.route("official")])
    assert fakes.calls == ["tfds", "official"] and got.source == "official"

    def malformed(_name):
        raise MalformedDataError("u.data", 3, "bad row")

    broken = Route("official", "official", fetch=lambda: "archive", read=malformed)
    with pytest.raises(MalformedDataError, match=r"u\.data, line 3: bad row"):
        fakes.fetch(tmp_path / "b", routes=[broken, fakes.route("mirror")])
    assert "mirror" not in fakes.calls  # a broken file is shown, not hidden behind a mirror
    assert writes == [tmp_path / "a"]


def test_a_route_needs_a_fetch_or_a_reason():
    with pytest.raises(ValueError, match="Received: name='mirror', fetch=None"):
        Route("mirror")
