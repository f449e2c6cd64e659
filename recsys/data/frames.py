"""The model-data contract for data modules that hold their splits as DataFrames.

:class:`FrameInteractionData` implements :class:`~recsys.data.contract.InteractionData`
from three frames (``train``, ``val``, ``test``: ``user_id``, ``item_id`` and optional
``rating``/``timestamp`` columns) and an optional item table; :class:`FrameTextData`
implements :class:`~recsys.data.contract.TextData` from frames with ``text`` and
``label``. The MovieLens and IMDB modules, and test doubles, build on them.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.contract import (
    SPLITS,
    Catalogue,
    Histories,
    Interactions,
    merge_interactions,
)
from recsys.data.vocabulary import vocabulary

__all__ = ["FrameInteractionData", "FrameTextData"]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    return split


class _FrameSplits:
    train: pd.DataFrame | None
    val: pd.DataFrame | None
    test: pd.DataFrame | None

    def setup(self) -> Any:
        raise NotImplementedError

    def _frame(self, split: str) -> pd.DataFrame:
        self.setup()
        frame = getattr(self, _check_split(split))
        if frame is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not set the {split!r} split.")
        return frame


class FrameInteractionData(_FrameSplits):
    """:class:`~recsys.data.contract.InteractionData` from ``train``/``val``/``test`` frames.

    Subclasses set the three frames in ``setup()`` and may override
    :meth:`item_table` (item ids and features). The contract's containers are built
    once and cached.

    Example:
        >>> class Ratings(FrameInteractionData):
        ...     def setup(self):
        ...         frame = pd.DataFrame({"user_id": ["u1", "u2", "u1"],
        ...                               "item_id": ["a", "b", "c"]})
        ...         self.train, self.val, self.test = frame[:2], frame[:0], frame[2:]
        ...         return self
        >>> Ratings().catalogue().ids.tolist()
        ['a', 'b', 'c']
    """

    def item_table(self) -> pd.DataFrame | None:
        """The item table (``item_id`` and feature columns), or None when there is none."""
        return None

    def _cached(self, key: Any, build: Any) -> Any:
        cache = self.__dict__.setdefault("_contract_cache", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    @property
    def user_vocabulary(self) -> np.ndarray:
        """Sorted unique user ids of the train split."""
        return self._cached("users", lambda: vocabulary(self._frame("train")["user_id"]))

    def catalogue(self) -> Catalogue:
        """The item table's items and every item of the three splits, with features."""

        def build() -> Catalogue:
            extra = np.concatenate(
                [self._frame(s)["item_id"].astype(str).to_numpy(dtype=object) for s in SPLITS]
            )
            return Catalogue.from_frame(self.item_table(), extra_ids=extra)

        return self._cached("catalogue", build)

    def interactions(self, split: str) -> Interactions:
        """The rows of ``split``, dictionary-encoded."""
        return self._cached(("rows", split), lambda: Interactions.from_frame(self._frame(split)))

    def histories(self, splits: Sequence[str] = ("train",), by_time: bool = False) -> Histories:
        """Per-user catalogue rows (and ratings) of ``splits``, ordered by time if asked."""
        splits = tuple(_check_split(s) for s in splits)

        def build() -> Histories:
            rows = merge_interactions([self.interactions(s) for s in splits])
            return Histories.from_interactions(
                rows, self.catalogue(), by_time=by_time and rows.timestamps is not None
            )

        return self._cached(("histories", splits, by_time), build)


class FrameTextData(_FrameSplits):
    """:class:`~recsys.data.contract.TextData` from frames with ``text`` and ``label``.

    Example:
        >>> class Reviews(FrameTextData):
        ...     def setup(self):
        ...         frame = pd.DataFrame({"text": ["good", "bad"], "label": [1, 0]})
        ...         self.train, self.val, self.test = frame, frame[:0], frame
        ...         return self
        >>> Reviews().texts("test")[0].tolist()
        ['good', 'bad']
    """

    def texts(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(texts, labels)`` of ``split``."""
        frame = self._frame(split)
        return frame["text"].astype(str).to_numpy(dtype=object), frame["label"].to_numpy()
