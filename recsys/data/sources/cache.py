"""Where datasets are cached, and the cache itself: Parquet tables plus a manifest.

- :func:`resolve_data_dir`: the cache root (argument, then ``RECSYS_DATA_DIR``, then
  ``./data``).
- :class:`ParquetCache`: normalized tables written as Parquet into a temporary folder
  and renamed into place with a manifest, so a half-written cache never exists.

Nothing here imports TensorFlow (pyarrow is imported when a cache is read or written).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.data.sources.errors import DataError

__all__ = [
    "CACHE_SCHEMA_VERSION",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "MANIFEST",
    "ParquetCache",
    "resolve_data_dir",
]

DATA_DIR_ENV = "RECSYS_DATA_DIR"
DEFAULT_DATA_DIR = "data"
CACHE_SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``data_dir`` if given, else ``$RECSYS_DATA_DIR``, else ``./data``.

    Args:
        data_dir: Explicit cache root (the Hydra field ``data.data_dir``).

    Returns:
        An absolute path (the folder is not created here).

    Example:
        >>> resolve_data_dir("/tmp/cache")
        PosixPath('/tmp/cache')
    """
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV)
    if chosen in (None, ""):
        chosen = DEFAULT_DATA_DIR
    return Path(os.path.expanduser(str(chosen))).absolute()


@dataclass
class ParquetCache:
    """A folder of normalized tables stored as Parquet plus a ``manifest.json``.

    :meth:`write` builds the folder under a temporary name next to it and renames it
    into place, so readers see either the complete previous state or the complete
    new one. :meth:`read` trusts a folder only when its manifest matches the schema
    version and the row counts it records.

    Example:
        >>> cache = ParquetCache(Path("data/movielens/ml-100k"))  # doctest: +SKIP
        >>> cache.write({"ratings": df}, {"source": "official"})  # doctest: +SKIP
        >>> tables, meta = cache.read()  # doctest: +SKIP
    """

    folder: Path
    schema_version: int = CACHE_SCHEMA_VERSION

    def manifest(self) -> dict[str, Any] | None:
        """The manifest if the folder holds a complete, current cache, else None."""
        path = self.folder / MANIFEST
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("schema_version") != self.schema_version:
            return None
        for name, info in meta.get("tables", {}).items():
            if not (self.folder / f"{name}.parquet").is_file():
                return None
            if not isinstance(info, dict) or "rows" not in info:
                return None
        return meta

    def exists(self) -> bool:
        """Whether a complete, current cache is present."""
        return self.manifest() is not None

    def read(
        self, columns: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        """Read every table listed in the manifest.

        Raises:
            FileNotFoundError: no complete cache here.
            DataError: a table's row count differs from the manifest.
        """
        import pyarrow.parquet as pq

        meta = self.manifest()
        if meta is None:
            raise FileNotFoundError(f"{self.folder}: no complete recsys cache here")
        tables: dict[str, pd.DataFrame] = {}
        for name, info in meta["tables"].items():
            path = self.folder / f"{name}.parquet"
            cols = None if columns is None else columns.get(name)
            df = pq.read_table(path, columns=cols).to_pandas()
            if len(df) != info["rows"]:
                raise DataError(
                    f"{path}: {len(df):,} rows, the manifest says {info['rows']:,}; "
                    f"delete {self.folder} to rebuild the cache"
                )
            tables[name] = df
        return tables, meta

    def write(self, tables: Mapping[str, pd.DataFrame], meta: Mapping[str, Any]) -> None:
        """Write all tables and the manifest atomically (temporary folder, then rename).

        An existing folder is replaced only when it is a recsys cache (has a manifest).

        Raises:
            FileExistsError: the folder exists and is not a recsys cache.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.folder.exists() and not (self.folder / MANIFEST).is_file():
            raise FileExistsError(
                f"{self.folder} exists but was not written by recsys (it has no {MANIFEST}), "
                "so it is left untouched and the Parquet cache is not written; move that "
                "folder elsewhere (and pass it as `path=` if it holds the dataset)"
            )
        parent = self.folder.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{self.folder.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            manifest = {
                "schema_version": self.schema_version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **meta,
                "tables": {},
            }
            for name, df in tables.items():
                table = pa.Table.from_pandas(df, preserve_index=False)
                pq.write_table(table, tmp / f"{name}.parquet")
                manifest["tables"][name] = {"rows": len(df), "columns": list(df.columns)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            old = None
            if self.folder.exists():
                old = parent / f".{self.folder.name}.{uuid.uuid4().hex[:8]}.old"
                os.replace(self.folder, old)
            try:
                os.replace(tmp, self.folder)
            except OSError:
                # Another process won the race; keep its (complete) cache.
                if not ParquetCache(self.folder, self.schema_version).exists():
                    raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
