"""tf.data pipelines and vocabularies built from the normalized (Parquet-cached) tables.

The one data module that imports TensorFlow. Tables are held in memory as tensors;
a batch is a vectorized gather of row indices, so the per-row Python and tf.data
overhead is paid once per batch, not once per row:

- shuffled training data draws a fresh permutation per epoch with
  ``stateless_shuffle`` seeded from ``Dataset.random(seed, rerandomize_each_iteration=True)``
  (deterministic for a seed, different every epoch, no shuffle buffer);
- evaluation data is batched in table order and cached after the first pass;
- item features (``title``, ``genres`` as a ragged string tensor) are joined per
  batch by gathering rows of the item table.

Vocabularies are built from the training split only; lookups map anything else to
the out-of-vocabulary index 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from recsys._tf import keras, tf
from recsys.data.vocabulary import vocabulary
from recsys.layers.text import standardize_text

__all__ = [
    "candidates_dataset",
    "encode_in_chunks",
    "make_lookup",
    "ratings_dataset",
    "standardize_text",
    "text_dataset",
    "text_vectorizer",
    "vocabulary",
]

AUTOTUNE = tf.data.AUTOTUNE


def make_lookup(
    vocab: Sequence[str] | np.ndarray, num_oov_indices: int = 1, invert: bool = False
) -> keras.layers.StringLookup:
    """A tf-keras ``StringLookup`` over ``vocab``: known ids -> 1..len(vocab), others -> 0.

    Args:
        vocab: The vocabulary (e.g. from the training split only).
        num_oov_indices: Out-of-vocabulary buckets (index 0.. before the vocabulary).
        invert: Map indices back to strings instead.

    Example:
        >>> lookup = make_lookup(["a", "b"])
        >>> lookup(tf.constant(["b", "zzz"])).numpy().tolist()
        [2, 0]
    """
    return keras.layers.StringLookup(
        vocabulary=np.asarray(vocab, dtype=object),
        mask_token=None,
        num_oov_indices=num_oov_indices,
        invert=invert,
    )


def _string_tensor(values: pd.Series | np.ndarray) -> tf.Tensor:
    return tf.constant(np.asarray(values, dtype=object), dtype=tf.string)


def _dictionary_encoded(values: pd.Series) -> tuple[tf.Tensor, tf.Tensor, np.ndarray]:
    """Row codes (int32), the distinct strings as a tensor, and as NumPy.

    Ids repeat a lot, so a batch gathers strings from a small table instead of holding
    one tf.string per row (ML-25M has 25M rows but 162k users); building is fast too.
    """
    codes, uniques = pd.factorize(values, sort=False)
    uniques = np.asarray(uniques, dtype=object)
    return tf.constant(codes.astype(np.int32)), _string_tensor(uniques), uniques


def _item_features(items: pd.DataFrame) -> dict[str, tf.Tensor | tf.RaggedTensor]:
    genres = items["genres"]
    lengths = np.fromiter((len(g) for g in genres), dtype=np.int64, count=len(genres))
    flat = [g for row in genres for g in row]
    return {
        "title": _string_tensor(items["title"]),
        "genres": tf.RaggedTensor.from_row_lengths(
            tf.constant(np.asarray(flat, dtype=object), dtype=tf.string, shape=[len(flat)]),
            lengths,
        ),
    }


def _batch_indices(index: tf.Tensor, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
    """Split a 1-D index tensor into batches with one reshape (no per-element work)."""
    n = tf.shape(index, out_type=tf.int64)[0]
    full = (n // batch_size) * batch_size
    ds = tf.data.Dataset.from_tensor_slices(tf.reshape(index[:full], [-1, batch_size]))
    if not drop_remainder:
        rest = tf.data.Dataset.from_tensors(index[full:]).filter(lambda r: tf.size(r) > 0)
        ds = ds.concatenate(rest)
    return ds


def _index_batches(
    n: int, batch_size: int, shuffle: bool, seed: int, drop_remainder: bool
) -> tf.data.Dataset:
    """Batches of row indices; shuffled ones use a fresh seeded permutation per epoch."""
    # flat_map and the remainder's filter hide the number of batches; Keras needs it to
    # count an epoch's steps exactly (otherwise it adds one optimizer step per fit() call,
    # which breaks exact resume) and to validate with steps_per_execution > 1.
    n_batches = n // batch_size + (0 if drop_remainder or n % batch_size == 0 else 1)
    known = tf.data.experimental.assert_cardinality(n_batches)
    if not shuffle:
        return _batch_indices(tf.range(n, dtype=tf.int64), batch_size, drop_remainder).apply(known)

    def permute(epoch_seed: tf.Tensor) -> tf.data.Dataset:
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([epoch_seed, tf.constant(seed, tf.int64)])
        )
        return _batch_indices(perm, batch_size, drop_remainder)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return seeds.flat_map(permute).apply(known)


def ratings_dataset(
    ratings: pd.DataFrame,
    items: pd.DataFrame | None = None,
    *,
    batch_size: int = 4096,
    shuffle: bool = False,
    seed: int = 42,
    drop_remainder: bool = False,
    cache: bool | None = None,
) -> tf.data.Dataset:
    """Batches of rating rows as dicts of tensors.

    Each batch has ``user_id`` (tf.string), ``item_id`` (tf.string), ``rating``
    (tf.float32), ``timestamp`` (tf.int64), all shaped ``[batch]``, plus, when
    ``items`` is given, ``title`` (tf.string, ``[batch]``) and ``genres`` (ragged
    tf.string, ``[batch, None]``) of each row's item.

    Args:
        ratings: user_id, item_id, rating, timestamp.
        items: The item table (item_id, title, genres) to join features from.
        batch_size: Rows per batch.
        shuffle: Shuffle rows, with a new permutation every epoch (seeded).
        seed: Seed of the permutations.
        drop_remainder: Drop the last short batch.
        cache: Cache the batches after the first pass; default: when not shuffling.

    Returns:
        A ``tf.data.Dataset`` of dict batches, prefetched.

    Raises:
        ValueError: an item of ``ratings`` is missing from ``items``.

    Example:
        >>> ds = ratings_dataset(ml.ratings, ml.items, batch_size=4096, shuffle=True)  # doctest: +SKIP
        >>> next(iter(ds))["genres"].shape  # doctest: +SKIP
        TensorShape([4096, None])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    user_codes, user_strings, _ = _dictionary_encoded(ratings["user_id"])
    item_codes, item_strings, item_uniques = _dictionary_encoded(ratings["item_id"])
    rating = tf.constant(ratings["rating"].to_numpy(np.float32))
    timestamp = tf.constant(ratings["timestamp"].to_numpy(np.int64))
    features: dict[str, tf.Tensor | tf.RaggedTensor] = {}
    item_rows = None
    if items is not None:
        position = pd.Index(items["item_id"].astype(str)).get_indexer(item_uniques)
        if (position < 0).any():
            unknown = item_uniques[position < 0]
            raise ValueError(
                f"{len(unknown)} item ids of the ratings are missing from the item table, "
                f"e.g. {unknown[:5].tolist()}; pass the item table of the same dataset"
            )
        item_rows = tf.constant(position.astype(np.int64))  # item table row per distinct id
        features = _item_features(items)

    def gather(index: tf.Tensor) -> dict[str, tf.Tensor | tf.RaggedTensor]:
        items_in_batch = tf.gather(item_codes, index)
        batch = {
            "user_id": tf.gather(user_strings, tf.gather(user_codes, index)),
            "item_id": tf.gather(item_strings, items_in_batch),
            "rating": tf.gather(rating, index),
            "timestamp": tf.gather(timestamp, index),
        }
        if item_rows is not None:
            rows = tf.gather(item_rows, items_in_batch)
            for name, values in features.items():
                batch[name] = tf.gather(values, rows)
        return batch

    ds = _index_batches(len(ratings), batch_size, shuffle, seed, drop_remainder)
    ds = ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache if cache is not None else not shuffle:
        ds = ds.cache()
    return ds.prefetch(AUTOTUNE)


def candidates_dataset(items: pd.DataFrame, batch_size: int = 1024) -> tf.data.Dataset:
    """All items with their features, in table order, batched and cached.

    Each batch: ``item_id``, ``title`` (tf.string ``[batch]``), ``genres`` (ragged
    tf.string ``[batch, None]``), ``year`` (tf.int64, 0 where unknown).

    Example:
        >>> next(iter(candidates_dataset(ml.items, 128)))["item_id"].shape  # doctest: +SKIP
        TensorShape([128])
    """
    columns = {"item_id": _string_tensor(items["item_id"]), **_item_features(items)}
    columns["year"] = tf.constant(items["year"].fillna(0).to_numpy(np.int64))

    def gather(index: tf.Tensor) -> dict[str, tf.Tensor | tf.RaggedTensor]:
        return {name: tf.gather(values, index) for name, values in columns.items()}

    ds = tf.data.Dataset.range(len(items)).batch(batch_size)
    return (
        ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True).cache().prefetch(AUTOTUNE)
    )


# --------------------------------------------------------------------------- text


def text_vectorizer(
    texts: pd.Series | Sequence[str] | np.ndarray,
    max_tokens: int = 20000,
    sequence_length: int = 500,
    batch_size: int = 1024,
) -> keras.layers.TextVectorization:
    """A ``TextVectorization`` layer adapted on ``texts`` (pass the training texts only).

    Args:
        texts: Training texts.
        max_tokens: Vocabulary size including the padding and OOV tokens.
        sequence_length: Output length (padded or truncated).
        batch_size: Batch size used while adapting.

    Returns:
        The adapted layer: raw strings ``[batch]`` -> int64 ``[batch, sequence_length]``.

    Example:
        >>> vec = text_vectorizer(["a good film", "a bad film"], max_tokens=10, sequence_length=4)
        >>> vec(tf.constant(["A GOOD, good film!"])).shape
        TensorShape([1, 4])
    """
    layer = keras.layers.TextVectorization(
        max_tokens=max_tokens,
        standardize=standardize_text,
        output_mode="int",
        output_sequence_length=sequence_length,
    )
    layer.adapt(
        tf.data.Dataset.from_tensor_slices(_string_tensor(pd.Series(texts))).batch(batch_size)
    )
    return layer


def encode_in_chunks(
    encode: Callable[[tf.Tensor], tf.Tensor], values: tf.Tensor, chunk: int = 2048
) -> tf.Tensor:
    """``encode`` applied to ``values`` (``[n]``) a chunk of rows at a time, concatenated.

    Example:
        >>> encode_in_chunks(tf.strings.length, tf.constant(["a", "bcd"]), chunk=1).numpy()
        array([1, 3], dtype=int32)
    """
    n = int(values.shape[0])
    parts = [encode(values[i : i + chunk]) for i in range(0, n, chunk)]
    return tf.concat(parts, axis=0) if parts else encode(values)


def text_dataset(
    frame: pd.DataFrame,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 42,
    cache: bool | None = None,
    encode: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
    """``(text, label: tf.float32 [batch])`` batches; text raw or encoded once.

    Args:
        frame: ``text`` and ``label`` columns.
        batch_size: Reviews per batch.
        shuffle: New seeded permutation every epoch.
        seed: Seed of the permutations.
        cache: Cache the batches; default: when not shuffling.
        encode: A function from ``[n]`` strings to ``[n, ...]`` features (e.g. a
            model's text vectorizer), applied to the whole split once, before batching:
            each text is then encoded once per run instead of once per epoch. None
            gives raw ``tf.string [batch]`` texts.

    Example:
        >>> text, label = next(iter(text_dataset(imdb.test, batch_size=32)))  # doctest: +SKIP
        >>> text.dtype, label.dtype  # doctest: +SKIP
        (tf.string, tf.float32)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    texts = _string_tensor(frame["text"])
    if encode is not None:
        texts = encode_in_chunks(encode, texts)
    labels = tf.constant(frame["label"].to_numpy(np.float32))

    def gather(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(texts, index), tf.gather(labels, index)

    ds = _index_batches(len(frame), batch_size, shuffle, seed, drop_remainder=False)
    ds = ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache if cache is not None else not shuffle:
        ds = ds.cache()
    return ds.prefetch(AUTOTUNE)
