"""Per-id feature tables that models look up from the ids in a batch.

Batches from the data modules carry only ``user_id`` and ``item_id`` (plus the rating).
The towers need more: a user's training history, an item's genres, year and title.
`FeatureStore` keeps those per-id features inside the model, as constants, so that
training, evaluation and the exported SavedModel all start from ids alone.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from recsys._tf import keras, tf

__all__ = ["FeatureStore", "catalogue", "item_columns", "user_histories"]


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
            `tf.float32`).
        **kwargs: Base layer arguments.

    Raises:
        ValueError: Keys repeat, or a column's length differs from the keys'.
    """

    def __init__(
        self, keys: Sequence[Any], columns: Mapping[str, Sequence[Any]], **kwargs: Any
    ) -> None:
        super().__init__(trainable=False, **kwargs)
        self.keys = [str(k) for k in keys]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"`keys` must be unique. Received {len(self.keys)} keys with repeats.")
        self.columns: dict[str, list[Any]] = {}
        self._tables: dict[str, Any] = {}
        self._lookup = keras.layers.StringLookup(
            vocabulary=self.keys, num_oov_indices=1, mask_token=None, name="key_lookup"
        )
        for name, values in columns.items():
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
                self.columns[name] = bags
                lengths = [0] + [len(v) for v in bags]
                flat = [x for v in bags for x in v]
                table = tf.RaggedTensor.from_row_lengths(
                    tf.constant(flat, dtype=dtype, shape=[len(flat)]),
                    tf.constant(lengths, dtype=tf.int64),
                )
            elif all(isinstance(v, str) for v in values):
                self.columns[name] = [str(v) for v in values]
                table = tf.constant(["", *self.columns[name]], dtype=tf.string)
            else:
                floats = [float(v) if v is not None and not pd.isna(v) else 0.0 for v in values]
                self.columns[name] = floats
                table = tf.constant([0.0, *floats], dtype=tf.float32)
            self._tables[name] = table

    def call(self, keys: Any) -> dict[str, Any]:
        index = self._lookup(tf.convert_to_tensor(keys))
        return {name: tf.gather(table, index) for name, table in self._tables.items()}

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("trainable", None)
        config.update(keys=list(self.keys), columns={k: list(v) for k, v in self.columns.items()})
        return config


def user_histories(train: pd.DataFrame, users: Sequence[str]) -> list[list[str]]:
    """Each user's training items, in timestamp order (empty for unseen users)."""
    frame = train
    if "timestamp" in frame.columns:
        frame = frame.sort_values("timestamp", kind="stable")
    grouped = frame.groupby("user_id", sort=False)["item_id"].agg(list)
    return [list(map(str, grouped.get(u, []))) for u in users]


def catalogue(data: Any) -> np.ndarray:
    """Every item id the data module knows, sorted: the retrieval corpus."""
    ids: set[str] = set(map(str, data.item_vocabulary))
    items = getattr(data, "items", None)
    if items is not None and "item_id" in items:
        ids |= set(map(str, items["item_id"]))
    for split in ("train", "val", "test"):
        frame = getattr(data, split, None)
        if frame is not None and len(frame):
            ids |= set(map(str, frame["item_id"]))
    return np.array(sorted(ids), dtype=object)


def item_columns(data: Any, item_ids: Sequence[str], columns: Sequence[str]) -> dict[str, list]:
    """The requested columns of `data.items`, aligned to `item_ids`."""
    items = getattr(data, "items", None)
    if items is None or not len(items):
        raise ValueError(
            f"Item features {list(columns)} need `data.items`; the data module has none."
        )
    items = items.assign(item_id=items["item_id"].astype(str)).drop_duplicates("item_id")
    items = items.set_index("item_id").reindex(list(item_ids))
    out: dict[str, list] = {}
    for column in columns:
        if column not in items:
            raise ValueError(
                f"`data.items` has no column {column!r}; it has {list(items.columns)}."
            )
        values = items[column]
        if column == "genres":
            out[column] = [
                list(v) if isinstance(v, list | tuple | np.ndarray) else [] for v in values
            ]
        elif column == "title":
            out[column] = ["" if pd.isna(v) else str(v) for v in values]
        else:
            out[column] = [
                float(v) if not pd.isna(v) else 0.0 for v in pd.to_numeric(values, errors="coerce")
            ]
    return out
