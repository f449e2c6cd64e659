"""Train/test splits of interaction tables: random, per-user leave-last-out, time cutoff.

Every function returns new DataFrames that keep the input's index labels (for
:func:`recsys.data.load_movielens` the label is the row's position in the source file),
so a split can be traced back and checked for overlap. None of them shuffles the
rows it does not have to.

The random split is the protocol of the project's anchors: rows in source order,
permuted by ``numpy.random.default_rng(seed).permutation(n)``, the first
``round((1 - test_fraction) * n)`` permuted rows to train (80,000 of ML-100K's 100,000
at 0.2; 900,188 of ML-1M's 1,000,209 at 0.1), the rest to test.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _check_fraction(name: str, value: float, allow_zero: bool) -> float:
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {bound}. Received: {name}={value}")
    return value


def train_size(n: int, test_fraction: float) -> int:
    """Rows that go to train when ``n`` rows are split with ``test_fraction``.

    Example:
        >>> train_size(100_000, 0.2), train_size(1_000_209, 0.1)
        (80000, 900188)
    """
    return round((1.0 - test_fraction) * n)


def random_split(
    df: pd.DataFrame, test_fraction: float = 0.2, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded random split: permute rows, first share to train, the rest to test.

    Rows are taken in ``df``'s order, permuted by
    ``numpy.random.default_rng(seed).permutation(len(df))``; the first
    ``round((1 - test_fraction) * len(df))`` permuted rows are train, in permutation
    order, the rest test.

    Args:
        df: Interactions in source order.
        test_fraction: Share of rows for test, in (0, 1).
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``(train, test)``, disjoint, together all rows; index labels kept.

    Example:
        >>> df = pd.DataFrame({"user_id": list("aabbc"), "rating": [1, 2, 3, 4, 5]})
        >>> train, test = random_split(df, test_fraction=0.4, seed=0)
        >>> len(train), len(test), sorted([*train.index, *test.index])
        (3, 2, [0, 1, 2, 3, 4])
    """
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=False)
    n = len(df)
    order = np.random.default_rng(seed).permutation(n)
    cut = train_size(n, test_fraction)
    return df.iloc[order[:cut]], df.iloc[order[cut:]]


def validation_split(
    train: pd.DataFrame, fraction: float = 0.1, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a validation set out of a training set (same rule as :func:`random_split`).

    Args:
        train: The training split.
        fraction: Share of ``train`` for validation, in [0, 1); 0 returns an empty
            validation frame with ``train``'s columns.
        seed: Seed of ``numpy.random.default_rng``.

    Returns:
        ``(train_rest, val)``; index labels kept.

    Example:
        >>> df = pd.DataFrame({"x": range(10)})
        >>> rest, val = validation_split(df, 0.2, seed=1)
        >>> len(rest), len(val), set(rest.index) & set(val.index)
        (8, 2, set())
    """
    fraction = _check_fraction("fraction", fraction, allow_zero=True)
    if fraction == 0.0:
        return train, train.iloc[:0]
    return random_split(train, fraction, seed)


def leave_last_out(
    df: pd.DataFrame,
    user_col: str = "user_id",
    time_col: str = "timestamp",
    min_interactions: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the latest interaction to test and the rest to train.

    Ties on the timestamp are broken by source order (the later row counts as the
    latest). Users with fewer than ``min_interactions`` rows stay wholly in train,
    since a user with nothing in train cannot be evaluated. Both outputs keep source
    order.

    Args:
        df: Interactions with a user and a time column.
        user_col: User column.
        time_col: Time column (any orderable dtype).
        min_interactions: Users with fewer rows keep them all in train.

    Returns:
        ``(train, test)``; for every test row, no train row of that user is later.

    Example:
        >>> df = pd.DataFrame({"user_id": ["a", "a", "b", "a"], "timestamp": [3, 1, 5, 2]})
        >>> train, test = leave_last_out(df)
        >>> test.index.tolist(), train.index.tolist()
        ([0], [1, 2, 3])
    """
    if min_interactions < 2:
        raise ValueError(f"min_interactions must be >= 2. Received: {min_interactions}")
    position = np.arange(len(df))
    order = np.lexsort((position, df[time_col].to_numpy()))
    ranked = df.iloc[order]
    is_last = ~ranked[user_col].duplicated(keep="last").to_numpy()
    counts = ranked.groupby(user_col, sort=False)[user_col].transform("size").to_numpy()
    take = np.zeros(len(df), dtype=bool)
    take[order[is_last & (counts >= min_interactions)]] = True
    return df.iloc[np.flatnonzero(~take)], df.iloc[np.flatnonzero(take)]


def cutoff_for_fraction(df: pd.DataFrame, test_fraction: float, time_col: str = "timestamp") -> int:
    """The timestamp at which about ``test_fraction`` of rows are at or after it.

    Example:
        >>> cutoff_for_fraction(pd.DataFrame({"timestamp": range(10)}), 0.3)
        7
    """
    test_fraction = _check_fraction("test_fraction", test_fraction, allow_zero=False)
    times = np.sort(df[time_col].to_numpy())
    return int(times[train_size(len(times), test_fraction)])


def time_cutoff(
    df: pd.DataFrame, cutoff: int | float | str | pd.Timestamp, time_col: str = "timestamp"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Global temporal split: rows before ``cutoff`` to train, the rest to test.

    Args:
        df: Interactions with a time column in Unix seconds.
        cutoff: Unix seconds, or a date string / Timestamp (read as UTC).
        time_col: Time column.

    Returns:
        ``(train, test)`` in source order; every train time < cutoff <= every test time.

    Example:
        >>> df = pd.DataFrame({"timestamp": [5, 1, 9, 3]})
        >>> [s.index.tolist() for s in time_cutoff(df, 4)]
        [[1, 3], [0, 2]]
        >>> [len(s) for s in time_cutoff(df, "1970-01-01 00:00:04")]
        [2, 2]
    """
    if isinstance(cutoff, str | pd.Timestamp):
        stamp = pd.Timestamp(cutoff)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        cutoff = stamp.value // 1_000_000_000
    before = df[time_col].to_numpy() < cutoff
    return df[before], df[~before]
