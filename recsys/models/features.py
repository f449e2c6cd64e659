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

__all__ = ["FeatureStore"]


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
