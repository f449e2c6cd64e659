"""Keras layers whose embedding-table gradients stay row-sparse."""

from recsys.layers.embedding import Embedding

__all__ = ["Embedding"]
