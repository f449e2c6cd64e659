"""Vocabularies: the sorted distinct ids that lookups and embedding tables are built from.

Kept apart from :mod:`recsys.data.pipelines` (the one data module that imports
TensorFlow) so the data modules can build vocabularies without importing it, and so
the dependency between the modules and the pipelines goes one way only.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["vocabulary"]


def vocabulary(values: pd.Series | Sequence[str] | np.ndarray) -> np.ndarray:
    """Sorted unique values as a NumPy array of str (what lookups are built from).

    Args:
        values: Ids of any type; each is turned into its ``str``.

    Returns:
        A 1-D object array of distinct strings in ascending order.

    Example:
        >>> vocabulary(["b", "a", "b"]).tolist()
        ['a', 'b']
    """
    if _sorted_distinct_strings(values):
        # Already a vocabulary (e.g. a data module's sorted ids): the same array, not a
        # copy of a million strings.
        return values  # type: ignore[return-value]
    return np.asarray(sorted(pd.unique(pd.Series(values, dtype=str))), dtype=object)


def _sorted_distinct_strings(values: object) -> bool:
    """Whether `values` is a 1-D object array of str in strictly ascending order."""
    if not (isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1):
        return False
    if pd.api.types.infer_dtype(values, skipna=False) != "string":
        return False
    return bool(np.all(values[1:] > values[:-1])) if len(values) > 1 else True
