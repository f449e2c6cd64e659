"""Argument checks and id helpers shared by the task models."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def index_of(vocabulary: np.ndarray, values: Any) -> np.ndarray:
    """Positions of `values` in the sorted string array `vocabulary` (all must be in it)."""
    values = np.asarray(pd.Series(values).astype(str).to_numpy(), dtype=object)
    positions = np.searchsorted(vocabulary, values)
    positions = np.minimum(positions, len(vocabulary) - 1)
    missing = vocabulary[positions] != values
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} ids are not in the vocabulary, e.g. {values[missing][:3]}."
        )
    return positions.astype(np.int64)


def seen_pairs(data: Any, split: str) -> pd.DataFrame:
    """The interactions a model saw before `split`: train (and val, for test)."""
    frames = [data.train]
    val = getattr(data, "val", None)
    if split == "test" and val is not None and len(val):
        frames.append(val)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
