"""Id spaces for the towers: counted vocabularies, or hashed rows for open id spaces.

- ``counted``: the ids of the training split seen at least ``min_count`` times, the
  ``max_size`` most frequent (ties: the smaller id), most frequent first; every other
  id (rare, or never seen in training: a new user at serving time) gets one of
  ``oov_buckets`` rows chosen by hash. With one OOV row all of them share it; with
  more, the rare ids spread over several rows while the frequent ids keep rows of
  their own (the "OOV rows" variant).
- ``hashed``: no vocabulary at all: ``num_buckets`` rows and every id, seen or not,
  hashed into them (SipHash with a fixed salt per hash, what tf-keras ``Hashing``
  computes). Collisions: with ``n`` distinct ids in ``B`` buckets, an id shares its
  row with another about ``1 - exp(-n / B)`` of the time (63% at ``n = B``, 10% at
  ``n = B / 10``), blindly, so a popular id can share a row with anything. With
  ``num_hashes: 2`` each id gets two rows from independent salts and the tower adds
  them: two ids are confused only when both rows collide, about ``(n / B)**2`` times
  as often (the "two-hash" variant).

:func:`write_vocabulary` saves an id space as Parquet (``id``, ``count``, ``row``).

Nothing here imports TensorFlow (:func:`collisions` imports it when called).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.contract import IdSpace
from recsys.data.interactions.cache import atomic_file
from recsys.data.interactions.config import IdSpaceSpec
from recsys.data.interactions.counting import IdTable

__all__ = ["collisions", "hash_salts", "id_space", "write_vocabulary"]


def hash_salts(tower: str, num_hashes: int) -> tuple[tuple[int, int], ...]:
    """Fixed SipHash salts (two 62-bit keys each) of a tower's hashes.

    Fixed, not random, so a model exported from one run and the data of the next
    agree on every id's rows.

    Example:
        >>> hash_salts("user", 2) == hash_salts("user", 2), len(hash_salts("user", 2))
        (True, 2)
    """
    salts = []
    for index in range(num_hashes):
        digest = hashlib.sha256(f"recsys/{tower}/{index}".encode()).hexdigest()
        salts.append((int(digest[:15], 16), int(digest[15:30], 16)))
    return tuple(salts)


def id_space(table: IdTable, spec: IdSpaceSpec, tower: str) -> IdSpace:
    """The :class:`~recsys.data.contract.IdSpace` of a tower's ids (see the module docstring).

    Args:
        table: The tower's ids with their counts (from the counting pass).
        spec: ``counted`` or ``hashed`` and their settings.
        tower: ``"user"`` or ``"item"`` (picks the salts).

    Example:
        >>> from recsys.data.interactions.counting import IdCounter
        >>> from recsys.data.interactions.hashing import hash_strings
        >>> ids = pa.array(["a", "b", "b", "c", "c", "c"])
        >>> counter = IdCounter()
        >>> counter.add(ids, hash_strings(ids), np.zeros(6, np.uint8), 0)
        >>> space = id_space(counter.result(), IdSpaceSpec(min_count=2), "item")
        >>> space.ids.tolist(), space.counts.tolist(), space.num_rows
        (['c', 'b'], [3, 2], 3)
    """
    if spec.kind == "hashed":
        return IdSpace(
            "hashed",
            num_buckets=spec.num_buckets,
            salts=hash_salts(tower, spec.num_hashes),
        )
    ids = table.sorted_ids
    counts = table.sorted_column(table.counts[:, 0])
    # Most frequent first; equal counts keep id order (lexsort is stable).
    order = np.lexsort((np.arange(len(ids)), -counts))
    order = order[counts[order] >= max(spec.min_count, 1)]
    if spec.max_size is not None:
        order = order[: spec.max_size]
    return IdSpace(
        "vocabulary",
        ids[order],
        counts[order].astype(np.int64),
        oov_buckets=spec.oov_buckets,
    )


def write_vocabulary(path: Path, space: IdSpace) -> Path:
    """Save a counted id space as Parquet (``id``, ``count``, ``row``), atomically.

    Returns:
        ``path``.
    """
    counts = space.counts if space.counts is not None else np.zeros(len(space.ids), np.int64)
    table = pa.table(
        {
            "id": pa.array(list(space.ids), pa.string()),
            "count": pa.array(counts, pa.int64()),
            "row": pa.array(np.arange(len(space.ids)) + space.oov_buckets, pa.int64()),
        }
    )
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path


def collisions(space: IdSpace, ids: np.ndarray) -> dict[str, float]:
    """How many of ``ids`` share rows in a hashed id space (computed with TensorFlow).

    Returns:
        ``ids``: distinct ids; ``shared``: share of ids whose first row another id
        also uses; ``confused``: share of ids whose every row equals another id's
        (what the tower cannot tell apart; equals ``shared`` with one hash).
    """
    from recsys._tf import keras, tf

    if space.kind != "hashed":
        raise ValueError(f"collisions() needs a hashed id space. Received: kind={space.kind!r}")
    ids = np.asarray(ids, dtype=object)
    rows = np.stack(
        [
            keras.layers.Hashing(space.num_buckets, salt=list(salt))(tf.constant(ids)).numpy()
            for salt in space.salts
        ],
        axis=1,
    ).reshape(len(ids), -1)
    if not len(ids):
        return {"ids": 0, "shared": 0.0, "confused": 0.0}
    _, first_inverse, first_counts = np.unique(rows[:, 0], return_inverse=True, return_counts=True)
    _, all_inverse, all_counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return {
        "ids": len(ids),
        "shared": float(np.mean(first_counts[first_inverse.reshape(-1)] > 1)),
        "confused": float(np.mean(all_counts[all_inverse.reshape(-1)] > 1)),
    }
