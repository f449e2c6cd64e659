"""``data=interactions``: your own interaction log as a recsys data module.

:class:`InteractionsDataModule` implements the model-data contract
(:class:`~recsys.data.contract.InteractionData`, and
:class:`~recsys.data.contract.FeatureData` for the declared side features and id
spaces) for Parquet/CSV/TSV files of any size:

1. ``setup()``: find the files, check every header (columns, types, same schema in
   every file), then run the counting pass once (validating every row, splitting,
   counting every id) and cache its index; later runs on the same files and
   settings reuse it. Writes the counted vocabularies as Parquet.
2. The contract's containers come from streaming passes, run on first use: the
   catalogue, the user table and the evaluation splits' rows from one encoding
   pass; per-user histories grouped on disk and memory-mapped. The training rows
   are never held (only on explicit request: ``interactions("train")``).
3. ``train_dataset()`` streams epochs from the files (bounded memory, deterministic
   for a seed, known length, can start at any batch); ``val_dataset()`` and
   ``test_dataset()`` batch the encoded splits.

Nothing here imports TensorFlow at module level.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.checks import check_positive_int
from recsys.data.contract import (
    SPLITS,
    Catalogue,
    Histories,
    IdSpace,
    Interactions,
    UserFeatures,
)
from recsys.data.interactions.cache import cache_key
from recsys.data.interactions.config import (
    IdSpaceSpec,
    LogColumns,
    SplitSpec,
    id_space_specs,
)
from recsys.data.interactions.encode import EncodedLog, encode_log
from recsys.data.interactions.errors import LogError
from recsys.data.interactions.files import (
    LogFile,
    check_schemas,
    find_log_files,
    release_arrow_memory,
)
from recsys.data.interactions.index import INDEX_VERSION, LogIndex, build_index, load_index
from recsys.data.interactions.vocabularies import id_space, write_vocabulary
from recsys.data.sources import resolve_data_dir

if TYPE_CHECKING:  # pragma: no cover
    from recsys._tf import tf

__all__ = ["InteractionsDataModule"]

log = logging.getLogger(__name__)


class InteractionsDataModule:
    """An interaction log (Parquet, CSV or TSV files) as train / val / test data.

    Example:
        >>> dm = InteractionsDataModule(  # doctest: +SKIP
        ...     path="logs/*.parquet", user_column="uid", item_column="sku",
        ...     rating_column="stars", timestamp_column="ts",
        ...     user_features={"country": "id"},
        ...     item_features={"genres": "multi_hot", "title": "text", "price": "numeric"})
        >>> dm.setup()  # doctest: +SKIP
        >>> dm.catalogue().features["genres"][:2]  # doctest: +SKIP
        [['Drama'], ['Action', 'Comedy']]
        >>> next(iter(dm.train_dataset()))["user_id"].shape  # doctest: +SKIP
        TensorShape([4096])

    Args:
        path: A file, a folder (its ``.parquet``/``.csv``/``.tsv`` files) or a glob.
        user_column: The user id column.
        item_column: The item id column.
        rating_column: The rating column, or None (implicit feedback).
        timestamp_column: The time column, or None (needed by ``split=time``).
        user_features: ``{column: kind}`` for the user tower; kinds ``id``,
            ``multi_hot``, ``text``, ``numeric``. One value per user: its first row's.
        item_features: ``{column: kind}`` for the item tower (one value per item).
        multi_hot_separator: Splits text columns of ``multi_hot`` features.
        split: ``random`` (by a hash of (user, item) and ``seed``) or ``time``.
        test_fraction: Test share (``random``; ``time`` without ``time_cutoff``).
        val_fraction: Share of the rest held out for validation, the same way.
        time_cutoff: ``time``: first test time (Unix seconds or a date, UTC).
        seed: Seed of the split and of the training shuffle.
        batch_size: Rows per batch.
        vocabulary: ``counted`` or ``hashed`` for both towers, or
            ``{user: ..., item: ...}`` (see :func:`~recsys.data.interactions.config.id_space_specs`).
        min_count: ``counted``: ids seen fewer times in training are OOV.
        max_size: ``counted``: keep the most frequent ids only.
        oov_buckets: ``counted``: rows shared by out-of-vocabulary ids.
        num_buckets: ``hashed``: rows of the id table.
        num_hashes: ``hashed``: 1 or 2 hashes per id.
        shuffle_window_rows: Training rows shuffled together (memory: about 60 bytes
            a row, twice over while one window is read and the next decoded).
        block_rows: Rows per block (a unit of reading and of the shuffle).
        data_dir: Cache root (``<data_dir>/interactions/<key>``); None:
            ``$RECSYS_DATA_DIR`` or ``./data``.
        cache_dir: The cache folder itself (overrides ``data_dir``).
        vocabulary_dir: A folder that also gets the vocabularies (e.g. the run's).

    Raises:
        ValueError: A setting is out of range (named, with the value received).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        user_column: str = "user_id",
        item_column: str = "item_id",
        rating_column: str | None = None,
        timestamp_column: str | None = None,
        user_features: Mapping[str, str] | None = None,
        item_features: Mapping[str, str] | None = None,
        multi_hot_separator: str = "|",
        split: str = "random",
        test_fraction: float = 0.2,
        val_fraction: float = 0.0,
        time_cutoff: int | str | None = None,
        seed: int = 42,
        batch_size: int = 4096,
        vocabulary: str | Mapping[str, Any] = "counted",
        min_count: int = 1,
        max_size: int | None = None,
        oov_buckets: int = 1,
        num_buckets: int = 1 << 20,
        num_hashes: int = 1,
        shuffle_window_rows: int = 1_000_000,
        block_rows: int = 1 << 17,
        data_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        vocabulary_dir: str | os.PathLike[str] | None = None,
    ):
        if path in (None, ""):
            raise ValueError("`path` must name the log's file, folder or glob. Received: path=None")
        self.path = str(path)
        self.columns = LogColumns(
            user_column,
            item_column,
            rating_column,
            timestamp_column,
            dict(user_features or {}),
            dict(item_features or {}),
            multi_hot_separator,
        )
        self.split_spec = SplitSpec(split, test_fraction, val_fraction, seed, time_cutoff)
        if split == "time" and timestamp_column is None:
            raise ValueError(
                "split=time needs data.timestamp_column. Received: timestamp_column=None"
            )
        self.id_specs: dict[str, IdSpaceSpec] = id_space_specs(
            vocabulary,
            min_count=min_count,
            max_size=max_size,
            oov_buckets=oov_buckets,
            num_buckets=num_buckets,
            num_hashes=num_hashes,
        )
        self.seed = int(seed)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.shuffle_window_rows = check_positive_int("shuffle_window_rows", shuffle_window_rows)
        self.block_rows = check_positive_int("block_rows", block_rows)
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.vocabulary_dir = vocabulary_dir
        self.index: LogIndex | None = None
        self.files: list[LogFile] = []

    def __repr__(self) -> str:
        return (
            f"InteractionsDataModule(path={self.path!r}, user_column={self.columns.user!r}, "
            f"item_column={self.columns.item!r}, split={self.split_spec.kind!r}, "
            f"seed={self.seed}, batch_size={self.batch_size})"
        )

    # ------------------------------------------------------------------ setup
    def _cache_folder(self, files: Sequence[LogFile]) -> tuple[Path, dict[str, Any]]:
        depends_on = {
            "version": INDEX_VERSION,
            "files": [f.describe() for f in files],
            "columns": self.columns.describe(),
            "split": self.split_spec.describe(),
            "block_rows": self.block_rows,
        }
        if self.cache_dir not in (None, ""):
            return Path(os.path.expanduser(str(self.cache_dir))).absolute(), depends_on
        root = resolve_data_dir(self.data_dir) / "interactions"
        return root / f"{Path(files[0].path).stem}-{cache_key(depends_on)}", depends_on

    def setup(self) -> InteractionsDataModule:
        """Check the files, count the log (or reuse its cache), write the vocabularies.

        Idempotent. Returns self.

        Raises:
            LogError: The files cannot be used as declared (one line: file, column, fix).
        """
        if self.index is not None:
            return self
        files = find_log_files(self.path)
        check_schemas(files, self.columns)
        folder, depends_on = self._cache_folder(files)
        index = load_index(folder, self.columns, self.split_spec)
        if index is not None and self._manifest_matches(folder, depends_on):
            log.info("Reusing the counted log in %s", folder)
        else:
            if folder.exists():
                _replaceable(folder)
                log.info("Recounting: %s was made for other files or settings", folder)
                shutil.rmtree(folder)
            index = build_index(
                files, self.columns, self.split_spec, folder, depends_on, self.block_rows
            )
        self.files = files
        self.index = index
        self._write_vocabularies()
        release_arrow_memory()
        return self

    @staticmethod
    def _manifest_matches(folder: Path, depends_on: dict[str, Any]) -> bool:
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        return json.loads(json.dumps(depends_on)) == manifest.get("depends_on")

    def _write_vocabularies(self) -> None:
        cached = self._index.folder / "vocabularies" / cache_key(self._id_describe())
        targets = [cached]
        if self.vocabulary_dir not in (None, ""):
            targets.append(Path(os.path.expanduser(str(self.vocabulary_dir))))
        for tower in ("user", "item"):
            space = self.id_space(tower)
            if space.kind == "vocabulary":
                for folder in targets:
                    path = folder / f"{tower}_vocabulary.parquet"
                    if folder != cached or not path.is_file():
                        write_vocabulary(path, space)

    def _id_describe(self) -> dict[str, Any]:
        return {tower: spec.describe() for tower, spec in self.id_specs.items()}

    @property
    def _index(self) -> LogIndex:
        self.setup()
        assert self.index is not None
        return self.index

    @cached_property
    def _encoded(self) -> EncodedLog:
        # The catalogue, the user table and the evaluation splits. The training rows
        # are not kept: training streams them from the files, and histories are
        # grouped on disk (see histories()), so memory does not follow the log's size.
        encoded = encode_log(self._index, keep=("val", "test"))
        release_arrow_memory()
        return encoded

    @cached_property
    def _train_rows(self) -> Interactions:
        return encode_log(self._index, keep=("train",)).splits["train"]

    # --------------------------------------------------------------- contract
    @cached_property
    def user_vocabulary(self) -> np.ndarray:
        """Sorted unique ids of the users with training rows."""
        users = self._index.users
        return users.sorted_ids[users.sorted_column(users.counts[:, 0]) > 0]

    def item_counts(self, split: str = "train") -> np.ndarray:
        """Rows of ``split`` of every catalogue item (int64, aligned with ``catalogue().ids``).

        From the counting pass: the item frequencies (e.g. for a sampling-bias
        correction) without encoding a single row.
        """
        items = self._index.items
        return items.sorted_column(items.counts[:, SPLITS.index(_check_split(split))])

    def catalogue(self) -> Catalogue:
        """Every item of the log (any split), sorted, with the declared item features."""
        return self._encoded.catalogue

    def user_table(self) -> UserFeatures:
        """Every user of the log (any split), sorted, with the declared user features."""
        return self._encoded.users

    def interactions(self, split: str) -> Interactions:
        """The rows of ``split``, in log order, dictionary-encoded.

        The training split is encoded on first request only (a pass over the log;
        about 28 bytes a row stay in memory): the models read the training rows
        through :meth:`histories`, :meth:`recent_histories` and :meth:`item_counts`.
        """
        if _check_split(split) == "train":
            return self._train_rows
        return self._encoded.splits[split]

    def histories(self, splits: Sequence[str] = ("train",), by_time: bool = False) -> Histories:
        """Per-user catalogue rows (and ratings) of ``splits``, by time if asked.

        Grouped on disk once (in the cache folder, bounded memory; see
        :mod:`~recsys.data.interactions.histories`) and memory-mapped: only the bags
        a reader touches (e.g. the test users' seen items) become resident.
        """
        return self._histories(splits, by_time, None)

    def recent_histories(
        self, max_length: int | None, splits: Sequence[str] = ("train",)
    ) -> Histories:
        """The last ``max_length`` rows of every user's :meth:`histories` by time, in memory.

        By timestamp when the log has them, else in log order; None keeps every row.
        Memory: at most ``max_length`` members a user, whatever the log's size (the
        full histories are truncated on disk a slice at a time).

        Example:
            >>> dm.recent_histories(20).lengths().max() <= 20  # doctest: +SKIP
            True
        """
        if max_length is not None:
            check_positive_int("max_length", max_length)
        return self._histories(splits, True, max_length, in_memory=True)

    def _histories(
        self,
        splits: Sequence[str],
        by_time: bool,
        max_length: int | None,
        in_memory: bool = False,
    ) -> Histories:
        from recsys.data.interactions import histories as disk

        names = tuple(_check_split(s) for s in splits)
        # Empty splits add nothing: ("train", "val") without validation rows is
        # ("train",), grouped once.
        names = tuple(s for s in names if self.split_rows(s)) or names
        timed = self.columns.timestamp is not None
        by_time = bool(by_time) and timed
        # Memory-mapped histories are kept (their pages are the page cache's); ones read
        # into memory are the caller's, so that they go when the caller is done.
        cache: dict[Any, Histories] = (
            {} if in_memory else self.__dict__.setdefault("_histories_cache", {})
        )
        key = (names, by_time, max_length)
        if key not in cache:
            codes = [SPLITS.index(s) for s in names]
            root = self._index.folder / "histories"
            full = root / f"{'+'.join(names)}-{'time' if by_time else 'log'}-all"
            if not (full / disk.OFFSETS).is_file():
                # Both orders from one pass over the log (evaluation reads one, the
                # model's history table the other).
                log_order = root / f"{'+'.join(names)}-log-all"
                time_order = root / f"{'+'.join(names)}-time-all" if timed else None
                disk.build_histories(self._index, codes, log_order, time_order)
            folder = full
            name = f"{'+'.join(names)}-{'time' if by_time else 'log'}"
            if max_length is not None:
                folder = root / f"{name}-last{max_length}"
                if not (folder / disk.OFFSETS).is_file():
                    disk.truncate_histories(full, folder, max_length)
            keys = disk.histories_keys(self._index, codes)
            cache[key] = disk.load_histories(folder, keys, in_memory=in_memory)
        return cache[key]

    def feature_kinds(self) -> dict[str, dict[str, str]]:
        """``{"user": {column: kind}, "item": {column: kind}}`` as declared."""
        return {"user": dict(self.columns.user_features), "item": dict(self.columns.item_features)}

    def id_space(self, tower: str) -> IdSpace:
        """How ``"user"`` or ``"item"`` ids map to rows (counted vocabulary or hashed)."""
        if tower not in ("user", "item"):
            raise ValueError(f"`tower` must be 'user' or 'item'. Received: tower={tower!r}")
        cache = self.__dict__.setdefault("_id_spaces", {})
        if tower not in cache:
            table = self._index.users if tower == "user" else self._index.items
            cache[tower] = id_space(table, self.id_specs[tower], tower)
        return cache[tower]

    def split_rows(self, split: str) -> int:
        """Rows of ``split`` (known after the counting pass, without encoding)."""
        return self._index.rows[SPLITS.index(_check_split(split))]

    # ---------------------------------------------------------------- tf.data
    def train_dataset(self, iteration: int | None = None, start_batch: int = 0) -> tf.data.Dataset:
        """Training batches streamed from the files, reshuffled every epoch.

        Args:
            iteration: None for ``fit`` (each new iterator is the next epoch); an int
                pins the epoch of that iterator (0-based; tf-keras ``fit`` uses
                iterator ``e + 1`` for epoch ``e``, having made one before the first).
            start_batch: Start the epoch at this batch (resume in mid-epoch).
        """
        from recsys.data.interactions.pipelines import train_batches

        return train_batches(
            self._index,
            self.batch_size,
            self.seed,
            self.shuffle_window_rows,
            iteration=iteration,
            start_batch=start_batch,
        )

    def val_dataset(self) -> tf.data.Dataset:
        """Validation batches in log order (empty when ``val_fraction`` is 0)."""
        from recsys.data.interactions.pipelines import split_batches

        return split_batches(self.interactions("val"), self.batch_size)

    def test_dataset(self) -> tf.data.Dataset:
        """Test batches in log order."""
        from recsys.data.interactions.pipelines import split_batches

        return split_batches(self.interactions("test"), self.batch_size)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    return split


def _replaceable(folder: Path) -> None:
    """Refuse to replace a folder that is not an interactions cache."""
    if any(folder.iterdir()) and not (folder / "manifest.json").is_file():
        raise LogError(
            str(folder),
            "exists and is not a recsys interactions cache",
            "point data.cache_dir at an empty or new folder",
        )
