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
    return np.asarray(sorted(pd.unique(pd.Series(values, dtype=str))), dtype=object)
