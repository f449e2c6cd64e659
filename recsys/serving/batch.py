"""Batch inference: every user's top-k, streamed block by block into a Parquet file."""

from __future__ import annotations

import itertools
import numbers
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recsys._tf import tf

__all__ = ["RECOMMENDATIONS_SCHEMA", "write_recommendations"]

RECOMMENDATIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
    ]
)


def _table(users: list[str], outputs: Mapping[str, Any]) -> pa.Table:
    item_ids = np.asarray(outputs["item_ids"])
    scores = np.asarray(outputs["scores"], dtype=np.float32)
    count, k = item_ids.shape
    if count != len(users):
        raise ValueError(f"`recommend` answered {count} users for a block of {len(users)}.")
    # "" marks the end of a user's list when exclusions left fewer than k items.
    keep = (item_ids != b"").ravel()
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int32), count)[keep]
    user_column = np.repeat(np.asarray(users, dtype=object), k)[keep]
    items = pa.array(item_ids.ravel()[keep], type=pa.binary()).cast(pa.string())
    return pa.Table.from_arrays(
        [pa.array(user_column, type=pa.string()), ranks, items, scores.ravel()[keep]],
        schema=RECOMMENDATIONS_SCHEMA,
    )


def write_recommendations(
    recommend: Callable[..., Mapping[str, Any]],
    user_ids: Iterable[Any],
    path: str | os.PathLike,
    *,
    k: int,
    batch_size: int = 256,
    progress: bool = True,
) -> int:
    """Writes each user's top ``k`` to Parquet: ``user_id``, ``rank`` (1..k), ``item_id``, ``score``.

    Users are scored ``batch_size`` at a time; TensorFlow scores the next block while
    this one is written, so memory holds two blocks, not the whole answer. The file
    appears under its name only when complete (written beside it, then renamed).
    A user for whom fewer than ``k`` items remain (all others excluded) gets fewer rows.

    Example:

    >>> loaded = tf.saved_model.load("export/1")
    >>> write_recommendations(loaded.signatures["serving_default"], ["1", "2"],
    ...                       "recs.parquet", k=100)
    200

    Args:
        recommend: Called as ``recommend(user_id=<tf.string [b]>, k=<tf.int32 []>)``;
            returns ``item_ids`` (``[b, k]`` bytes, ``""`` for no item) and ``scores``.
            A retrieval SavedModel's ``serving_default`` signature is one.
        user_ids: The users, in output order (any iterable of ids).
        path: The Parquet file to write.
        k: Items per user.
        batch_size: Users per call.
        progress: Show a tqdm progress bar (on stderr).

    Returns:
        The number of rows written.

    Raises:
        ValueError: ``k`` or ``batch_size`` is not a positive integer, or ``recommend``
            returns the wrong number of users.
    """
    for name, value in (("k", k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.incomplete")
    total = len(user_ids) if hasattr(user_ids, "__len__") else None
    k_tensor = tf.constant(int(k), tf.int32)
    users = iter(user_ids)
    rows = 0
    try:
        with (
            pq.ParquetWriter(scratch, RECOMMENDATIONS_SCHEMA) as writer,
            ThreadPoolExecutor(max_workers=1) as pool,
            tqdm(total=total, unit="user", disable=not progress, desc="recommend") as bar,
        ):
            pending: Future | None = None
            while block := [str(u) for u in itertools.islice(users, batch_size)]:
                outputs = recommend(user_id=tf.constant(block, dtype=tf.string), k=k_tensor)
                outputs = {name: outputs[name].numpy() for name in ("item_ids", "scores")}
                if pending is not None:
                    rows += pending.result()
                pending = pool.submit(_write_block, writer, block, outputs)
                bar.update(len(block))
            if pending is not None:
                rows += pending.result()
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return rows


def _write_block(writer: pq.ParquetWriter, users: list[str], outputs: Mapping[str, Any]) -> int:
    table = _table(users, outputs)
    writer.write_table(table)
    return table.num_rows
