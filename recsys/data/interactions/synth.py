"""A synthetic interaction log with known structure, of any size, written as Parquet.

The world: ``clusters`` taste clusters with random unit centroids in ``dim``
dimensions. Every item belongs to one cluster (its latent factor is the centroid
plus noise) and has a Zipf-like popularity (weight ``1 / rank**popularity_exponent``
for a random global rank). Every user belongs to one cluster too (factor: centroid
plus noise) and has a Zipf-like activity. A row picks a user by activity, then the
user's own cluster with probability ``own_cluster``, else a cluster at random by
popularity mass, then an item of that cluster by popularity. So each user's items
concentrate on the items nearest their factor (their latent neighbours) while the
most popular items dominate overall: a model that learns the users' tastes beats
popularity, which tests and benchmarks check.

Columns (one row per interaction, sorted by time): ``user_id`` (``"u<n>"``),
``item_id`` (``"i<n>"``), ``rating`` (float32 1..5, higher for closer factors),
``timestamp`` (int64 Unix seconds), side features ``country`` (user; mostly set by
the cluster), ``genres`` (item, list of 1-3 genre names, the first set by the
cluster), ``title`` (item, words drawn from the cluster's words) and ``price``
(item, float, log-normal around a cluster mean). ``truth/users.parquet`` and
``truth/items.parquet`` record each id's cluster and weight.

Rows are generated a chunk at a time with vectorized NumPy and written as several
Parquet files (``rows_per_file``) with row groups of ``row_group_rows``, so memory
stays flat whatever ``rows`` is.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.checks import check_fraction, check_positive_int

__all__ = ["GENRES", "SynthSpec", "synthesize"]

GENRES = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Horror", "Music", "Mystery", "Romance", "SciFi", "Sport", "Thriller",
    "War", "Western", "Family",
)  # fmt: skip
_COMMON_WORDS = ("the", "of", "night", "story", "return", "last", "city", "blue", "house", "road")


@dataclass(frozen=True)
class SynthSpec:
    """The knobs of :func:`synthesize` (written to ``truth/spec.json``).

    Args:
        users: Distinct users.
        items: Distinct items.
        rows: Interactions.
        seed: Seed of everything.
        clusters: Taste clusters; None picks ``clip(items // 50, 2, 100)``.
        dim: Dimension of the latent factors.
        own_cluster: Probability a row's item comes from the user's own cluster.
        popularity_exponent: Zipf exponent of item popularity.
        activity_exponent: Zipf exponent of user activity.
        countries: Distinct ``country`` values.
        start: First timestamp (Unix seconds).
        span_days: Days the log covers.
        rows_per_file: Rows of each Parquet file.
        row_group_rows: Rows of each row group.
        chunk_rows: Rows generated at a time.
    """

    users: int = 1000
    items: int = 500
    rows: int = 20_000
    seed: int = 0
    clusters: int | None = None
    dim: int = 16
    own_cluster: float = 0.8
    popularity_exponent: float = 0.9
    activity_exponent: float = 0.6
    countries: int = 20
    start: int = 1_600_000_000
    span_days: int = 730
    rows_per_file: int = 5_000_000
    row_group_rows: int = 1 << 17
    chunk_rows: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("users", "items", "rows", "dim", "countries", "span_days"):
            check_positive_int(name, getattr(self, name))
        for name in ("rows_per_file", "row_group_rows", "chunk_rows"):
            check_positive_int(name, getattr(self, name))
        if self.clusters is not None:
            check_positive_int("clusters", self.clusters)
        check_fraction("own_cluster", self.own_cluster)

    @property
    def num_clusters(self) -> int:
        """The clusters used."""
        return self.clusters or int(np.clip(self.items // 50, 2, 100))


def _ids(prefix: str, n: int) -> pa.Array:
    return pa.array(np.char.add(prefix, np.arange(n).astype(str)).astype(object), pa.string())


def _zipf_ranks(sizes: np.ndarray | int, exponent: float, uniform: np.ndarray) -> np.ndarray:
    """Ranks in ``[0, size)`` drawn with probability about ``(rank + 1) ** -exponent``.

    Inverse CDF of the continuous power law on ``[1, size + 1)``: O(1) per draw, no tables.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if abs(exponent - 1.0) < 1e-9:
        x = np.power(sizes + 1.0, uniform)
    else:
        e = 1.0 - exponent
        x = np.power((np.power(sizes + 1.0, e) - 1.0) * uniform + 1.0, 1.0 / e)
    return np.minimum(np.floor(x).astype(np.int64) - 1, sizes.astype(np.int64) - 1)


def _rank_weights(sizes: np.ndarray, exponent: float) -> np.ndarray:
    """The weight ``(rank + 1) ** -exponent`` of every rank of consecutive groups."""
    ranks = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.power(ranks + 1.0, -exponent)


def _unit(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _factors(centroids: np.ndarray, cluster: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = centroids[cluster] + 0.5 * _unit(len(cluster), centroids.shape[1], rng)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class _World:
    """The latent structure and the per-id features, built once."""

    def __init__(self, spec: SynthSpec):
        rng = np.random.default_rng([spec.seed, 1])
        k = spec.num_clusters
        self.centroids = _unit(k, spec.dim, rng)
        self.item_cluster = rng.integers(0, k, spec.items)
        self.item_factor = _factors(self.centroids, self.item_cluster, rng)
        # Items by (cluster, popularity rank in it): a random order within each cluster.
        self.by_cluster = np.lexsort((rng.random(spec.items), self.item_cluster))
        self.cluster_size = np.bincount(self.item_cluster, minlength=k)
        self.cluster_start = np.cumsum(self.cluster_size) - self.cluster_size
        weights = _rank_weights(self.cluster_size, spec.popularity_exponent)
        self.item_weight = np.empty(spec.items)
        self.item_weight[self.by_cluster] = weights
        mass = np.bincount(self.item_cluster, weights=self.item_weight, minlength=k)
        self.cluster_cumulative = np.cumsum(mass / mass.sum())

        self.user_cluster = rng.integers(0, k, spec.users)
        self.user_factor = _factors(self.centroids, self.user_cluster, rng)
        self.user_by_rank = rng.permutation(spec.users)
        self.user_weight = np.empty(spec.users)
        self.user_weight[self.user_by_rank] = np.power(
            np.arange(spec.users) + 1.0, -spec.activity_exponent
        )

        self.user_ids = _ids("u", spec.users)
        self.item_ids = _ids("i", spec.items)
        own = rng.random(spec.users) < 0.7
        country = np.where(
            own, self.user_cluster % spec.countries, rng.integers(0, spec.countries, spec.users)
        )
        self.country = pa.array(np.char.add("c", country.astype(str)).astype(object), pa.string())
        self.genres = self._genres(spec, rng)
        self.title = self._titles(spec, rng)
        cluster_price = rng.normal(0.0, 0.6, k)
        price = np.exp(2.5 + cluster_price[self.item_cluster] + rng.normal(0, 0.3, spec.items))
        self.price = pa.array(np.round(price, 2), pa.float64())

    def _genres(self, spec: SynthSpec, rng: np.random.Generator) -> pa.Array:
        n = spec.items
        first = self.item_cluster % len(GENRES)
        extra = rng.integers(0, 3, n)  # 0-2 more genres
        others = rng.integers(0, len(GENRES), (n, 2))
        names = np.asarray(GENRES, dtype=object)
        values, offsets = [], [0]
        for i in range(n):
            bag = list(dict.fromkeys([first[i], *others[i, : extra[i]]]))
            values.extend(names[bag])
            offsets.append(offsets[-1] + len(bag))
        return pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), pa.array(values, pa.string())
        )

    def _titles(self, spec: SynthSpec, rng: np.random.Generator) -> pa.Array:
        n = spec.items
        words_per_cluster = 6
        word = self.item_cluster * words_per_cluster + rng.integers(0, words_per_cluster, n)
        common = np.asarray(_COMMON_WORDS, dtype=object)[rng.integers(0, len(_COMMON_WORDS), n)]
        cluster_word = np.char.add("w", word.astype(str)).astype(object)
        title = cluster_word + " " + common + " " + np.arange(n).astype(str).astype(object)
        return pa.array(title, pa.string())

    def chunk(self, spec: SynthSpec, rows: int, first: int, rng: np.random.Generator) -> pa.Table:
        users = self.user_by_rank[_zipf_ranks(spec.users, spec.activity_exponent, rng.random(rows))]
        own = rng.random(rows) < spec.own_cluster
        other = np.searchsorted(self.cluster_cumulative, rng.random(rows), side="right")
        cluster = np.where(
            own, self.user_cluster[users], np.minimum(other, len(self.centroids) - 1)
        )
        rank = _zipf_ranks(self.cluster_size[cluster], spec.popularity_exponent, rng.random(rows))
        items = self.by_cluster[self.cluster_start[cluster] + rank]
        # np.take gathers rows many times faster than fancy indexing here.
        affinity = np.einsum(
            "ij,ij->i",
            np.take(self.user_factor, users, axis=0),
            np.take(self.item_factor, items, axis=0),
        )
        noise = rng.standard_normal(rows, dtype=np.float32) * np.float32(0.7)
        rating = np.clip(np.rint(3.0 + 2.0 * affinity + noise), 1, 5).astype(np.float32)
        span = spec.span_days * 86400
        t0 = spec.start + span * first // spec.rows
        t1 = spec.start + span * (first + rows) // spec.rows
        timestamp = np.sort(rng.integers(t0, max(t1, t0 + 1), rows))
        users_a, items_a = pa.array(users), pa.array(items)
        return pa.table(
            {
                "user_id": self.user_ids.take(users_a),
                "item_id": self.item_ids.take(items_a),
                "rating": pa.array(rating),
                "timestamp": pa.array(timestamp.astype(np.int64)),
                "country": self.country.take(users_a),
                "genres": self.genres.take(items_a),
                "title": self.title.take(items_a),
                "price": self.price.take(items_a),
            }
        )


def synthesize(out: str | os.PathLike[str], spec: SynthSpec | None = None) -> dict[str, object]:
    """Write a synthetic log (see the module docstring) to ``out``.

    Args:
        out: Folder for ``part-NNNNN.parquet`` and ``truth/``; created if missing.
            Existing ``part-*.parquet`` files there are replaced.
        spec: The knobs (default: ``SynthSpec()``).

    Returns:
        ``{"files": [...], "rows": n, "bytes": total size, "clusters": k}``.

    Example:
        >>> summary = synthesize("/tmp/recsys-synth", SynthSpec(users=50, items=40, rows=500))
        >>> summary["rows"], len(summary["files"])
        (500, 1)
    """
    spec = spec or SynthSpec()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    world = _World(spec)
    rng = np.random.default_rng([spec.seed, 2])
    files: list[str] = []
    written = 0
    while written < spec.rows:
        path = folder / f"part-{len(files):05d}.parquet"
        in_file = min(spec.rows_per_file, spec.rows - written)
        writer = None
        try:
            done = 0
            while done < in_file:
                rows = min(spec.chunk_rows, in_file - done)
                table = world.chunk(spec, rows, written + done, rng)
                if writer is None:
                    # Dictionary pages only where values repeat within a row group.
                    writer = pq.ParquetWriter(
                        path, table.schema, use_dictionary=["country", "genres", "title"]
                    )
                writer.write_table(table, row_group_size=spec.row_group_rows)
                done += rows
        finally:
            if writer is not None:
                writer.close()
        files.append(str(path))
        written += in_file
    truth = folder / "truth"
    truth.mkdir(exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": world.user_ids,
                "cluster": world.user_cluster,
                "activity": world.user_weight,
                "country": world.country,
            }
        ),
        truth / "users.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "item_id": world.item_ids,
                "cluster": world.item_cluster,
                "popularity": world.item_weight,
            }
        ),
        truth / "items.parquet",
    )
    (truth / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return {
        "files": files,
        "rows": written,
        "bytes": sum(os.path.getsize(f) for f in files),
        "clusters": spec.num_clusters,
    }
