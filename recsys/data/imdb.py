"""IMDB movie reviews (Maas et al., 2011): labelled train and test sets.

Reads the layout of the official ``aclImdb_v1.tar.gz``,
``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``, from the tarball itself (one
streaming pass, nothing extracted) or from an unpacked folder; the unlabelled
``train/unsup`` reviews and the other files are skipped. Also reads TensorFlow
Datasets' ``imdb_reviews`` when ``tensorflow_datasets`` is installed and the data is
already prepared in its data dir (TFDS carries no star rating: ``rating`` is -1 there).

Tables: ``text`` (str, raw, ``<br />`` kept), ``label`` (int64, 1 = positive),
``rating`` (int64, 1..10 from the file name). Rows are sorted by label (negative first)
then review id, so every route gives the same order.

Routes, in order: ``path``, the Parquet cache, TFDS prepared data, the official URL.
There is no mirror; offline, pass a local copy with ``path=``.

Nothing here imports TensorFlow (the TFDS route imports it only when used).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.sources import (
    MalformedDataError,
    MissingMemberError,
    RemoteFile,
    Route,
    SourceTree,
    attribute,
    fetch_dataset,
    iter_tar_files,
    missing_route,
    official_route,
    resolve_data_dir,
)

OFFICIAL = RemoteFile(
    "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    "aclImdb_v1.tar.gz",
    84_125_825,
    "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
)
CREDIT = (
    "IMDB reviews: Large Movie Review Dataset, Andrew L. Maas, Raymond E. Daly, Peter T. "
    "Pham, Dan Huang, Andrew Y. Ng and Christopher Potts. 2011. Learning Word Vectors for "
    "Sentiment Analysis. ACL 2011."
)
COLUMNS = ["text", "label", "rating"]
SPLITS = ("train", "test")
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


@dataclass
class Imdb:
    """The labelled IMDB reviews.

    Attributes:
        train: 25,000 reviews (text, label, rating) in the official release.
        test: 25,000 reviews.
        source: Route used: ``official``, ``tfds``, or ``local:<path>``.
        cache_dir: The Parquet cache folder (None when it could not be written).
    """

    train: pd.DataFrame
    test: pd.DataFrame
    source: str
    cache_dir: Path | None = None

    def __repr__(self) -> str:
        return f"Imdb(train={len(self.train):,}, test={len(self.test):,}, source={self.source!r})"


def _frame(records: list[tuple[int, int, int, str]]) -> pd.DataFrame:
    """(label, id, rating, text) records -> sorted DataFrame."""
    records.sort(key=lambda r: (r[0], r[1]))
    return pd.DataFrame(
        {
            "text": pd.Series([r[3] for r in records], dtype=str),
            "label": np.array([r[0] for r in records], dtype=np.int64),
            "rating": np.array([r[2] for r in records], dtype=np.int64),
        }
    )


def _record(name: str, display: str, content: bytes) -> tuple[str, tuple[int, int, int, str]]:
    match = _MEMBER.search(name)
    assert match is not None
    split, polarity, review_id, rating = match.groups()
    label = 1 if polarity == "pos" else 0
    stars = int(rating)
    if not (7 <= stars <= 10 if label else 1 <= stars <= 4):
        raise MalformedDataError(
            display,
            None,
            f"rating {stars} in the file name does not fit the folder {polarity!r} "
            "(pos holds 7..10, neg 1..4)",
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedDataError(display, 1, f"not valid utf-8 ({err.reason})") from None
    return split, (label, int(review_id), stars, text)


def read_imdb_tree(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the labelled reviews from an aclImdb tarball or folder.

    Args:
        path: ``aclImdb_v1.tar.gz`` (or any tarball / folder in its layout).

    Returns:
        ``(train, test)`` DataFrames (text, label, rating).

    Raises:
        MissingMemberError: no ``{train,test}/{pos,neg}/<id>_<rating>.txt`` members, or a
            split lacks one polarity.
        MalformedDataError: a review is not utf-8 or its rating does not fit its folder.
    """
    path = Path(path)
    found: dict[str, list[tuple[int, int, int, str]]] = {s: [] for s in SPLITS}
    if path.is_dir():
        with SourceTree(path) as tree:
            for name in tree.names():
                if _MEMBER.search(name):
                    split, rec = _record(name, tree.display(name), tree.read_bytes(name))
                    found[split].append(rec)
    else:
        for name, content in iter_tar_files(path, lambda n: _MEMBER.search(n) is not None):
            split, rec = _record(name, f"{path}:{name}", content)
            found[split].append(rec)
    for split in SPLITS:
        labels = {r[0] for r in found[split]}
        if labels != {0, 1}:
            missing = [p for p, lab in (("neg", 0), ("pos", 1)) if lab not in labels]
            raise MissingMemberError(
                f"{path}: no reviews in {split}/{'/, '.join(missing)}/ (expected "
                "aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt as in aclImdb_v1.tar.gz)"
            )
    return _frame(found["train"]), _frame(found["test"])


def read_tfds(data_dir: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read TFDS ``imdb_reviews`` if it is installed and already prepared (no download).

    Raises:
        FileNotFoundError: TFDS is not installed or the data is not prepared.
    """
    if importlib.util.find_spec("tensorflow_datasets") is None:
        raise FileNotFoundError("tensorflow_datasets is not installed")
    # recsys/__init__ has already set TF_USE_LEGACY_KERAS before TFDS imports TensorFlow.
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder("imdb_reviews", data_dir=None if data_dir is None else str(data_dir))
        prepared_dir = str(builder.data_dir)
    except Exception as err:  # TFDS raises its own error types for missing/broken data
        raise FileNotFoundError(f"TFDS could not open imdb_reviews: {err}") from err
    if not os.path.exists(os.path.join(prepared_dir, "dataset_info.json")):
        raise FileNotFoundError(f"TFDS imdb_reviews is not prepared in {prepared_dir}")
    frames = []
    for split in SPLITS:
        records = []
        for i, example in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
            text = example["text"]
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            records.append((int(example["label"]), i, -1, text))
        frames.append(_frame(records))
    return frames[0], frames[1]


def _tables(splits: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    train, test = splits
    return {"train": train, "test": test}


def load_imdb(
    path: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    tfds_data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Imdb:
    """Load the labelled IMDB reviews, fetching, verifying and caching as needed.

    Routes, in order: ``path`` (tarball or folder in the aclImdb layout; never
    modified), the Parquet cache under ``data_dir``, TFDS ``imdb_reviews`` when
    installed and prepared, the official tarball (size and sha256 checked). A second
    call reads only Parquet.

    Args:
        path: Local ``aclImdb_v1.tar.gz`` or a tarball/folder in its layout.
        data_dir: Cache root; default ``$RECSYS_DATA_DIR`` or ``./data``.
        tfds_data_dir: TFDS data dir to look in (default: TFDS's own default).
        progress: Show download progress bars.

    Returns:
        An :class:`Imdb` with ``train`` and ``test`` DataFrames (text, label, rating).

    Raises:
        DatasetUnavailableError: every route failed; the message lists them and the fix.

    Example:
        >>> imdb = load_imdb("../shared/datasets/aclImdb_labeled.tar.gz")  # doctest: +SKIP
        >>> len(imdb.train), imdb.train.label.mean()  # doctest: +SKIP
        (25000, 0.5)
    """
    root = resolve_data_dir(data_dir)
    fetched = fetch_dataset(
        "IMDB reviews",
        root / "imdb" / "aclImdb",
        [
            Route(
                "TFDS imdb_reviews",
                "tfds",
                fetch=lambda: read_tfds(tfds_data_dir),
                read=_tables,
                skip_on=(FileNotFoundError,),
            ),
            official_route(
                OFFICIAL,
                root / "downloads",
                lambda p: _tables(read_imdb_tree(p)),
                progress=progress,
            ),
            missing_route("mirror", "none known"),
        ],
        path=path,
        read_local=lambda local: (_tables(read_imdb_tree(local)), f"local:{local.absolute()}"),
        fix=(
            "To fix it, use one of these routes:\n"
            "  - a local copy of aclImdb_v1.tar.gz, or a tarball/folder in its layout "
            "(aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt): "
            'load_imdb(path="/path/to/aclImdb_v1.tar.gz") or, with Hydra, the override '
            "data.path=/path/to/aclImdb_v1.tar.gz\n"
            "  - TFDS imdb_reviews prepared beforehand (pip install tensorflow-datasets; "
            "tfds.load('imdb_reviews') where the host is reachable)\n"
            f"  - a cache folder that already holds it: data.data_dir=/path/to/cache or "
            f"RECSYS_DATA_DIR=/path/to/cache (now {root})"
        ),
        meta={"dataset": "imdb"},
        local_name="IMDB",
    )
    attribute(CREDIT)
    return Imdb(fetched.tables["train"], fetched.tables["test"], fetched.source, fetched.cache_dir)
