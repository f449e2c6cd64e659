"""tf.data pipelines of an interaction log: streamed training epochs and evaluation batches.

The one module of :mod:`recsys.data.interactions` that imports TensorFlow (the data
module imports it only inside its dataset methods).

Training (:func:`train_batches`): a Python generator reads the epoch window by
window (:func:`~recsys.data.interactions.epochs.epoch_batches`, the next window
prepared in a thread) and hands tf.data whole batches, ids as fixed-width byte
arrays that become ``tf.string`` tensors without a Python object per row (measured
here: shuffling strings inside TensorFlow, ``tf.strings.substr`` at random
offsets, cost several times more per row). tf.data cannot checkpoint
a Python generator, so the pipeline is built to be *replayed* instead: an epoch is a
pure function of ``(seed, key)`` and can start at any batch. The key of each epoch
comes from ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``: every
new iterator of the dataset (Keras makes one per epoch) draws the next key, so
epochs differ, the same seed gives the same sequence, and a trainer that replays the
iterators of the epochs already done (as :class:`recsys.training.Trainer` does) is
back on the uninterrupted run's order. ``train_batches(..., iteration=i,
start_batch=n)`` gives the ``i``-th iterator's epoch from batch ``n`` on, for a
resume in the middle of an epoch. The length is known
(``assert_cardinality``), so Keras counts steps exactly.

Evaluation (:func:`split_batches`): the rows of a split's
:class:`~recsys.data.contract.Interactions`, in order, batched by gathering from the
split's distinct ids.

Batches are dicts of ``user_id``, ``item_id`` (``tf.string [batch]``) and, when the
log has them, ``rating`` (``float32``) and ``timestamp`` (``int64``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys._tf import tf
from recsys.data.contract import Interactions
from recsys.data.interactions.epochs import epoch_batches, plan_epoch
from recsys.data.interactions.hashing import TRAIN
from recsys.data.interactions.index import LogIndex

__all__ = ["epoch_key", "split_batches", "train_batches"]

AUTOTUNE = tf.data.AUTOTUNE
GROUP = 16


def _signature(index: LogIndex) -> dict[str, tf.TensorSpec]:
    signature = {
        "user_id": tf.TensorSpec([None], tf.string),
        "item_id": tf.TensorSpec([None], tf.string),
    }
    if index.columns.rating is not None:
        signature["rating"] = tf.TensorSpec([None], tf.float32)
    if index.columns.timestamp is not None:
        signature["timestamp"] = tf.TensorSpec([None], tf.int64)
    return signature


def epoch_key(seed: int, iteration: int) -> int:
    """The key the ``iteration``-th iterator (0-based) of :func:`train_batches` draws.

    Replays ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``; like
    it, depends on TensorFlow's global seed (``keras.utils.set_random_seed``).

    Example:
        >>> epoch_key(42, 3) == epoch_key(42, 3)
        True
    """
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    value = 0
    for _ in range(int(iteration) + 1):
        value = int(next(iter(keys)))
    return value


def train_batches(
    index: LogIndex,
    batch_size: int,
    seed: int,
    window_rows: int,
    iteration: int | None = None,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Training batches streamed from the log's files (see the module docstring).

    Args:
        index: The log's index (counting pass).
        batch_size: Rows per batch (the last batch of an epoch may be shorter).
        seed: The shuffle's seed.
        window_rows: Rows shuffled together.
        iteration: None: every iterator draws the next epoch key (for ``fit``); an
            int: always the epoch of that iterator (see :func:`epoch_key`).
        start_batch: Skip the epoch's first batches (a resume in mid-epoch).

    Returns:
        A dataset of dict batches whose cardinality is the number of batches.

    Raises:
        ValueError: The training split is empty, or ``start_batch`` is past its end.
    """
    rows = index.rows.train
    if rows == 0:
        raise ValueError(
            "The training split is empty: every row went to validation or test. Lower "
            "data.test_fraction / data.val_fraction, or move data.time_cutoff later."
        )
    batches = -(-rows // batch_size)
    if not 0 <= start_batch < batches:
        raise ValueError(
            f"`start_batch` must be in [0, {batches}) (batches per epoch). "
            f"Received: start_batch={start_batch}"
        )
    split_rows = index.blocks.split_rows(TRAIN)
    # Batches travel in stacks of GROUP ([GROUP, batch] arrays, unbatched in TensorFlow):
    # from_generator costs about a millisecond per element whatever its size.
    signature = {
        name: tf.TensorSpec([None, None], spec.dtype) for name, spec in _signature(index).items()
    }

    def stacks(key: np.int64) -> Any:
        plan = plan_epoch(split_rows, window_rows, seed, int(key))
        held: list[dict[str, np.ndarray]] = []
        for batch in epoch_batches(index, TRAIN, plan, batch_size, seed, int(key), start_batch):
            if len(batch["user_id"]) < batch_size:  # the last one: a stack of its own
                break
            held.append(batch)
            if len(held) == GROUP:
                yield {name: np.stack([b[name] for b in held]) for name in batch}
                held = []
        else:
            batch = None
        if held:
            yield {name: np.stack([b[name] for b in held]) for name in held[0]}
        if batch is not None:
            yield {name: values[np.newaxis] for name, values in batch.items()}

    def epoch(key: tf.Tensor) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_generator(stacks, output_signature=signature, args=(key,))
        return ds.unbatch()

    if iteration is None:
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    else:
        keys = tf.data.Dataset.from_tensors(tf.constant(epoch_key(seed, iteration), tf.int64))
    ds = keys.flat_map(epoch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches - start_batch))
    return ds.prefetch(AUTOTUNE)


def split_batches(rows: Interactions, batch_size: int) -> tf.data.Dataset:
    """A split's rows in order, batched (ids gathered from the split's distinct ids).

    Example:
        >>> rows = Interactions.from_ids(["u1", "u2"], ["a", "b"], ratings=[4.0, 5.0])
        >>> next(iter(split_batches(rows, 8)))["item_id"].numpy().tolist()
        [b'a', b'b']
    """
    users = tf.constant(
        np.asarray(rows.users, dtype=object), dtype=tf.string, shape=[len(rows.users)]
    )
    items = tf.constant(
        np.asarray(rows.items, dtype=object), dtype=tf.string, shape=[len(rows.items)]
    )
    columns: dict[str, tf.Tensor] = {
        "user_index": tf.constant(rows.user_index.astype(np.int32)),
        "item_index": tf.constant(rows.item_index.astype(np.int32)),
    }
    if rows.ratings is not None:
        columns["rating"] = tf.constant(rows.ratings.astype(np.float32))
    if rows.timestamps is not None:
        columns["timestamp"] = tf.constant(rows.timestamps.astype(np.int64))

    def gather(start: tf.Tensor) -> dict[str, tf.Tensor]:
        stop = tf.minimum(start + batch_size, len(rows))
        batch = {
            "user_id": tf.gather(users, columns["user_index"][start:stop]),
            "item_id": tf.gather(items, columns["item_index"][start:stop]),
        }
        for name in ("rating", "timestamp"):
            if name in columns:
                batch[name] = columns[name][start:stop]
        return batch

    ds = tf.data.Dataset.range(0, len(rows), batch_size)
    return ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)
