"""The model-data contract: exactly what the task models read from a data module.

A new data source works with the models when it provides these, nothing more:

- :class:`InteractionData` (retrieval and ranking models): the item
  :class:`Catalogue`, each split's rows as :class:`Interactions`, per-user
  :class:`Histories`, the training users, and tf.data pipelines of batches.
- :class:`TextData` (text classification): each split's texts and labels, and the
  pipelines.

The containers are small frozen dataclasses of NumPy arrays (no pandas, no
TensorFlow), so a data module can fill them from a DataFrame, from a stream of
Parquet record batches, or from anything else. :class:`Histories` is the one compact
representation of "the items each user interacted with" (rows of the catalogue in
compressed-row form): the models' history features, evaluation's seen items and the
serving export's exclusions all read it.

Nothing here imports TensorFlow.

Example:
    >>> catalogue = Catalogue(np.array(["a", "b", "c"], dtype=object))
    >>> train = Interactions.from_ids(["u1", "u1", "u2"], ["b", "a", "c"], catalogue)
    >>> histories = Histories.from_interactions(train, catalogue)
    >>> histories.lists(["u1", "u2", "u3"])
    [[1, 0], [2], []]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from recsys.data.vocabulary import vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from recsys._tf import tf

__all__ = [
    "FEATURE_KINDS",
    "ID_SPACE_KINDS",
    "SPLITS",
    "Catalogue",
    "FeatureData",
    "Histories",
    "IdSpace",
    "InteractionData",
    "Interactions",
    "TextData",
    "TextEncoder",
    "UserFeatures",
    "merge_interactions",
]

SPLITS = ("train", "val", "test")
# Kinds of declared side features (FeatureData.feature_kinds): a categorical id, a bag
# of categories, free text, a number (bucketized by the tower).
FEATURE_KINDS = ("id", "multi_hot", "text", "numeric")
ID_SPACE_KINDS = ("vocabulary", "hashed")


def _strings(values: Any) -> np.ndarray:
    """Values as a 1-D object array of Python str."""
    return np.asarray(pd.Series(np.asarray(values, dtype=object), dtype=object).astype(str))


def positions(keys: np.ndarray, values: Any) -> np.ndarray:
    """Positions of ``values`` in the sorted string array ``keys``; -1 where absent.

    Example:
        >>> positions(np.array(["a", "c"], dtype=object), ["c", "b", "a"]).tolist()
        [1, -1, 0]
    """
    values = _strings(values)
    if not len(keys):
        return np.full(len(values), -1, dtype=np.int64)
    found = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
    return np.where(keys[found] == values, found, -1).astype(np.int64)


def _check_sorted_unique(name: str, ids: np.ndarray) -> None:
    if ids.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D. Received shape {ids.shape}.")
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise ValueError(
            f"`{name}` must be sorted and unique (use recsys.data.vocabulary(...)). "
            f"Received {len(ids)} ids, starting {ids[:3].tolist()}."
        )


@dataclass(frozen=True)
class Catalogue:
    """The candidate items: sorted unique ids and feature columns aligned with them.

    Args:
        ids: Item ids, sorted and unique (object array of str).
        features: ``{name: values}``, one value per id: a string (``title``), a
            number (``year``; 0 or NaN when unknown) or a list of strings (``genres``).

    Example:
        >>> cat = Catalogue(np.array(["i1", "i2"], dtype=object), {"year": [1995.0, 0.0]})
        >>> cat.rows(["i2", "zzz"]).tolist(), len(cat)
        ([1, -1], 2)
    """

    ids: np.ndarray
    features: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_sorted_unique("ids", self.ids)
        for name, values in self.features.items():
            if len(values) != len(self.ids):
                raise ValueError(
                    f"Catalogue feature {name!r} has {len(values)} values for "
                    f"{len(self.ids)} items; give one value per item id."
                )

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, item_ids: Any) -> np.ndarray:
        """Catalogue rows of ``item_ids`` (int64; -1 for ids not in the catalogue)."""
        return positions(self.ids, item_ids)

    def to_frame(self) -> pd.DataFrame:
        """``item_id`` and the feature columns, one row per item (``items.parquet``)."""
        return pd.DataFrame({"item_id": self.ids, **{k: list(v) for k, v in self.features.items()}})

    @classmethod
    def from_frame(
        cls, items: pd.DataFrame | None, extra_ids: Sequence[Any] = (), columns: Sequence[str] = ()
    ) -> Catalogue:
        """A catalogue of ``items`` (``item_id`` and feature columns) plus ``extra_ids``.

        Args:
            items: The item table, or None for ids only.
            extra_ids: More item ids (e.g. every item of the interactions); ids missing
                from ``items`` get empty features.
            columns: Feature columns of ``items`` to keep (all but ``item_id`` when empty).

        Raises:
            ValueError: A requested column is not in ``items``.
        """
        known = [] if items is None else list(items["item_id"])
        ids = vocabulary(np.concatenate([_strings(known), _strings(list(extra_ids))]))
        if items is None or not len(items):
            return cls(ids)
        table = items.assign(item_id=_strings(items["item_id"])).drop_duplicates("item_id")
        table = table.set_index("item_id").reindex(ids)
        wanted = list(columns) or list(table.columns)
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise ValueError(
                f"The item table has no column(s) {missing}; it has {list(table.columns)}."
            )
        features: dict[str, list[Any]] = {}
        for name in wanted:
            values = table[name]
            if values.map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
                features[name] = [
                    [str(x) for x in v] if isinstance(v, list | tuple | np.ndarray) else []
                    for v in values
                ]
            elif pd.api.types.is_numeric_dtype(values):
                features[name] = [0.0 if pd.isna(v) else float(v) for v in values]
            else:
                features[name] = ["" if pd.isna(v) else str(v) for v in values]
        return cls(ids, features)


@dataclass(frozen=True)
class UserFeatures:
    """Users and their side features: sorted unique ids and columns aligned with them.

    The user-side twin of :class:`Catalogue` (optional: see :class:`FeatureData`).

    Args:
        ids: User ids, sorted and unique (object array of str).
        features: ``{name: values}``, one value per id: a string (``id`` and ``text``
            kinds; ``""`` when unknown), a float (``numeric``; NaN when unknown) or a
            list of strings (``multi_hot``).

    Example:
        >>> users = UserFeatures(np.array(["u1", "u2"], dtype=object), {"country": ["fr", "de"]})
        >>> users.rows(["u2", "nobody"]).tolist(), len(users)
        ([1, -1], 2)
    """

    ids: np.ndarray
    features: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_sorted_unique("ids", self.ids)
        for name, values in self.features.items():
            if len(values) != len(self.ids):
                raise ValueError(
                    f"User feature {name!r} has {len(values)} values for {len(self.ids)} "
                    "users; give one value per user id."
                )

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, user_ids: Any) -> np.ndarray:
        """Rows of ``user_ids`` (int64; -1 for ids not in the table)."""
        return positions(self.ids, user_ids)

    def to_frame(self) -> pd.DataFrame:
        """``user_id`` and the feature columns, one row per user."""
        return pd.DataFrame({"user_id": self.ids, **{k: list(v) for k, v in self.features.items()}})


@dataclass(frozen=True)
class IdSpace:
    """How a tower turns the values of one id column into rows of its embedding table.

    - ``kind="vocabulary"``: ``ids`` (most frequent first) own rows
      ``oov_buckets .. oov_buckets + len(ids) - 1``; any other id (rare, or never seen
      in training) falls into one of the ``oov_buckets`` rows before them, chosen by
      hash. This is exactly tf-keras ``StringLookup(vocabulary=list(ids),
      num_oov_indices=oov_buckets, mask_token=None)``.
    - ``kind="hashed"``: no vocabulary; every id, seen or not, gets ``num_hashes`` rows
      of a ``num_buckets``-row table, one per salt: tf-keras ``Hashing(num_buckets,
      salt=salt)`` (SipHash keyed by the salt) for each ``salt`` in ``salts``; the
      tower sums (or averages) the rows. Distinct ids can share a row (a collision);
      with two hashes, two ids share their whole representation only when both rows
      collide.

    Args:
        kind: ``"vocabulary"`` or ``"hashed"``.
        ids: Vocabulary ids, most frequent first (empty for ``hashed``).
        counts: Training counts of ``ids``, or None.
        oov_buckets: Rows for out-of-vocabulary ids (``vocabulary``; >= 1).
        num_buckets: Rows of the hashed table (``hashed``).
        salts: One ``(k0, k1)`` SipHash key per hash (``hashed``).

    Example:
        >>> space = IdSpace("vocabulary", np.array(["b", "a"], dtype=object), oov_buckets=2)
        >>> space.num_rows, space.rows_per_id
        (4, 1)
        >>> IdSpace("hashed", num_buckets=1000, salts=((1, 2), (3, 4))).rows_per_id
        2
    """

    kind: str
    ids: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    counts: np.ndarray | None = None
    oov_buckets: int = 1
    num_buckets: int = 0
    salts: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ID_SPACE_KINDS:
            raise ValueError(
                f"`kind` must be one of {ID_SPACE_KINDS}. Received: kind={self.kind!r}"
            )
        if self.kind == "vocabulary" and self.oov_buckets < 1:
            raise ValueError(
                f"`oov_buckets` must be >= 1. Received: oov_buckets={self.oov_buckets!r}"
            )
        if self.kind == "hashed" and (self.num_buckets < 1 or not self.salts):
            raise ValueError(
                "A hashed id space needs `num_buckets` >= 1 and at least one salt. "
                f"Received: num_buckets={self.num_buckets!r}, salts={self.salts!r}"
            )
        if self.counts is not None and len(self.counts) != len(self.ids):
            raise ValueError(f"`counts` has {len(self.counts)} values for {len(self.ids)} ids.")

    @property
    def num_rows(self) -> int:
        """Rows of the embedding table this id space indexes."""
        return self.oov_buckets + len(self.ids) if self.kind == "vocabulary" else self.num_buckets

    @property
    def rows_per_id(self) -> int:
        """Rows each id maps to (1, or the number of hashes)."""
        return 1 if self.kind == "vocabulary" else len(self.salts)


@dataclass(frozen=True)
class Interactions:
    """The rows of one split, dictionary-encoded: distinct ids plus per-row codes.

    Args:
        users: Distinct user ids of the split, sorted.
        items: Distinct item ids of the split, sorted.
        user_index: ``[n]`` int64 positions in ``users``, one per row.
        item_index: ``[n]`` int64 positions in ``items``, one per row.
        ratings: ``[n]`` float32 ratings, or None for implicit feedback.
        timestamps: ``[n]`` int64 timestamps, or None.

    Example:
        >>> rows = Interactions.from_ids(["u2", "u1"], ["i1", "i1"], ratings=[4.0, 5.0])
        >>> rows.user_ids().tolist(), rows.items.tolist(), len(rows)
        (['u2', 'u1'], ['i1'], 2)
    """

    users: np.ndarray
    items: np.ndarray
    user_index: np.ndarray
    item_index: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_sorted_unique("users", self.users)
        _check_sorted_unique("items", self.items)
        n = len(self.user_index)
        for name in ("item_index", "ratings", "timestamps"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(
                    f"`{name}` has {len(value)} rows, `user_index` {n}; every column of "
                    "a split needs one value per row."
                )

    def __len__(self) -> int:
        return len(self.user_index)

    def user_ids(self) -> np.ndarray:
        """The user id of every row."""
        return self.users[self.user_index]

    def item_ids(self) -> np.ndarray:
        """The item id of every row."""
        return self.items[self.item_index]

    @classmethod
    def from_ids(
        cls,
        user_ids: Any,
        item_ids: Any,
        catalogue: Catalogue | None = None,
        ratings: Any = None,
        timestamps: Any = None,
    ) -> Interactions:
        """Encode per-row id arrays (``catalogue`` is accepted for symmetry; unused)."""
        user_codes, users = pd.factorize(_strings(user_ids), sort=True)
        item_codes, items = pd.factorize(_strings(item_ids), sort=True)
        return cls(
            np.asarray(users, dtype=object),
            np.asarray(items, dtype=object),
            user_codes.astype(np.int64),
            item_codes.astype(np.int64),
            None if ratings is None else np.asarray(ratings, dtype=np.float32),
            None if timestamps is None else np.asarray(timestamps, dtype=np.int64),
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Interactions:
        """From a frame with ``user_id``, ``item_id`` and optional ``rating``/``timestamp``."""
        return cls.from_ids(
            frame["user_id"].to_numpy(),
            frame["item_id"].to_numpy(),
            ratings=frame["rating"].to_numpy() if "rating" in frame else None,
            timestamps=frame["timestamp"].to_numpy() if "timestamp" in frame else None,
        )


def merge_interactions(parts: Sequence[Interactions]) -> Interactions:
    """The rows of several splits, in the order given, as one :class:`Interactions`."""
    if len(parts) == 1:
        return parts[0]
    users = vocabulary(np.concatenate([p.users for p in parts]))
    items = vocabulary(np.concatenate([p.items for p in parts]))
    ratings = [p.ratings for p in parts]
    timestamps = [p.timestamps for p in parts]
    return Interactions(
        users,
        items,
        np.concatenate([positions(users, p.users)[p.user_index] for p in parts]),
        np.concatenate([positions(items, p.items)[p.item_index] for p in parts]),
        None if any(r is None for r in ratings) else np.concatenate(ratings),
        None if any(t is None for t in timestamps) else np.concatenate(timestamps),
    )


@dataclass(frozen=True)
class Histories:
    """Per-key bags in compressed-row form: what each user interacted with.

    ``members[offsets[k]:offsets[k + 1]]`` are key ``keys[k]``'s members (catalogue
    rows for user histories), in the order chosen when building, with their
    ``ratings`` alongside when known. A key that is not in ``keys`` has an empty bag.
    The arrays stay compact at any scale (two int arrays and a sorted id array, no
    Python lists per user).

    Args:
        keys: Sorted unique owner ids (users).
        offsets: ``[len(keys) + 1]`` int64, non-decreasing, from 0 to ``len(members)``.
        members: ``[m]`` int64 member rows (catalogue rows of items).
        ratings: ``[m]`` float32 ratings of the members, or None.

    Example:
        >>> h = Histories(np.array(["u1", "u2"], dtype=object), np.array([0, 2, 3]),
        ...               np.array([4, 7, 1]))
        >>> h.lists(["u2", "nobody", "u1"])
        [[1], [], [4, 7]]
    """

    keys: np.ndarray
    offsets: np.ndarray
    members: np.ndarray
    ratings: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_sorted_unique("keys", self.keys)
        offsets = self.offsets
        if (
            offsets.ndim != 1
            or len(offsets) != len(self.keys) + 1
            or (len(offsets) and (offsets[0] != 0 or offsets[-1] != len(self.members)))
            or bool(np.any(np.diff(offsets) < 0))
        ):
            raise ValueError(
                f"`offsets` must be non-decreasing, of length len(keys) + 1 = "
                f"{len(self.keys) + 1}, from 0 to len(members) = {len(self.members)}. "
                f"Received length {len(offsets)}."
            )
        if self.ratings is not None and len(self.ratings) != len(self.members):
            raise ValueError(
                f"`ratings` has {len(self.ratings)} values for {len(self.members)} members."
            )

    def __len__(self) -> int:
        return len(self.keys)

    def lengths(self) -> np.ndarray:
        """Bag size of every key."""
        return np.diff(self.offsets)

    def select(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """Flattened bags of ``keys``: ``(position in keys, member)`` pairs.

        Example:
            >>> h = Histories(np.array(["a", "b"], dtype=object), np.array([0, 1, 3]),
            ...               np.array([5, 6, 7]))
            >>> [x.tolist() for x in h.select(["b", "zz", "a"])]
            [[0, 0, 2], [6, 7, 5]]
        """
        rows = positions(self.keys, keys)
        known = rows >= 0
        starts = np.where(known, self.offsets[np.maximum(rows, 0)], 0)
        counts = np.where(known, self.offsets[np.maximum(rows, 0) + 1] - starts, 0)
        owner = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
        # Index of each member: its bag's start + its rank within the bag.
        within = np.arange(counts.sum(), dtype=np.int64) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        return owner, self.members[np.repeat(starts, counts) + within]

    def lists(self, keys: Any, values: str = "members") -> list[list[Any]]:
        """Bags of ``keys`` as Python lists (``values``: ``"members"`` or ``"ratings"``)."""
        array = self.members if values == "members" else self.ratings
        if array is None:
            raise ValueError(f"These histories hold no {values!r}.")
        rows = positions(self.keys, keys)
        return [
            array[self.offsets[r] : self.offsets[r + 1]].tolist() if r >= 0 else [] for r in rows
        ]

    def truncate(self, max_length: int | None) -> Histories:
        """The last ``max_length`` members of each bag (all of them for None).

        With bags in timestamp order, that keeps each user's most recent items.

        Example:
            >>> h = Histories(np.array(["a", "b"], dtype=object), np.array([0, 3, 4]),
            ...               np.array([1, 2, 3, 4]))
            >>> h.truncate(2).lists(["a", "b"])
            [[2, 3], [4]]
        """
        if max_length is None or not len(self.members):
            return self
        lengths = self.lengths()
        kept = np.minimum(lengths, max_length)
        if np.array_equal(kept, lengths):
            return self
        starts = self.offsets[1:] - kept
        # Each kept member's index: its bag's new start + its rank among the kept.
        within = np.arange(kept.sum(), dtype=np.int64) - np.repeat(np.cumsum(kept) - kept, kept)
        take = np.repeat(starts, kept) + within
        return Histories(
            self.keys,
            np.concatenate([[0], np.cumsum(kept)]).astype(np.int64),
            self.members[take],
            None if self.ratings is None else self.ratings[take],
        )

    @classmethod
    def group(
        cls,
        keys: np.ndarray,
        key_index: np.ndarray,
        members: np.ndarray,
        ratings: np.ndarray | None = None,
        order: np.ndarray | None = None,
    ) -> Histories:
        """Group rows by key: row r puts ``members[r]`` in key ``keys[key_index[r]]``'s bag.

        Args:
            keys: Sorted unique keys.
            key_index: ``[n]`` positions in ``keys`` (-1: the row is dropped).
            members: ``[n]`` members.
            ratings: ``[n]`` ratings, or None.
            order: ``[n]`` sort key within a bag (e.g. timestamps; stable, so equal
                keys keep the row order); None keeps the row order.
        """
        keep = key_index >= 0
        rows = np.flatnonzero(keep)
        if order is not None:
            rows = rows[np.argsort(np.asarray(order)[rows], kind="stable")]
        rows = rows[np.argsort(key_index[rows], kind="stable")]
        counts = np.bincount(key_index[rows], minlength=len(keys))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(
            keys,
            offsets,
            np.asarray(members)[rows].astype(np.int64),
            None if ratings is None else np.asarray(ratings, dtype=np.float32)[rows],
        )

    @classmethod
    def from_interactions(
        cls,
        interactions: Interactions,
        catalogue: Catalogue,
        users: np.ndarray | None = None,
        by_time: bool = False,
    ) -> Histories:
        """Each user's catalogue rows (and ratings) from a split's rows.

        Args:
            interactions: The rows (e.g. the training split, or train + val merged).
            catalogue: Members are rows of this catalogue; items outside it are dropped.
            users: The keys (sorted unique ids); default: the users of ``interactions``.
                Rows of other users are dropped.
            by_time: Order each bag by timestamp (stable); else by row order.
        """
        keys = interactions.users if users is None else users
        user_rows = positions(keys, interactions.users)[interactions.user_index]
        item_rows = catalogue.rows(interactions.items)[interactions.item_index]
        user_rows = np.where(item_rows >= 0, user_rows, -1)
        order = interactions.timestamps if by_time else None
        if by_time and order is None:
            raise ValueError("by_time=True needs timestamps; these interactions have none.")
        return cls.group(keys, user_rows, item_rows, interactions.ratings, order)


@runtime_checkable
class InteractionData(Protocol):
    """What :class:`~recsys.models.RetrievalModel` and :class:`~recsys.models.RankingModel`
    read from a data module, after ``setup()``.

    Batches of the pipelines are dicts with at least ``user_id`` and ``item_id``
    (``tf.string``, ``[batch]``) and, for rating prediction, ``rating`` (float).
    """

    def setup(self) -> Any:
        """Load and split (idempotent)."""

    @property
    def user_vocabulary(self) -> np.ndarray:
        """Sorted unique ids of the training users."""

    def catalogue(self) -> Catalogue:
        """Every item the data knows (the candidates retrieval ranks), with features."""

    def interactions(self, split: str) -> Interactions:
        """The rows of ``split`` (``"train"``, ``"val"`` or ``"test"``; may be empty)."""

    def histories(self, splits: Sequence[str] = ("train",), by_time: bool = False) -> Histories:
        """Per-user catalogue rows of the given splits' interactions."""

    def train_dataset(self) -> tf.data.Dataset:
        """Shuffled training batches (a deterministic order per epoch for a seed)."""

    def val_dataset(self) -> tf.data.Dataset:
        """Validation batches."""

    def test_dataset(self) -> tf.data.Dataset:
        """Test batches."""


@runtime_checkable
class FeatureData(Protocol):
    """Optional, next to :class:`InteractionData`: declared side features and id spaces.

    A data module that declares its towers' inputs (e.g.
    :class:`~recsys.data.interactions.InteractionsDataModule`) provides these; models
    check ``isinstance(data, FeatureData)`` and otherwise keep their defaults, so the
    modules that do not (MovieLens) work unchanged.
    """

    def feature_kinds(self) -> Mapping[str, Mapping[str, str]]:
        """``{"user": {name: kind}, "item": {name: kind}}``, kinds from ``FEATURE_KINDS``.

        Item features are columns of :meth:`InteractionData.catalogue`, user features
        columns of :meth:`user_table`.
        """

    def user_table(self) -> UserFeatures:
        """Every user the data knows (all splits), with the declared user features."""

    def id_space(self, tower: str) -> IdSpace:
        """How ``"user"`` or ``"item"`` ids map to embedding rows (vocabulary or hashed)."""


# Encodes a split's texts (`[n]` tf.string) into model inputs (`[n, ...]`), once.
TextEncoder = Callable[[Any], Any]


@runtime_checkable
class TextData(Protocol):
    """What :class:`~recsys.models.TextClassifier` reads from a data module.

    Batches of the pipelines are ``(text: tf.string [batch], label: float [batch])``,
    or, given ``encode`` (a :data:`TextEncoder`, e.g. the model's vectorizer), the
    encoded texts: each split is then encoded once, before batching, not once per
    epoch.
    """

    def setup(self) -> Any:
        """Load and split (idempotent)."""

    def texts(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(texts, labels)`` of ``split``: object array of str, array of 0/1."""

    def train_dataset(self, encode: TextEncoder | None = None) -> tf.data.Dataset:
        """Shuffled training batches."""

    def val_dataset(self, encode: TextEncoder | None = None) -> tf.data.Dataset:
        """Validation batches."""

    def test_dataset(self, encode: TextEncoder | None = None) -> tf.data.Dataset:
        """Test batches."""
