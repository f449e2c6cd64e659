"""An approximate index from stock TensorFlow ops: partitioned (IVF) brute force.

At export, k-means (NumPy) splits the catalogue into partitions around centroids.
A query scores the centroids, then only the items of its ``nprobe`` best partitions:
about ``nprobe / num_partitions`` of the exact work. Unlike a ScaNN index, the graph
uses only ops every TensorFlow Serving binary has (``MatMul``, ``TopKV2``, ``GatherV2``,
``RaggedRange``, ``LowerBound``), so it loads anywhere the exact
export does.

Each partition's items are stored contiguously, in chunks of ``chunk_size`` rows
(the last one padded), so the items of a probed partition are one gather of whole
chunks.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from recsys._tf import tf
from recsys.serving.topk import TopK, exclusion_pairs, select_top_k

__all__ = ["PartitionedIndex", "assign_partitions", "kmeans"]


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _as_matrix(name: str, vectors: Any) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(
            f"`{name}` must be a non-empty [n, dim] array. Received: shape {array.shape}."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` must be finite. Received NaN or infinite values.")
    return array


def assign_partitions(vectors: Any, centroids: Any, block: int = 16_384) -> np.ndarray:
    """The nearest centroid (Euclidean) of each vector, int32 ``[n]``.

    Example:

    >>> assign_partitions([[0.0, 1.0], [5.0, 5.0]], [[0.0, 0.0], [4.0, 4.0]]).tolist()
    [0, 1]
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    # argmin |x - c|^2 = argmax x.c - |c|^2 / 2: one matrix product per block.
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(vectors), dtype=np.int32)
    for start in range(0, len(vectors), block):
        scores = vectors[start : start + block] @ centroids.T
        scores -= half_norms
        out[start : start + block] = np.argmax(scores, axis=1)
    return out


def kmeans(
    vectors: Any,
    num_clusters: int,
    iterations: int = 10,
    sample_size: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Lloyd's k-means on (a sample of) ``vectors``; returns float32 centroids ``[k, d]``.

    Example:

    >>> points = np.array([[0.0, 0.0], [0.1, 0.0], [9.0, 9.0], [9.1, 9.0]])
    >>> sorted(kmeans(points, 2, seed=1)[:, 0].round(2).tolist())
    [0.05, 9.05]

    Args:
        vectors: ``[n, d]`` points.
        num_clusters: Number of centroids, at most ``n``.
        iterations: Lloyd iterations.
        sample_size: Points the iterations use (default ``64 * num_clusters``; a few
            dozen per centroid place them about as well as all points, much faster).
        seed: Seed of the sample and the initial centroids.

    Raises:
        ValueError: An argument is out of range.
    """
    points = _as_matrix("vectors", vectors)
    num_clusters = _check_int("num_clusters", num_clusters)
    iterations = _check_int("iterations", iterations, minimum=0)
    if num_clusters > len(points):
        raise ValueError(
            f"`num_clusters` must be at most the number of vectors ({len(points)}). "
            f"Received: num_clusters={num_clusters}."
        )
    rng = np.random.default_rng(seed)
    size = len(points) if sample_size is None else _check_int("sample_size", sample_size)
    size = min(len(points), size if sample_size is not None else 64 * num_clusters)
    size = max(size, num_clusters)
    train = (
        points[np.sort(rng.choice(len(points), size, replace=False))]
        if size < len(points)
        else points
    )
    centroids = train[rng.choice(len(train), num_clusters, replace=False)].copy()
    for _ in range(iterations):
        labels = assign_partitions(train, centroids)
        counts = np.bincount(labels, minlength=num_clusters)
        sums = np.stack(
            [
                np.bincount(labels, weights=train[:, j], minlength=num_clusters)
                for j in range(train.shape[1])
            ],
            axis=1,
        )
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        # An empty cluster restarts at a random point rather than wasting a partition.
        empty = np.flatnonzero(~filled)
        if empty.size:
            centroids[empty] = train[rng.choice(len(train), empty.size, replace=False)]
    return centroids


class PartitionedIndex(tf.Module):
    """Approximate top-k: score the centroids, then the items of the best partitions.

    Build it with `PartitionedIndex.build` (k-means), or from given centroids and
    assignments. Scores of the items it returns are exact dot products; an item is
    missed when its partition is not among the ``nprobe`` probed. Measure what that
    costs with `recsys.serving.recall.index_recall`, and pick ``nprobe`` with
    `recsys.serving.recall.tune_nprobe`.

    Queries are searched one at a time (two in flight): each gathers its probed
    partitions' chunks and scores them with one matrix-vector product.

    Example:

    >>> vectors = np.random.default_rng(0).normal(size=(1000, 8)).astype("float32")
    >>> index = PartitionedIndex.build(vectors, num_partitions=16, nprobe=16)
    >>> index.search(vectors[:2], k=3).rows.shape  # probing every partition: exact
    TensorShape([2, 3])

    Args:
        item_vectors: float32 ``[N, d]``.
        centroids: float32 ``[num_partitions, d]``.
        assignments: int ``[N]``, each item's partition.
        nprobe: Partitions scored per query (clipped to ``num_partitions``).
        chunk_size: Rows per stored chunk; a partition occupies whole chunks, the last
            one padded. Default: a power of two near a quarter of the mean partition
            size, between 8 and 64.
        parallel_iterations: Queries searched at once.
        name: Module name.

    Raises:
        ValueError: Shapes disagree, or an argument is out of range.
    """

    def __init__(
        self,
        item_vectors: Any,
        centroids: Any,
        assignments: Any,
        nprobe: int,
        chunk_size: int | None = None,
        parallel_iterations: int = 2,
        name: str = "partitioned_index",
    ) -> None:
        super().__init__(name=name)
        vectors = _as_matrix("item_vectors", item_vectors)
        centroids = _as_matrix("centroids", centroids)
        assignments = np.asarray(assignments).reshape(-1)
        num_items, dim = vectors.shape
        num_partitions = len(centroids)
        if centroids.shape[1] != dim:
            raise ValueError(
                f"`centroids` must have the items' dimension {dim}. Received: shape "
                f"{centroids.shape}."
            )
        if assignments.size != num_items or (
            assignments.size and (assignments.min() < 0 or assignments.max() >= num_partitions)
        ):
            raise ValueError(
                f"`assignments` must give each of the {num_items} items a partition in "
                f"[0, {num_partitions}). Received {assignments.size} values."
            )
        if chunk_size is None:
            quarter = num_items / num_partitions / 4
            chunk_size = int(min(64, max(8, 2 ** round(math.log2(max(quarter, 1))))))
        self.nprobe = min(_check_int("nprobe", nprobe), num_partitions)
        self.chunk_size = _check_int("chunk_size", chunk_size)
        self.parallel_iterations = _check_int("parallel_iterations", parallel_iterations)
        self.num_items, self.dim = int(num_items), int(dim)
        self.num_partitions = int(num_partitions)

        order = np.argsort(assignments, kind="stable")
        sizes = np.bincount(assignments, minlength=num_partitions)
        chunks = -(-sizes // chunk_size)  # ceil
        chunk_offsets = np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)
        num_chunks = int(chunk_offsets[-1])
        # Position of each item in the chunked layout: its partition's first slot plus
        # its rank inside the partition.
        first_slot = chunk_offsets[:-1] * chunk_size
        starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        sorted_parts = assignments[order]
        positions = first_slot[sorted_parts] + (np.arange(num_items) - starts[sorted_parts])
        slot_rows = np.full(num_chunks * chunk_size, -1, dtype=np.int32)
        slot_rows[positions] = order
        slot_vectors = np.zeros((num_chunks * chunk_size, dim), dtype=np.float32)
        slot_vectors[positions] = vectors[order]
        position_of_row = np.empty(num_items, dtype=np.int64)
        position_of_row[order] = positions

        self.partition_sizes = sizes
        self.centroids = tf.Variable(centroids, trainable=False, name="centroids")
        self.chunk_offsets = tf.Variable(chunk_offsets, trainable=False, name="chunk_offsets")
        self.chunk_vectors = tf.Variable(
            slot_vectors.reshape(num_chunks, chunk_size, dim),
            trainable=False,
            name="chunk_vectors",
        )
        self.chunk_rows = tf.Variable(
            slot_rows.reshape(num_chunks, chunk_size), trainable=False, name="chunk_rows"
        )
        self.position_of_row = tf.Variable(position_of_row, trainable=False, name="position_of_row")

    @classmethod
    def build(
        cls,
        item_vectors: Any,
        num_partitions: int | None = None,
        nprobe: int | None = None,
        iterations: int = 10,
        sample_size: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> PartitionedIndex:
        """k-means partitions of ``item_vectors``, then the index over them.

        Args:
            item_vectors: float32 ``[N, d]``.
            num_partitions: Default ``round(2 * sqrt(N))``, at most N.
            nprobe: Partitions probed per query; default an eighth of them. Pick it
                from a recall measurement (`recsys.serving.recall.tune_nprobe`).
            iterations: k-means iterations (`kmeans`).
            sample_size: Vectors k-means iterates on (`kmeans`).
            seed: k-means seed.
            **kwargs: ``chunk_size``, ``parallel_iterations``, ``name``.
        """
        vectors = _as_matrix("item_vectors", item_vectors)
        if num_partitions is None:
            num_partitions = max(1, min(len(vectors), round(2 * math.sqrt(len(vectors)))))
        centroids = kmeans(vectors, num_partitions, iterations, sample_size, seed)
        if nprobe is None:
            nprobe = max(1, num_partitions // 8)
        return cls(vectors, centroids, assign_partitions(vectors, centroids), nprobe, **kwargs)

    def vectors(self, rows: Any) -> Any:
        """The vectors of catalogue ``rows`` (int ``[n]``, each in ``[0, N)``)."""
        positions = tf.gather(tf.convert_to_tensor(self.position_of_row), rows)
        flat = tf.reshape(tf.convert_to_tensor(self.chunk_vectors), [-1, self.dim])
        return tf.gather(flat, positions)

    def search(self, queries: Any, k: Any, exclude: Any = None, nprobe: int | None = None) -> TopK:
        """The best ``k`` rows per query among the probed partitions.

        Same contract as `recsys.serving.topk.top_k`: ``[B, min(k, N)]`` scores and
        rows, ``-inf`` and -1 where fewer items were found (excluded, or the probed
        partitions hold fewer than ``k``). Equal scores come in probe order.

        Args:
            queries: float32 ``[B, d]``.
            k: Python int or int scalar tensor, >= 0.
            exclude: Optional rows to leave out per query (see `top_k`).
            nprobe: Partitions to probe instead of the index's ``nprobe``.
        """
        if isinstance(k, bool) or (isinstance(k, numbers.Number) and (int(k) != k or k < 0)):
            raise ValueError(f"`k` must be an integer >= 0. Received: k={k!r}")
        if nprobe is None:
            nprobe = self.nprobe
        nprobe = min(_check_int("nprobe", nprobe), self.num_partitions)
        queries = tf.cast(tf.convert_to_tensor(queries), tf.float32)
        k = tf.convert_to_tensor(k)
        checks = [tf.debugging.assert_non_negative(k, message="k must be >= 0")]
        with tf.control_dependencies(checks):
            k = tf.minimum(tf.cast(k, tf.int32), self.num_items)
        batch = tf.shape(queries)[0]
        num_items = tf.constant(self.num_items, tf.int64)
        neg_inf = tf.constant(float("-inf"))
        if exclude is not None:
            excluded_queries, excluded_rows = exclusion_pairs(exclude)
            # Membership of (query, row) by binary search in the sorted pair keys; the
            # sentinel keeps the search inside the array when nothing is excluded.
            keys = tf.sort(excluded_queries * num_items + excluded_rows)
            keys = tf.concat([keys, [tf.int64.max]], axis=0)

        # Dense reads of the variables, gathers from the tensors: gathering from a
        # variable switches it to copy-on-read, and a dense read (in `vectors`) would
        # then copy all of it.
        centroids = tf.convert_to_tensor(self.centroids)
        chunk_offsets = tf.convert_to_tensor(self.chunk_offsets)
        chunk_vectors = tf.convert_to_tensor(self.chunk_vectors)
        chunk_rows = tf.convert_to_tensor(self.chunk_rows)

        def body(i: Any, all_scores: Any, all_rows: Any) -> tuple[Any, Any, Any]:
            query = queries[i : i + 1]
            probe = tf.math.top_k(tf.matmul(query, centroids, transpose_b=True), k=nprobe).indices[
                0
            ]
            chunks = tf.ragged.range(
                tf.gather(chunk_offsets, probe), tf.gather(chunk_offsets, probe + 1)
            ).flat_values
            vectors = tf.reshape(tf.gather(chunk_vectors, chunks), [-1, self.dim])
            scores = tf.matmul(query, vectors, transpose_b=True)
            rows = tf.reshape(tf.gather(chunk_rows, chunks), [1, -1])
            valid = rows >= 0
            if exclude is not None:
                wanted = tf.cast(i, tf.int64) * num_items + tf.cast(rows, tf.int64)
                found = tf.gather(keys, tf.searchsorted(keys[None, :], wanted, side="left"))
                valid &= found != wanted
            scores = tf.where(valid, scores, neg_inf)
            found_k = tf.minimum(k, tf.shape(scores)[1])
            values, indices = select_top_k(scores, found_k)
            best_rows = tf.gather(rows, indices, batch_dims=1)
            missing = tf.stack([1, k - found_k])
            values = tf.concat([values, tf.fill(missing, neg_inf)], axis=1)
            best_rows = tf.concat([best_rows, tf.fill(missing, -1)], axis=1)
            return i + 1, all_scores.write(i, values[0]), all_rows.write(i, best_rows[0])

        _, scores, rows = tf.while_loop(
            lambda i, *_: i < batch,
            body,
            [
                tf.constant(0),
                tf.TensorArray(tf.float32, size=batch, element_shape=[None]),
                tf.TensorArray(tf.int32, size=batch, element_shape=[None]),
            ],
            parallel_iterations=self.parallel_iterations,
        )
        # An empty TensorArray cannot stack elements of unknown length.
        scores, rows = tf.cond(
            batch > 0,
            lambda: (scores.stack(), rows.stack()),
            lambda: (tf.zeros(tf.stack([0, k])), tf.zeros(tf.stack([0, k]), tf.int32)),
        )
        rows = tf.where(scores > neg_inf, rows, tf.constant(-1, tf.int32))
        return TopK(scores, rows)
