"""The task models: two-tower retrieval, rating prediction and text classification."""

from recsys.models.autorec import AutoRecModel
from recsys.models.features import FeatureStore
from recsys.models.ranking import RankingModel
from recsys.models.retrieval import RetrievalModel
from recsys.models.text import TextClassifier

__all__ = ["AutoRecModel", "FeatureStore", "RankingModel", "RetrievalModel", "TextClassifier"]
