"""What the ``data.*`` keys of an interaction log declare, checked before any file is read.

- :class:`LogColumns`: the user, item, rating and timestamp columns and the side
  features of each tower (column -> kind).
- :class:`SplitSpec`: a random split by a hash of (user, item) or a time cutoff, and
  validation carved from train the same way.
- :class:`IdSpaceSpec`: a counted vocabulary (``min_count``, ``max_size``, OOV rows)
  or a hashed id space (buckets, one or two hashes).

Inside recsys a log's rows are *normalized tables*: Arrow tables with the columns
named by :data:`USER`, :data:`ITEM`, :data:`RATING`, :data:`TIMESTAMP` and
``"user.<name>"`` / ``"item.<name>"`` for features, whatever the file calls them.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys.checks import check_choice, check_fraction, check_positive_int
from recsys.data.contract import FEATURE_KINDS

__all__ = [
    "ITEM",
    "RATING",
    "TIMESTAMP",
    "USER",
    "IdSpaceSpec",
    "LogColumns",
    "SplitSpec",
    "feature_column",
    "id_space_specs",
]

USER = "user_id"
ITEM = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
TOWERS = ("user", "item")
SPLIT_KINDS = ("random", "time")
VOCABULARY_KINDS = ("counted", "hashed")


def feature_column(tower: str, name: str) -> str:
    """The normalized table's column of a side feature.

    Example:
        >>> feature_column("item", "genres")
        'item.genres'
    """
    return f"{tower}.{name}"


def _features(key: str, declared: Mapping[str, Any] | None) -> dict[str, str]:
    if declared is None:
        return {}
    if not isinstance(declared, Mapping):
        raise ValueError(
            f"`{key}` must map column names to kinds, e.g. {{genres: multi_hot}}. "
            f"Received: {key}={declared!r}"
        )
    features = {}
    for name, kind in declared.items():
        if kind not in FEATURE_KINDS:
            raise ValueError(
                f"`{key}.{name}` must be one of {FEATURE_KINDS}. Received: {key}.{name}={kind!r}"
            )
        features[str(name)] = str(kind)
    return features


@dataclass(frozen=True)
class LogColumns:
    """The columns of a log the data module reads, and what each one is.

    Args:
        user: The user id column.
        item: The item id column.
        rating: The rating column, or None for implicit feedback.
        timestamp: The time column, or None.
        user_features: ``{column: kind}`` of the user tower (kinds: ``id``,
            ``multi_hot``, ``text``, ``numeric``).
        item_features: ``{column: kind}`` of the item tower.
        multi_hot_separator: Splits a text column of a ``multi_hot`` feature
            (``"Action|Drama"``); list columns are used as they are.

    Raises:
        ValueError: A kind is unknown, or a column is given two roles.

    Example:
        >>> cols = LogColumns("uid", "iid", item_features={"genres": "multi_hot"})
        >>> cols.source_columns()
        ['uid', 'iid', 'genres']
    """

    user: str = "user_id"
    item: str = "item_id"
    rating: str | None = None
    timestamp: str | None = None
    user_features: Mapping[str, str] = field(default_factory=dict)
    item_features: Mapping[str, str] = field(default_factory=dict)
    multi_hot_separator: str = "|"

    def __post_init__(self) -> None:
        for key in ("user", "item"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"`data.{key}_column` must name a column. Received: {key}_column={value!r}"
                )
        object.__setattr__(self, "user_features", _features("user_features", self.user_features))
        object.__setattr__(self, "item_features", _features("item_features", self.item_features))
        if not self.multi_hot_separator:
            raise ValueError(
                "`multi_hot_separator` must be a non-empty string. "
                f"Received: multi_hot_separator={self.multi_hot_separator!r}"
            )
        seen: dict[str, str] = {}
        for role, column in self.roles():
            if column in seen:
                raise ValueError(
                    f"Column {column!r} is declared twice ({seen[column]} and {role}); give "
                    "each column one role."
                )
            seen[column] = role

    def roles(self) -> list[tuple[str, str]]:
        """``(config key, column)`` of every column read, in a fixed order."""
        roles = [("user_column", self.user), ("item_column", self.item)]
        if self.rating is not None:
            roles.append(("rating_column", self.rating))
        if self.timestamp is not None:
            roles.append(("timestamp_column", self.timestamp))
        roles += [(f"user_features.{name}", name) for name in self.user_features]
        roles += [(f"item_features.{name}", name) for name in self.item_features]
        return roles

    def source_columns(self) -> list[str]:
        """The file columns read, in a fixed order."""
        return [column for _, column in self.roles()]

    def normalized_columns(self) -> list[str]:
        """The columns of the normalized tables, in a fixed order."""
        names = [USER, ITEM]
        names += [RATING] if self.rating is not None else []
        names += [TIMESTAMP] if self.timestamp is not None else []
        names += [feature_column("user", n) for n in self.user_features]
        names += [feature_column("item", n) for n in self.item_features]
        return names

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (part of the cache key)."""
        return {
            "user": self.user,
            "item": self.item,
            "rating": self.rating,
            "timestamp": self.timestamp,
            "user_features": dict(self.user_features),
            "item_features": dict(self.item_features),
            "multi_hot_separator": self.multi_hot_separator,
        }


@dataclass(frozen=True)
class SplitSpec:
    """How rows are assigned to train, validation and test while streaming.

    ``random``: a row's split is a function of (user id, item id, seed) alone (a 64-bit
    hash), so every row of a (user, item) pair lands in the same split, whatever the
    file order or the number of files; test gets about ``test_fraction`` of the rows
    and validation about ``val_fraction`` of the rest. ``time``: rows at or after
    ``time_cutoff`` are test (when None, the cutoff leaves ``test_fraction`` of the rows
    after it, as :func:`recsys.data.splits.cutoff_for_fraction`); validation is the
    latest ``val_fraction`` of the rest.

    Example:
        >>> SplitSpec("random", test_fraction=0.2, val_fraction=0.1).describe()["kind"]
        'random'
    """

    kind: str = "random"
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    seed: int = 42
    time_cutoff: int | str | None = None

    def __post_init__(self) -> None:
        check_choice("split", self.kind, SPLIT_KINDS)
        object.__setattr__(
            self, "test_fraction", check_fraction("test_fraction", self.test_fraction)
        )
        object.__setattr__(
            self,
            "val_fraction",
            check_fraction("val_fraction", self.val_fraction, allow_zero=True),
        )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0. Received: seed={self.seed!r}")

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (part of the cache key)."""
        return {
            "kind": self.kind,
            "test_fraction": self.test_fraction,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "time_cutoff": None if self.time_cutoff is None else str(self.time_cutoff),
        }


@dataclass(frozen=True)
class IdSpaceSpec:
    """How one tower's ids become rows: a counted vocabulary or a hashed id space.

    Args:
        kind: ``counted`` (a vocabulary from the training split's counts) or
            ``hashed`` (no vocabulary: ``num_buckets`` rows, any id maps somewhere).
        min_count: ``counted``: ids seen fewer times in training go to the OOV rows.
        max_size: ``counted``: keep at most this many ids, the most frequent (ties:
            the smaller id); None keeps all.
        oov_buckets: ``counted``: rows shared by out-of-vocabulary ids, chosen by hash
            (1: a single OOV row). More rows let rare and new ids keep apart while
            frequent ids keep rows of their own.
        num_buckets: ``hashed``: rows of the table.
        num_hashes: ``hashed``: 1, or 2 for two independent hashes per id (their rows
            summed; two ids are confused only when both collide).

    Example:
        >>> IdSpaceSpec("hashed", num_buckets=1000, num_hashes=2).kind
        'hashed'
    """

    kind: str = "counted"
    min_count: int = 1
    max_size: int | None = None
    oov_buckets: int = 1
    num_buckets: int = 1 << 20
    num_hashes: int = 1

    def __post_init__(self) -> None:
        check_choice("vocabulary", self.kind, VOCABULARY_KINDS)
        check_positive_int("min_count", self.min_count)
        if self.max_size is not None:
            check_positive_int("max_size", self.max_size)
        check_positive_int("oov_buckets", self.oov_buckets)
        check_positive_int("num_buckets", self.num_buckets)
        check_choice("num_hashes", self.num_hashes, (1, 2))

    def describe(self) -> dict[str, Any]:
        """A JSON-able description."""
        return {
            "kind": self.kind,
            "min_count": self.min_count,
            "max_size": self.max_size,
            "oov_buckets": self.oov_buckets,
            "num_buckets": self.num_buckets,
            "num_hashes": self.num_hashes,
        }


def id_space_specs(vocabulary: Any, **defaults: Any) -> dict[str, IdSpaceSpec]:
    """One :class:`IdSpaceSpec` per tower from the ``data.vocabulary`` key.

    Args:
        vocabulary: ``"counted"`` or ``"hashed"`` for both towers, or a mapping with
            ``user`` and/or ``item`` keys, each a kind or a mapping of
            :class:`IdSpaceSpec` fields (``{user: {kind: hashed, num_hashes: 2}}``).
        **defaults: :class:`IdSpaceSpec` fields shared by both towers
            (``min_count=5``...), overridden by a tower's own mapping.

    Raises:
        ValueError: An unknown tower, kind or field.

    Example:
        >>> specs = id_space_specs({"user": "hashed"}, min_count=2)
        >>> specs["user"].kind, specs["item"].kind, specs["item"].min_count
        ('hashed', 'counted', 2)
    """
    fields = set(IdSpaceSpec.__dataclass_fields__)
    unknown = sorted(set(defaults) - fields)
    if unknown:
        raise ValueError(f"Unknown vocabulary settings {unknown}; known: {sorted(fields)}.")
    per_tower: dict[str, Any] = {}
    if isinstance(vocabulary, str):
        per_tower = {tower: vocabulary for tower in TOWERS}
    elif isinstance(vocabulary, Mapping):
        extra = sorted(set(vocabulary) - set(TOWERS))
        if extra:
            raise ValueError(
                f"`vocabulary` keys must be 'user' and/or 'item'. Received: {extra} "
                f"in vocabulary={dict(vocabulary)!r}"
            )
        per_tower = dict(vocabulary)
    elif vocabulary is not None:
        raise ValueError(
            "`vocabulary` must be 'counted', 'hashed' or {user: ..., item: ...}. "
            f"Received: vocabulary={vocabulary!r}"
        )
    specs = {}
    for tower in TOWERS:
        chosen = per_tower.get(tower, "counted")
        settings = {"kind": chosen} if isinstance(chosen, str) else dict(chosen)
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise ValueError(
                f"Unknown settings {unknown} in vocabulary.{tower}; known: {sorted(fields)}."
            )
        specs[tower] = IdSpaceSpec(**{**defaults, **settings})
    return specs
