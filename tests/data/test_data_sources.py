"""Downloads, checksums, mirrors, safe archives and the Parquet cache (recsys.data.sources)."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from recsys.data import sources
from recsys.data.sources import (
    ChecksumError,
    DownloadError,
    MirrorWheel,
    ParquetCache,
    RemoteFile,
    SourceTree,
    UnsafeArchiveError,
    download,
    fetch_wheel,
    resolve_data_dir,
    safe_extract,
)
from tests.helpers.data import make_mirror_wheel, sha256, snapshot, tar_with

PAYLOAD = os.urandom(300_000)


def _remote(url: str, body: bytes = PAYLOAD, name: str = "fixture.zip") -> RemoteFile:
    return RemoteFile(url, name, len(body), sha256(body))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------- data dir


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("RECSYS_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == tmp_path / "data"


# ----------------------------------------------------------------- downloads


def test_download_verifies_and_renames_into_place(http_server, tmp_path):
    url = http_server.serve("/ml.zip", PAYLOAD)
    dest = tmp_path / "downloads"
    got = download(_remote(url), dest, progress=False)
    assert got == dest / "fixture.zip"
    assert got.read_bytes() == PAYLOAD
    assert _leftovers(dest) == ["fixture.zip"]  # no *.part left behind
    # A verified copy is reused without asking the server again.
    assert download(_remote(url), dest, progress=False) == got
    assert http_server.hits == ["/ml.zip"]


def test_download_checksum_mismatch_deletes_the_file_and_names_digests(http_server, tmp_path):
    url = http_server.serve("/ml.zip", PAYLOAD, mode="corrupt")
    dest = tmp_path / "downloads"
    with pytest.raises(ChecksumError) as err:
        download(_remote(url), dest, progress=False)
    message = str(err.value)
    corrupted = bytes([PAYLOAD[0] ^ 0xFF]) + PAYLOAD[1:]
    assert str(dest / "fixture.zip") in message
    assert f"expected {sha256(PAYLOAD)}" in message
    assert f"actual {sha256(corrupted)}" in message
    assert _leftovers(dest) == []


def test_interrupted_download_leaves_nothing(http_server, tmp_path):
    url = http_server.serve("/ml.zip", PAYLOAD, mode="truncate")
    dest = tmp_path / "downloads"
    with pytest.raises(DownloadError) as err:
        download(_remote(url), dest, progress=False)
    message = str(err.value)
    assert f"{len(PAYLOAD) // 2:,}" in message and f"{len(PAYLOAD):,}" in message
    assert _leftovers(dest) == []


def test_unreachable_host_fails_fast(closed_port_url, tmp_path):
    start = time.monotonic()
    with pytest.raises(DownloadError, match="could not reach"):
        download(_remote(closed_port_url + "/x.zip"), tmp_path, progress=False)
    assert time.monotonic() - start < 5


def test_a_foreign_file_in_the_downloads_cache_is_left_alone(http_server, tmp_path):
    url = http_server.serve("/ml.zip", PAYLOAD)
    dest = tmp_path / "downloads"
    dest.mkdir()
    (dest / "fixture.zip").write_bytes(b"the user's own file")
    with pytest.raises(ChecksumError) as err:
        download(_remote(url), dest, progress=False)
    message = str(err.value)
    assert (
        str(dest / "fixture.zip") in message and "left as it is" in message and "path=" in message
    )
    assert (dest / "fixture.zip").read_bytes() == b"the user's own file"
    assert http_server.hits == []


# ----------------------------------------------------------------- mirror wheels


def _wheel_spec(wheel: Path, index_url: str, sha: str | None = None) -> MirrorWheel:
    data = wheel.read_bytes()
    return MirrorWheel(
        project="recbole",
        version="1.2.1",
        filename=wheel.name,
        size=len(data),
        sha256=sha or sha256(data),
        members="recbole/dataset_example/ml-100k",
        credit="test mirror",
        index_url=index_url,
    )


def _serve_index(http_server, wheel: Path) -> None:
    wheel_url = http_server.serve("/files/" + wheel.name, wheel.read_bytes())
    listing = {"files": [{"filename": wheel.name, "url": wheel_url, "hashes": {}}]}
    http_server.serve(
        "/simple/recbole/",
        json.dumps(listing).encode(),
        content_type="application/vnd.pypi.simple.v1+json",
    )


def test_fetch_wheel_through_the_simple_index(http_server, tmp_path):
    wheel = make_mirror_wheel(tmp_path, "100k")
    _serve_index(http_server, wheel)
    got = fetch_wheel(
        _wheel_spec(wheel, http_server.base_url + "/simple"), tmp_path / "dl", progress=False
    )
    assert got.read_bytes() == wheel.read_bytes()
    assert http_server.hits == ["/simple/recbole/", "/files/" + wheel.name]


def test_fetch_wheel_refuses_a_wheel_that_does_not_match_the_pin(http_server, tmp_path):
    wheel = make_mirror_wheel(tmp_path, "100k")
    _serve_index(http_server, wheel)
    spec = _wheel_spec(wheel, http_server.base_url + "/simple", sha="0" * 64)
    with pytest.raises(ChecksumError, match="expected 0000"):
        fetch_wheel(spec, tmp_path / "dl", progress=False)
    assert _leftovers(tmp_path / "dl") == []


def test_fetch_wheel_falls_back_to_pip_download(closed_port_url, tmp_path, monkeypatch):
    """pip honours its own configuration; here it may only look in a local folder."""
    links = tmp_path / "links"
    links.mkdir()
    wheel = make_mirror_wheel(links, "100k")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    got = fetch_wheel(
        _wheel_spec(wheel, closed_port_url + "/simple"),
        tmp_path / "dl",
        progress=False,
        use_pip=True,
    )
    assert got == tmp_path / "dl" / wheel.name
    assert sha256(got.read_bytes()) == sha256(wheel.read_bytes())
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [wheel.name]


# ----------------------------------------------------------------- archives


def _evil_tars(tmp_path: Path) -> dict[str, Path]:
    good = tarfile.TarInfo("pkg/ok.txt")
    out = {}
    out["dotdot"] = tar_with(
        [(good, b"fine"), (tarfile.TarInfo("pkg/../../escaped.txt"), b"evil")],
        tmp_path / "dotdot.tar.gz",
    )
    out["absolute"] = tar_with(
        [(good, b"fine"), (tarfile.TarInfo(str(tmp_path / "abs_escaped.txt")), b"evil")],
        tmp_path / "absolute.tar.gz",
    )
    link = tarfile.TarInfo("pkg/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../outside"
    out["symlink"] = tar_with([(good, b"fine"), (link, None)], tmp_path / "symlink.tar.gz")
    abs_link = tarfile.TarInfo("pkg/abslink")
    abs_link.type = tarfile.SYMTYPE
    abs_link.linkname = "/etc/passwd"
    out["abs_symlink"] = tar_with([(good, b"fine"), (abs_link, None)], tmp_path / "abslink.tar.gz")
    hard = tarfile.TarInfo("pkg/hard")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "../outside"
    out["hardlink"] = tar_with([(good, b"fine"), (hard, None)], tmp_path / "hard.tar.gz")
    return out


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "abs_symlink", "hardlink"])
def test_safe_extract_refuses_escaping_members_and_writes_nothing(tmp_path, kind):
    (tmp_path / "archives").mkdir()
    archive = _evil_tars(tmp_path / "archives")[kind]
    work = tmp_path / "work"
    target = work / "a" / "b" / "target"
    target.mkdir(parents=True)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, target)
    assert str(archive) in str(err.value)
    assert snapshot(tmp_path) == before  # nothing written anywhere, not even the good member
    assert not (tmp_path / "abs_escaped.txt").exists()
    assert list(target.iterdir()) == []
    with pytest.raises(UnsafeArchiveError):  # reading is refused the same way
        SourceTree(archive)


def test_safe_extract_refuses_zip_with_dotdot(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escaped.txt", "evil")
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./escaped\.txt'"):
        safe_extract(archive, target)
    assert not (tmp_path / "escaped.txt").exists()
    assert not target.exists() or list(target.iterdir()) == []


def test_safe_extract_accepts_internal_links_and_plain_archives(tmp_path):
    good = tarfile.TarInfo("pkg/data/ok.txt")
    link = tarfile.TarInfo("pkg/alias.txt")
    link.type = tarfile.SYMTYPE
    link.linkname = "data/ok.txt"
    archive = tar_with([(good, b"fine"), (link, None)], tmp_path / "ok.tar.gz")
    written = safe_extract(archive, tmp_path / "out")
    assert written == [tmp_path / "out" / "pkg/data/ok.txt"]
    assert (tmp_path / "out/pkg/alias.txt").read_text() == "fine"
    zipped = tmp_path / "ok.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("d/a.txt", "A")
        zf.writestr("d/b.txt", "B")
    assert safe_extract(zipped, tmp_path / "z", members=lambda n: n.endswith("a.txt")) == [
        tmp_path / "z/d/a.txt"
    ]
    assert not (tmp_path / "z/d/b.txt").exists()


def test_source_tree_reads_folder_zip_and_tar_alike(tmp_path):
    folder = tmp_path / "src" / "ml-x"
    (folder / "sub").mkdir(parents=True)
    (folder / "u.data").write_bytes(b"top")
    (folder / "sub" / "u.data").write_bytes(b"deep")
    (folder / "link.data").symlink_to(folder / "u.data")
    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ml-x/u.data", "top")
        zf.writestr("ml-x/sub/u.data", "deep")
    t = tmp_path / "x.tar.gz"
    with tarfile.open(t, "w:gz") as tar:
        for name, data in (("ml-x/u.data", b"top"), ("ml-x/sub/u.data", b"deep")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for src in (tmp_path / "src", z, t):
        with SourceTree(src) as tree:
            name = tree.find("u.data")
            assert name == "ml-x/u.data"
            assert tree.read_bytes(name) == b"top"
            assert "ml-x/link.data" not in tree.names()  # links are never followed
    with pytest.raises(sources.DataError, match="not a folder, zip file or tarball"):
        SourceTree(Path(__file__))


# ----------------------------------------------------------------- parquet cache


def test_parquet_cache_round_trip_and_manifest(tmp_path):
    cache = ParquetCache(tmp_path / "c" / "ds")
    df = pd.DataFrame({"a": [1, 2], "g": [["x"], []]})
    cache.write({"t": df}, {"source": "unit"})
    tables, meta = cache.read()
    assert meta["source"] == "unit" and meta["tables"]["t"]["rows"] == 2
    assert tables["t"]["a"].tolist() == [1, 2]
    assert [list(v) for v in tables["t"]["g"]] == [["x"], []]
    assert _leftovers(tmp_path / "c") == ["ds"]


def test_parquet_cache_failed_write_leaves_no_half_written_folder(tmp_path):
    cache = ParquetCache(tmp_path / "c" / "ds")
    bad = pd.DataFrame({"mixed": [1, "x"]})  # pyarrow cannot store this column
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's own error type
        cache.write({"good": pd.DataFrame({"a": [1]}), "bad": bad}, {"source": "unit"})
    assert _leftovers(tmp_path / "c") == []
    assert not cache.exists()


def test_parquet_cache_ignores_incomplete_or_stale_folders(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "t.parquet").write_bytes(b"junk")
    assert not ParquetCache(folder).exists()  # no manifest
    (folder / "manifest.json").write_text(json.dumps({"schema_version": -1, "tables": {}}))
    assert not ParquetCache(folder).exists()  # other schema version


def test_attribution_prints_when_logging_is_not_configured(capsys, monkeypatch):
    monkeypatch.setattr(sources.routes, "_ATTRIBUTED", set())
    sources.attribute("Data by someone.")
    sources.attribute("Data by someone.")
    assert capsys.readouterr().err.count("Data by someone.") == (
        0 if sources.logger.hasHandlers() and sources.logger.isEnabledFor(20) else 1
    )


def test_importing_recsys_data_does_not_import_tensorflow():
    import subprocess

    code = "import sys, recsys.data, recsys.data.splits; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_file_on_the_server_names_the_status(http_server, tmp_path):
    with pytest.raises(
        DownloadError, match=r"could not download .*/gone\.zip: the server answered HTTP 404"
    ):
        download(_remote(http_server.base_url + "/gone.zip"), tmp_path / "dl", progress=False)
    assert _leftovers(tmp_path / "dl") == []
