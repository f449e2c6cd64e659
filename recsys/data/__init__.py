"""Datasets: fetched, verified, cached as Parquet, split, and streamed with tf.data.

- :func:`load_movielens` / :class:`MovieLens`: MovieLens 100K, 1M, 20M, 25M, latest-small.
- :func:`load_imdb` / :class:`Imdb`: the labelled IMDB reviews.
- :mod:`recsys.data.splits`: random, leave-last-out, time-cutoff and validation splits.
- :class:`MovieLensDataModule`, :class:`ImdbDataModule`,
  :class:`InteractionsDataModule` (your own Parquet/CSV log, :mod:`recsys.data.interactions`):
  what ``conf/data/*.yaml`` builds.
- :mod:`recsys.data.sources`: download, checksum, cache, mirrors, safe extraction, and
  the one order of routes (local path, cache, official URL, mirrors) every dataset uses.
- :mod:`recsys.data.vocabulary`: the sorted id vocabularies lookups are built from.
- :mod:`recsys.data.contract`: what the models read from a data module
  (:class:`InteractionData`, :class:`TextData` and their containers); a new data
  source implements it.
- :mod:`recsys.data.pipelines`: tf.data pipelines, lookups, text vectorization.

Importing this package does not import TensorFlow; only :mod:`recsys.data.pipelines`
(and the data modules' dataset methods) do.

Example:
    >>> from recsys.data import load_movielens
    >>> ml = load_movielens("100k")  # doctest: +SKIP
    >>> len(ml.ratings)  # doctest: +SKIP
    100000
"""

from recsys.data import splits
from recsys.data.contract import (
    Catalogue,
    FeatureData,
    Histories,
    IdSpace,
    InteractionData,
    Interactions,
    TextData,
    UserFeatures,
)
from recsys.data.imdb import Imdb, load_imdb
from recsys.data.interactions import InteractionsDataModule, LogError
from recsys.data.modules import ImdbDataModule, MovieLensDataModule
from recsys.data.movielens import VARIANTS, MovieLens, load_movielens
from recsys.data.sources import (
    ChecksumError,
    DataError,
    DatasetUnavailableError,
    DownloadError,
    MalformedDataError,
    MissingMemberError,
    UnsafeArchiveError,
    resolve_data_dir,
    safe_extract,
)

__all__ = [
    "VARIANTS",
    "Catalogue",
    "ChecksumError",
    "DataError",
    "DatasetUnavailableError",
    "DownloadError",
    "FeatureData",
    "Histories",
    "IdSpace",
    "Imdb",
    "ImdbDataModule",
    "InteractionData",
    "Interactions",
    "InteractionsDataModule",
    "LogError",
    "MalformedDataError",
    "MissingMemberError",
    "MovieLens",
    "MovieLensDataModule",
    "TextData",
    "UnsafeArchiveError",
    "UserFeatures",
    "load_imdb",
    "load_movielens",
    "resolve_data_dir",
    "safe_extract",
    "splits",
]
