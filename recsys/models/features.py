"""Per-id feature tables that models look up from the ids in a batch.

Batches from the data modules carry only ``user_id`` and ``item_id`` (plus the rating).
The towers need more: a user's training history, an item's genres, year and title.
`FeatureStore` keeps those per-id features inside the model, as constants, so that
training, evaluation and the exported SavedModel all start from ids alone.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from recsys._tf import keras, no_autograph, tf
from recsys.data.contract import Catalogue, Histories, InteractionData

__all__ = [
    "FeatureStore",
    "PairIndex",
    "SortedBags",
    "TrainingRowsData",
    "feature_spec",
    "id_spec",
    "side_features",
    "training_histories",
    "training_item_counts",
]


@keras.saving.register_keras_serializable(package="recsys")
class FeatureStore(keras.layers.Layer):
    """Looks up fixed features of ids: scalars, or bags of strings (ragged).

    Unknown ids get the column's default: ``""`` or 0 for scalars, an empty bag for
    bags.

    Example:

    >>> store = FeatureStore(["i1", "i2"], {"genres": [["Drama"], ["Action", "Drama"]],
    ...                                     "year": [1995.0, 2001.0]})
    >>> out = store(tf.constant(["i2", "unknown"]))
    >>> out["genres"].to_list(), out["year"].numpy().tolist()
    ([[b'Action', b'Drama'], []], [2001.0, 0.0])

    Args:
        keys: The ids, unique.
        columns: `{name: values}`, one value per key: a string, a number, or a list
            of strings, integers or floats (a bag; ragged `tf.string`, `tf.int64` or
            `tf.float32`). A bag column can also be given as a `tf.RaggedTensor` with
            one row per key (built from compressed rows without Python lists).
        **kwargs: Base layer arguments.

    Raises:
        ValueError: Keys repeat, or a column's length differs from the keys'.
    """

    def __init__(
        self, keys: Sequence[Any], columns: Mapping[str, Sequence[Any]], **kwargs: Any
    ) -> None:
        super().__init__(trainable=False, **kwargs)
        # A NumPy array, not a list: Keras tracks a list attribute as a ListWrapper and
        # walks every element whenever it looks for sublayers (each `trainable_weights`
        # while tracing), which took minutes with a million user ids.
        self.keys = np.asarray(keys, dtype=object)
        if len(self.keys) and pd.api.types.infer_dtype(self.keys, skipna=False) != "string":
            # Not all Python str (e.g. numbers): convert. Str keys are shared, not copied.
            self.keys = np.asarray(pd.Series(self.keys, dtype=object).astype(str))
        if not pd.Index(self.keys).is_unique:
            raise ValueError(f"`keys` must be unique. Received {len(self.keys)} keys with repeats.")
        self._tables: dict[str, Any] = {}
        self.built = True  # no weights to build; lookups may bypass __call__ (index/gather)
        self._lookup = keras.layers.StringLookup(
            vocabulary=self.keys, num_oov_indices=1, mask_token=None, name="key_lookup"
        )
        for name, values in columns.items():
            if isinstance(values, tf.RaggedTensor):
                if int(values.nrows()) != len(self.keys):
                    raise ValueError(
                        f"Column {name!r} has {int(values.nrows())} rows for {len(self.keys)} keys."
                    )
                # Row 0 (unknown keys) is an empty bag.
                splits = tf.concat([[0], values.row_splits], axis=0)
                self._tables[name] = tf.RaggedTensor.from_row_splits(values.flat_values, splits)
                continue
            values = list(values)
            if len(values) != len(self.keys):
                raise ValueError(
                    f"Column {name!r} has {len(values)} values for {len(self.keys)} keys."
                )
            bag = any(isinstance(v, list | tuple | np.ndarray) for v in values)
            if bag:
                flat_values = [x for v in values for x in v]
                if flat_values and all(
                    isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in flat_values
                ):
                    dtype, convert = tf.int64, int
                elif flat_values and all(
                    isinstance(x, numbers.Real) and not isinstance(x, bool) for x in flat_values
                ):
                    dtype, convert = tf.float32, float
                else:
                    dtype, convert = tf.string, str
                bags = [[convert(x) for x in v] for v in values]
                lengths = [0] + [len(v) for v in bags]
                flat = [x for v in bags for x in v]
                table = tf.RaggedTensor.from_row_lengths(
                    tf.constant(flat, dtype=dtype, shape=[len(flat)]),
                    tf.constant(lengths, dtype=tf.int64),
                )
            elif all(isinstance(v, str) for v in values):
                table = tf.constant(["", *(str(v) for v in values)], dtype=tf.string)
            else:
                floats = [float(v) if v is not None and not pd.isna(v) else 0.0 for v in values]
                table = tf.constant([0.0, *floats], dtype=tf.float32)
            self._tables[name] = table

    @property
    def columns(self) -> dict[str, list[Any]]:
        """Each column's values, one per key, as plain Python values."""

        def plain(value: Any) -> Any:
            return value.decode() if isinstance(value, bytes) else value

        out: dict[str, list[Any]] = {}
        for name, table in self._tables.items():
            values = table.to_list() if isinstance(table, tf.RaggedTensor) else table.numpy()
            out[name] = [
                [plain(x) for x in v] if isinstance(v, list) else plain(v.item())
                for v in list(values)[1:]
            ]
        return out

    def index(self, keys: Any) -> Any:
        """Row of each key in the tables: 1.. for known keys, 0 for unknown ones."""
        return self._lookup(tf.convert_to_tensor(keys))

    def gather(self, index: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The features of the rows `index` (see :meth:`index`): all columns, or `names`."""
        names = list(self._tables) if names is None else list(names)
        missing = [n for n in names if n not in self._tables]
        if missing:
            raise ValueError(f"No columns {missing} in this store; it has {list(self._tables)}.")
        return {name: tf.gather(self._tables[name], index) for name in names}

    @no_autograph
    def call(self, keys: Any) -> dict[str, Any]:
        return self.gather(self.index(keys))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("trainable", None)
        config.update(keys=list(self.keys), columns={k: list(v) for k, v in self.columns.items()})
        return config


class PairIndex:
    """Which (owner, member) pairs are in the stored bags, and each pair's weight.

    Bags are stored per owner row (1-based, as :meth:`FeatureStore.index` numbers the
    keys; 0 is "unknown"); a pair's key is ``owner * base + member``. Keys are kept
    sorted, so a batch asks with one binary search per example, whatever the bags'
    lengths: this is how training tells whether its target item is in the (possibly
    truncated) history it must be left out of.

    Example:
        >>> index = PairIndex(np.array([0, 2, 3]), np.array([5, 7, 5]), base=10)
        >>> index.contains(tf.constant([1, 1, 2, 0]), tf.constant([7, 6, 5, 5])).numpy()
        array([ True, False,  True, False])

    Args:
        offsets: ``[owners + 1]`` compressed-row offsets of the bags, owner i (1-based
            row i + 1) owning ``members[offsets[i]:offsets[i + 1]]``.
        members: Member rows (non-negative, below ``base``).
        weights: Each member's weight, or None.
        base: Greater than every member row.
    """

    def __init__(
        self,
        offsets: np.ndarray,
        members: np.ndarray,
        weights: np.ndarray | None = None,
        base: int | None = None,
    ) -> None:
        members = np.asarray(members, dtype=np.int64)
        self.base = int(base if base is not None else (members.max(initial=0) + 1))
        # One array of len(members) + 1 keys built and sorted in place (plus the sort's
        # order only when weights follow): with tens of millions of pairs, each
        # temporary copy is hundreds of MB.
        n = len(members)
        keys = np.empty(n + 1, dtype=np.int64)
        keys[n] = np.iinfo(np.int64).max
        keys[:n] = np.repeat(np.arange(1, len(offsets), dtype=np.int64), np.diff(offsets))
        keys[:n] *= self.base
        keys[:n] += members
        self._weights = None
        if weights is None:
            keys[:n].sort()
        else:
            order = np.argsort(keys[:n], kind="stable")
            keys[:n] = keys[:n][order]
            sorted_weights = np.zeros(n + 1, dtype=np.float32)
            sorted_weights[:n] = np.asarray(weights, dtype=np.float32)[order]
            self._weights = tf.constant(sorted_weights)
        self._keys = tf.constant(keys)

    def _find(self, owners: Any, members: Any) -> tuple[Any, Any]:
        query = tf.cast(owners, tf.int64) * self.base + tf.cast(members, tf.int64)
        position = tf.searchsorted(self._keys, query)
        return tf.gather(self._keys, position) == query, position

    def contains(self, owners: Any, members: Any) -> Any:
        """`[batch]` bool: whether each (owner, member) pair is stored."""
        return self._find(owners, members)[0]

    def weight(self, owners: Any, members: Any) -> Any:
        """`[batch]` float32: each stored pair's weight (0 for pairs not stored)."""
        found, position = self._find(owners, members)
        return tf.where(found, tf.gather(self._weights, position), 0.0)


class SortedBags:
    """Bags with their members sorted, as a ragged table, that answer membership too.

    One array of members, each bag's in ascending order, serves both as the ragged
    ``[owners, None]`` table to gather bags from (:attr:`table`, e.g. a
    :class:`FeatureStore` column, which shares it) and to tell whether an (owner,
    member) pair is stored, by a binary search inside the owner's bag: no second array
    of pair keys (:class:`PairIndex` keeps one 8-byte key per member; with 20 million
    history members that was 0.16 GiB). Members are kept as int32.

    Example:
        >>> bags = SortedBags(np.array([0, 2, 3]), np.array([7, 5, 5]))
        >>> bags.table.to_list()
        [[5, 7], [5]]
        >>> bags.contains(tf.constant([1, 1, 2, 0]), tf.constant([7, 6, 5, 5])).numpy()
        array([ True, False,  True, False])

    Args:
        offsets: ``[owners + 1]`` compressed-row offsets, owner i (1-based row i + 1)
            owning ``members[offsets[i]:offsets[i + 1]]``.
        members: Member rows, non-negative and below 2**31, in any order within a bag.

    Raises:
        ValueError: The offsets do not describe the members, or a member is out of range.
    """

    def __init__(self, offsets: np.ndarray, members: np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        n = len(members)
        if offsets.ndim != 1 or not len(offsets) or offsets[0] != 0 or offsets[-1] != n:
            raise ValueError(
                f"`offsets` must run from 0 to len(members) = {n}. Received {len(offsets)} "
                f"offsets from {offsets[:1].tolist()} to {offsets[-1:].tolist()}."
            )
        if np.any(np.diff(offsets) < 0):
            raise ValueError("`offsets` must be non-decreasing.")
        members = np.asarray(members)
        if n and (members.min() < 0 or members.max() >= 2**31 - 1):
            raise ValueError(
                f"Members must lie in [0, 2**31 - 1). Received [{members.min()}, {members.max()}]."
            )
        # Sort within bags in place, through one key array (owner * base + member).
        base = int(members.max(initial=0)) + 1
        keys = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
        keys *= base
        keys += members
        keys.sort()
        keys %= base
        sorted_members = keys.astype(np.int32)
        del keys
        self.max_length = int(np.diff(offsets).max(initial=0))
        self._values = tf.constant(sorted_members)
        del sorted_members
        # Row splits of the 1-based owner rows (row 0: the empty bag of unknown owners).
        self._splits = tf.constant(np.concatenate([[0], offsets]), tf.int64)
        self.table = tf.RaggedTensor.from_row_splits(self._values, offsets)

    def contains(self, owners: Any, members: Any) -> Any:
        """`[batch]` bool: whether each (owner row, member) pair is stored.

        Owner rows are 1-based (0: unknown, an empty bag), as :meth:`FeatureStore.index`.
        """
        values, splits = self._values, self._splits
        owners = tf.cast(tf.reshape(owners, [-1]), tf.int64)
        members = tf.cast(tf.reshape(members, [-1]), tf.int64)
        if self.max_length == 0:
            return tf.zeros_like(members, tf.bool)
        lo = tf.gather(splits, owners)
        end = tf.gather(splits, owners + 1)
        hi = end
        last = tf.cast(tf.size(values, tf.int64) - 1, tf.int64)
        # Lower bound of each member in its owner's bag: log2(longest bag) rounds.
        for _ in range(self.max_length.bit_length()):
            active = lo < hi
            mid = (lo + hi) // 2
            below = tf.cast(tf.gather(values, tf.minimum(mid, last)), tf.int64) < members
            lo = tf.where(active & below, mid + 1, lo)
            hi = tf.where(active & ~below, mid, hi)
        found = tf.cast(tf.gather(values, tf.minimum(lo, last)), tf.int64) == members
        return (lo < end) & found


# Kinds of the MovieLens catalogue columns, for data that declares none.
DEFAULT_ITEM_KINDS = {"genres": "multi_hot", "year": "numeric", "title": "text"}
# Text tokens and very large categorical columns are hashed into this many rows.
TEXT_BINS = 20_000
MAX_VOCABULARY = 100_000


def id_spec(ids: Sequence[Any] | None = None, space: Any = None) -> dict[str, Any]:
    """A tower's id feature: a vocabulary of ``ids``, or the data's :class:`IdSpace`.

    Example:
        >>> id_spec(["a", "b"])
        {'kind': 'id', 'vocabulary': ['a', 'b']}
    """
    if space is None:
        return {"kind": "id", "vocabulary": [str(i) for i in ids]}
    if space.kind == "hashed":
        return {
            "kind": "id",
            "num_bins": int(space.num_buckets),
            "salts": [list(s) for s in space.salts],
        }
    return {
        "kind": "id",
        "vocabulary": [str(i) for i in space.ids],
        "oov_buckets": space.oov_buckets,
    }


def feature_spec(kind: str, values: Sequence[Any]) -> dict[str, Any]:
    """The `FeatureEmbedding` arguments of a side feature of a declared ``kind``.

    - ``multi_hot``: a vocabulary of every value of every bag, mean-pooled;
    - ``numeric``: bucketized at the 5%, 10%, ..., 95% quantiles of its known
      (finite, non-zero) values;
    - ``text``: tokens hashed into ``TEXT_BINS`` rows;
    - ``id``: a vocabulary of its values, hashed into ``MAX_VOCABULARY`` rows when it
      has more.

    Example:
        >>> feature_spec("multi_hot", [["Drama"], ["Action", "Drama"], []])
        {'kind': 'multi_hot', 'vocabulary': ['Action', 'Drama'], 'pooling': 'mean'}

    Raises:
        ValueError: ``kind`` is unknown.
    """
    if kind == "multi_hot":
        bags = sorted({str(v) for bag in values for v in bag if str(v)})
        return {"kind": "multi_hot", "vocabulary": bags or ["<none>"], "pooling": "mean"}
    if kind == "numeric":
        numbers_ = np.asarray(values, dtype=np.float64)
        known = numbers_[np.isfinite(numbers_) & (numbers_ != 0)]
        quantiles = np.quantile(known, np.linspace(0, 1, 21)[1:-1]) if known.size else [0.0]
        return {"kind": "bucketized", "boundaries": [float(q) for q in np.unique(quantiles)]}
    if kind == "text":
        return {"kind": "text", "num_bins": TEXT_BINS}
    if kind == "id":
        distinct = sorted({str(v) for v in values if str(v)})
        if len(distinct) > MAX_VOCABULARY:
            return {"kind": "id", "num_bins": MAX_VOCABULARY}
        return {"kind": "id", "vocabulary": distinct or ["<none>"]}
    raise ValueError(
        f"Unknown feature kind {kind!r}: use one of 'id', 'multi_hot', 'text', 'numeric'."
    )


def side_features(
    columns: Mapping[str, Sequence[Any]],
    names: Sequence[str] | None,
    kinds: Mapping[str, str],
    where: str,
) -> dict[str, Sequence[Any]]:
    """The side-feature columns a tower uses: ``names`` of ``columns`` (None: all).

    Raises:
        ValueError: A name is not a column, or has no kind.
    """
    names = list(columns) if names is None else list(names)
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(
            f"{where.capitalize()} features {missing} are not in the data's {where} "
            f"columns, which are {sorted(columns)}. Drop them from `{where}_features`."
        )
    unknown = [n for n in names if n not in kinds]
    if unknown:
        raise ValueError(
            f"{where.capitalize()} features {unknown} have no kind: declare them in the data "
            f"(data.{where}_features: {{name: id|multi_hot|text|numeric}})."
        )
    return {n: columns[n] for n in names}


@runtime_checkable
class TrainingRowsData(Protocol):
    """Optional, next to :class:`~recsys.data.InteractionData`: training-row summaries.

    A data module whose training rows are too many to hold (``data=interactions``
    streams them) gives the models what they need of them directly: each user's most
    recent items, grouped without loading the rows, and each item's training count
    from its counting pass. Models check ``isinstance(data, TrainingRowsData)`` and
    otherwise derive both from ``data.interactions("train")``.
    """

    def recent_histories(
        self, max_length: int | None, splits: Sequence[str] = ("train",)
    ) -> Histories:
        """The last ``max_length`` of each user's rows of ``splits`` (by time if known)."""

    def item_counts(self, split: str = "train") -> np.ndarray:
        """Rows of ``split`` of every catalogue item, aligned with ``catalogue().ids``."""


def training_histories(
    data: InteractionData, users: np.ndarray, max_length: int | None = None
) -> Histories:
    """Each of ``users``' training items (catalogue rows), by time when known, the last
    ``max_length`` (all for None).

    Example:
        >>> h = training_histories(data, vocabulary(data.user_vocabulary), 20)  # doctest: +SKIP
        >>> int(h.lengths().max()) <= 20  # doctest: +SKIP
        True

    Args:
        data: The data module; a :class:`TrainingRowsData` one groups the rows itself.
        users: The keys, sorted and unique (the model's training users).
        max_length: Most recent items kept per user, or None.
    """
    if isinstance(data, TrainingRowsData):
        histories = data.recent_histories(max_length)
        if not np.array_equal(histories.keys, users):
            owner, members = histories.select(users)
            counts = np.bincount(owner, minlength=len(users))
            histories = Histories(
                users, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), members
            )
        return histories
    train = data.interactions("train")
    return Histories.from_interactions(
        train, data.catalogue(), users=users, by_time=train.timestamps is not None
    ).truncate(max_length)


def training_item_counts(data: InteractionData, catalogue: Catalogue) -> np.ndarray:
    """Training rows of every item of ``catalogue`` (int64, aligned with its ids).

    Example:
        >>> training_item_counts(data, data.catalogue()).sum() == len(  # doctest: +SKIP
        ...     data.interactions("train"))
        True
    """
    if isinstance(data, TrainingRowsData):
        counts = np.asarray(data.item_counts("train"), dtype=np.int64)
        if len(counts) == len(catalogue):
            return counts
    train = data.interactions("train")
    rows = catalogue.rows(train.items)[train.item_index]
    return np.bincount(rows[rows >= 0], minlength=len(catalogue)).astype(np.int64)
