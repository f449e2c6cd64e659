"""Each user's item rows as compressed sparse rows (CSR): two flat NumPy arrays.

The exported retrieval model excludes a stored user's known interactions from their
recommendations. Per-user Python lists would cost about 100 bytes an entry; CSR costs
12 bytes a user and 4 an interaction, so 1M users with 50 items each fit in 200 MB,
and the same arrays become two variables of the SavedModel.

`UserItems` is the serving view of the data contract's
`recsys.data.contract.Histories`, not a second representation: the same offsets and
member rows, addressed by user position (the export stores the ids beside it), with
members as rows of the served catalogue, repeats dropped, and rows narrowed to int32
for the SavedModel. `UserItems.from_histories` takes a run's histories as they are;
every other constructor groups through `Histories.group`.

No TensorFlow here: data code can build it before TensorFlow is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from recsys.data.contract import Histories

__all__ = ["UserItems"]


@dataclass(frozen=True)
class UserItems:
    """Item rows per user: user ``u`` has ``rows[offsets[u]:offsets[u + 1]]``.

    Example:

    >>> seen = UserItems.from_pairs([0, 2, 0, 0], [5, 1, 3, 5], num_users=3)
    >>> seen.offsets.tolist(), seen.rows.tolist()
    ([0, 2, 2, 3], [5, 3, 1])
    >>> seen.items_of(0).tolist(), seen.items_of(1).tolist()
    ([5, 3], [])

    Args:
        offsets: int64 ``[num_users + 1]``, starting at 0, non-decreasing, ending at
            ``len(rows)``.
        rows: int32 ``[nnz]`` catalogue rows (positions in the item catalogue), >= 0.

    Raises:
        ValueError: The arrays are not a valid CSR.
    """

    offsets: np.ndarray
    rows: np.ndarray

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets)
        rows = np.asarray(self.rows)
        if offsets.ndim != 1 or offsets.size < 1 or not np.issubdtype(offsets.dtype, np.integer):
            raise ValueError(
                "`offsets` must be a 1-D integer array of length num_users + 1. "
                f"Received: offsets with shape {offsets.shape} and dtype {offsets.dtype}."
            )
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise ValueError(
                "`rows` must be a 1-D integer array of catalogue rows. "
                f"Received: rows with shape {rows.shape} and dtype {rows.dtype}."
            )
        if offsets[0] != 0 or offsets[-1] != rows.size or np.any(np.diff(offsets) < 0):
            raise ValueError(
                "`offsets` must start at 0, never decrease and end at len(rows) "
                f"({rows.size}). Received: offsets[0]={offsets[0]}, offsets[-1]={offsets[-1]}."
            )
        if rows.size and (rows.min() < 0 or rows.max() > np.iinfo(np.int32).max):
            raise ValueError(
                f"`rows` must be catalogue rows in [0, 2**31). Received: rows in "
                f"[{rows.min()}, {rows.max()}]."
            )
        object.__setattr__(self, "offsets", offsets.astype(np.int64, copy=False))
        object.__setattr__(self, "rows", rows.astype(np.int32, copy=False))

    @property
    def num_users(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def nnz(self) -> int:
        return int(self.rows.size)

    def items_of(self, user: int) -> np.ndarray:
        """The item rows of user row ``user``."""
        if not 0 <= user < self.num_users:
            raise IndexError(f"`user` must be in [0, {self.num_users}). Received: user={user}.")
        return self.rows[self.offsets[user] : self.offsets[user + 1]]

    @classmethod
    def from_pairs(
        cls,
        user_rows: Sequence[int] | np.ndarray,
        item_rows: Sequence[int] | np.ndarray,
        num_users: int,
        unique: bool = True,
    ) -> UserItems:
        """Builds the CSR from (user row, item row) pairs.

        Each user's items keep the order of their first appearance, so a log sorted
        by time gives time-ordered histories.

        Args:
            user_rows: User rows in ``[0, num_users)``, one per pair.
            item_rows: Catalogue rows (>= 0), one per pair.
            num_users: Number of users (users without pairs get empty lists).
            unique: Drop repeated (user, item) pairs, keeping the first.

        Raises:
            ValueError: Lengths differ, or a row is out of range.
        """
        users = np.asarray(user_rows, dtype=np.int64).reshape(-1)
        items = np.asarray(item_rows, dtype=np.int64).reshape(-1)
        if users.size != items.size:
            raise ValueError(
                "`user_rows` and `item_rows` must have one entry per pair. Received: "
                f"{users.size} user rows and {items.size} item rows."
            )
        if isinstance(num_users, bool) or not isinstance(num_users, int | np.integer):
            raise ValueError(f"`num_users` must be an integer. Received: num_users={num_users!r}")
        if users.size and (users.min() < 0 or users.max() >= num_users):
            raise ValueError(
                f"`user_rows` must be in [0, num_users={num_users}). Received: user rows in "
                f"[{users.min()}, {users.max()}]."
            )
        if unique and users.size:
            # The first occurrence of each pair, in the input order.
            _, first = np.unique(np.stack([users, items], axis=1), axis=0, return_index=True)
            keep = np.sort(first)
            users, items = users[keep], items[keep]
        # Imported here: the data package is heavier than this NumPy-only module.
        from recsys.data.contract import Histories

        # The contract's grouping (stable, so each user keeps the input order); keys
        # are the user positions themselves.
        return cls._view(Histories.group(np.arange(num_users), users, items))

    @classmethod
    def from_histories(
        cls,
        histories: Histories,
        item_rows: Sequence[int] | np.ndarray | None = None,
        unique: bool = True,
    ) -> UserItems:
        """The serving view of a run's `recsys.data.contract.Histories`.

        Row ``u`` is ``histories.keys[u]``'s bag, in the bag's order, so pass
        ``histories.keys`` as the stored user ids beside it.

        Example:

        >>> from recsys.data.contract import Histories
        >>> h = Histories(np.array(["u1", "u2"], dtype=object), np.array([0, 3, 4]),
        ...               np.array([4, 2, 4, 1]))
        >>> UserItems.from_histories(h).offsets.tolist()
        [0, 2, 3]
        >>> UserItems.from_histories(h, item_rows=[-1, 0, 5, 6, 7]).rows.tolist()
        [7, 5, 0]

        Args:
            histories: Per-user catalogue rows of the data (e.g.
                ``data.histories(("train", "val"))``).
            item_rows: Where each catalogue row is in the served catalogue
                (``item_rows[member]``; -1 drops the member), for a model whose item
                list is not the data's catalogue; None: the same rows.
            unique: Drop a user's repeated items, keeping the first.

        Raises:
            ValueError: ``item_rows`` does not cover every member.
        """
        members = np.asarray(histories.members, dtype=np.int64)
        if item_rows is not None:
            mapping = np.asarray(item_rows, dtype=np.int64).reshape(-1)
            if members.size and (members.min() < 0 or members.max() >= mapping.size):
                raise ValueError(
                    f"`item_rows` must have an entry for every catalogue row the histories "
                    f"name (up to {members.max()}). Received: {mapping.size} entries."
                )
            members = mapping[members]
        if item_rows is None and not unique:
            return cls._view(histories)
        owner = np.repeat(np.arange(len(histories), dtype=np.int64), histories.lengths())
        keep = members >= 0
        return cls.from_pairs(owner[keep], members[keep], num_users=len(histories), unique=unique)

    @classmethod
    def _view(cls, histories: Histories) -> UserItems:
        # Offsets as they are; members narrowed to int32 (checked in __post_init__).
        return cls(histories.offsets, histories.members)

    @classmethod
    def from_ids(
        cls,
        user_ids: Sequence[Any],
        item_ids: Sequence[Any],
        users: Sequence[Any],
        catalogue: Sequence[Any],
        unique: bool = True,
    ) -> UserItems:
        """Builds the CSR from (user id, item id) pairs, e.g. a training DataFrame's columns.

        Example:

        >>> seen = UserItems.from_ids(["u2", "u1", "u2"], ["b", "a", "c"],
        ...                           users=["u1", "u2"], catalogue=["a", "b", "c"])
        >>> seen.items_of(1).tolist()
        [1, 2]

        Args:
            user_ids: The user of each pair.
            item_ids: The item of each pair.
            users: The stored users; row ``u`` of the CSR is ``users[u]``.
            catalogue: The item catalogue; item rows are positions in it.
            unique: Drop repeated pairs.

        Raises:
            ValueError: A pair's user or item is not in ``users`` / ``catalogue``, or
                ``users`` / ``catalogue`` repeat an id.
        """
        user_rows = _positions("users", users, user_ids)
        item_rows = _positions("catalogue", catalogue, item_ids)
        return cls.from_pairs(user_rows, item_rows, num_users=len(users), unique=unique)


def _positions(name: str, vocabulary: Sequence[Any], values: Sequence[Any]) -> np.ndarray:
    from recsys.data.contract import positions

    vocab = np.asarray([str(v) for v in vocabulary], dtype=object)
    order = np.argsort(vocab, kind="stable")
    ordered = vocab[order]
    if ordered.size > 1 and np.any(ordered[1:] == ordered[:-1]):
        raise ValueError(f"`{name}` must not repeat ids. Received {vocab.size} ids with repeats.")
    values = np.asarray([str(v) for v in values], dtype=object)
    found = positions(ordered, values)  # the contract's lookup in sorted ids
    missing = found < 0
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} ids of the pairs are not in `{name}`, e.g. "
            f"{values[missing][:3].tolist()}. Pass every id the pairs use."
        )
    return order[found].astype(np.int64)
