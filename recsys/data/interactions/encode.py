"""The encoding pass: the model-data contract's containers from one streaming read.

One pass over the blocks turns every row into integer codes and fills, per split,
preallocated arrays (the counting pass knows each split's size): the split's users
and items as positions in its sorted distinct ids, the ratings and the timestamps.
Side features are picked up at each id's first row (known from the counting pass),
so the catalogue and the user table hold one value per id, the first the log gives.
Memory: the int arrays of the rows kept and the ids, never a frame of the log.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.contract import Catalogue, Interactions, UserFeatures
from recsys.data.interactions.config import (
    ITEM,
    RATING,
    TIMESTAMP,
    USER,
    feature_column,
)
from recsys.data.interactions.counting import IdTable
from recsys.data.interactions.hashing import hash_strings
from recsys.data.interactions.index import LogIndex
from recsys.data.interactions.layout import BlockReader

__all__ = ["EncodedLog", "encode_log"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedLog:
    """The contract's containers for a log.

    Attributes:
        catalogue: Every item (any split), sorted, with the item features.
        users: Every user (any split), sorted, with the user features.
        splits: ``{split: interactions}`` of the splits asked for, rows in log order.
    """

    catalogue: Catalogue
    users: UserFeatures
    splits: dict[str, Interactions]


class _FirstRows:
    """Collects the features of each id at its first row, block by block."""

    def __init__(self, table: IdTable, names: list[str]):
        first = table.sorted_column(table.first_rows)
        self.order = np.argsort(first, kind="stable")  # codes by first row
        self.first = first[self.order]
        self.names = names
        self.parts: list[tuple[np.ndarray, pa.Table]] = []

    def add(self, block: pa.Table, first_row: int) -> None:
        if not self.names:
            return
        low, high = np.searchsorted(self.first, [first_row, first_row + len(block)])
        rows = self.first[low:high] - first_row
        self.parts.append((self.order[low:high], block.select(self.names).take(pa.array(rows))))

    def columns(self, kinds: dict[str, str], tower: str) -> dict[str, Any]:
        if not self.names:
            return {}
        codes = np.concatenate([c for c, _ in self.parts])
        table = pa.concat_tables([t for _, t in self.parts]).take(pa.array(np.argsort(codes)))
        out: dict[str, Any] = {}
        for name, kind in kinds.items():
            column = table.column(feature_column(tower, name))
            if kind == "multi_hot":
                out[name] = column.to_pylist()
            elif kind == "numeric":
                out[name] = column.to_numpy().astype(np.float64)
            else:
                # Through a dictionary: one Python str per distinct value, not per id (a
                # million users of a few countries would otherwise hold a million strs).
                encoded = pc.dictionary_encode(column).combine_chunks()
                values = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
                codes = encoded.indices.to_numpy(zero_copy_only=False)
                out[name] = values[codes] if len(values) else np.full(len(codes), "", object)
        return out


def _split_maps(table: IdTable) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per split: (the split's sorted ids, position in them of every code; -1 if absent)."""
    maps = []
    for split in range(3):
        present = table.sorted_column(table.counts[:, split]) > 0
        local = np.where(present, np.cumsum(present) - 1, -1).astype(np.int64)
        maps.append((table.sorted_ids[present], local))
    return maps


def encode_log(index: LogIndex, keep: Sequence[str] = ("train", "val", "test")) -> EncodedLog:
    """Read every block once and build the contract's containers (see the module docstring).

    Args:
        index: The counted log.
        keep: The splits whose rows are encoded (the catalogue and the user table are
            always built): leaving the training split out keeps memory off the
            number of training rows.

    Raises:
        LogError: A file changed since it was counted.
    """
    start = time.perf_counter()
    columns = index.columns
    reader = BlockReader(index.blocks, columns)
    user_maps, item_maps = _split_maps(index.users), _split_maps(index.items)
    kept = [name in keep for name in ("train", "val", "test")]
    sizes = [index.rows[s] if kept[s] else 0 for s in range(3)]
    user_index = [np.empty(n, np.int64) for n in sizes]
    item_index = [np.empty(n, np.int64) for n in sizes]
    ratings = [np.empty(n, np.float32) for n in sizes] if columns.rating else None
    times = [np.empty(n, np.int64) for n in sizes] if columns.timestamp else None
    user_first = _FirstRows(index.users, [feature_column("user", n) for n in columns.user_features])
    item_first = _FirstRows(index.items, [feature_column("item", n) for n in columns.item_features])
    with_features = bool(columns.user_features or columns.item_features)
    cursor = [0, 0, 0]
    table = index.blocks.table
    for block in range(len(index.blocks)):
        rows = reader.read(block, features=with_features)
        source = index.blocks.sources[int(table["file"][block])]
        labels = index.labels(block)
        first_row = int(table["first_row"][block])
        user_first.add(rows, first_row)
        item_first.add(rows, first_row)
        if not any(kept[s] and int(index.blocks.split_rows(s)[block]) for s in range(3)):
            continue
        users = index.users.codes(rows.column(USER), hash_strings(rows.column(USER)), source)
        items = index.items.codes(rows.column(ITEM), hash_strings(rows.column(ITEM)), source)
        for split in range(3):
            if not kept[split]:
                continue
            mask = labels == split
            n = int(mask.sum())
            if not n:
                continue
            at = slice(cursor[split], cursor[split] + n)
            user_index[split][at] = user_maps[split][1][users[mask]]
            item_index[split][at] = item_maps[split][1][items[mask]]
            if ratings is not None:
                ratings[split][at] = rows.column(RATING).to_numpy()[mask]
            if times is not None:
                times[split][at] = rows.column(TIMESTAMP).to_numpy()[mask]
            cursor[split] += n
    splits = {
        name: Interactions(
            user_maps[s][0],
            item_maps[s][0],
            user_index[s],
            item_index[s],
            None if ratings is None else ratings[s],
            None if times is None else times[s],
        )
        for s, name in enumerate(("train", "val", "test"))
        if kept[s]
    }
    encoded = EncodedLog(
        Catalogue(index.items.sorted_ids, item_first.columns(columns.item_features, "item")),
        UserFeatures(index.users.sorted_ids, user_first.columns(columns.user_features, "user")),
        splits,
    )
    log.info("Encoded %s rows in %.1f s", f"{sum(sizes):,}", time.perf_counter() - start)
    return encoded
