"""Retrieval serving from stock TensorFlow ops: top-k, indexes, the export, batch inference.

Modules, one job each:

- `user_items`: each user's item rows as CSR (`UserItems`), NumPy only.
- `topk`: exact blockwise top-k with per-query exclusions (`top_k`).
- `exact`, `partitioned`: the exact index and the approximate (k-means partitioned)
  one, both `tf.Module`\\ s with ``search(queries, k, exclude)``.
- `recall`: recall@k of an approximate index against exact, and ``nprobe`` tuning.
- `export`: the SavedModel with ``serving_default``, ``unfiltered``, ``by_history``,
  ``item_embeddings`` and ``user_embeddings`` (`export_retrieval`).
- `stock_ops`: which op types of a SavedModel stock TensorFlow cannot run.
- `batch`: every user's top-k streamed to Parquet (`write_recommendations`).

Names are imported on first use, so ``from recsys.serving import UserItems`` does not
import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "UserItems": "user_items",
    "TopK": "topk",
    "top_k": "topk",
    "exclusion_pairs": "topk",
    "DEFAULT_MAX_SCORES": "topk",
    "select_top_k": "topk",
    "ExactIndex": "exact",
    "PartitionedIndex": "partitioned",
    "kmeans": "partitioned",
    "assign_partitions": "partitioned",
    "recall_at_k": "recall",
    "index_recall": "recall",
    "tune_nprobe": "recall",
    "exact_rows": "recall",
    "SIGNATURES": "export",
    "RetrievalServingModule": "export",
    "export_retrieval": "export",
    "latest_version": "export",
    "save_versioned": "export",
    "non_stock_ops": "stock_ops",
    "graph_op_types": "stock_ops",
    "write_recommendations": "batch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"recsys.serving.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'recsys.serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
