"""Optimizers that keep sparse (row-wise) updates sparse."""

from recsys.optimizers.rowwise_adagrad import RowwiseAdagrad
from recsys.optimizers.sparse_adam import SparseAdam

__all__ = ["RowwiseAdagrad", "SparseAdam"]
