"""What Keras does around every step: no AutoGraph conversion of recsys layers, and no
walk through vocabularies when it lists a model's layers or metrics."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.layers import Embedding
from recsys.models import FeatureStore, RankingModel, RetrievalModel
from recsys.models.text import TextClassifier
from recsys.towers import FeatureEmbedding, Tower
from tests.test_models import FakeMovieLens

LAYERS = [Embedding, FeatureEmbedding, Tower, FeatureStore, RankingModel, RetrievalModel]


@pytest.mark.parametrize("layer", [*LAYERS, TextClassifier], ids=lambda c: c.__name__)
def test_calls_skip_autograph_and_keep_their_signature(layer):
    from tensorflow.python.util import tf_inspect

    call = layer.call
    assert hasattr(call, "autograph_info__"), f"{layer.__name__}.call is converted by AutoGraph"
    # Keras reads the signature to decide whether to pass `training`/`mask`.
    spec = tf_inspect.getfullargspec(call)
    assert spec.args == list(inspect.signature(call).parameters)
    assert spec.varkw is None


def _largest_tracked_structure(model):
    """Length of the largest tracked list/dict/tuple Keras walks under `model`."""
    largest = 0
    for layer in model._flatten_layers(include_self=True):
        for tracked in layer._self_tracked_trackables:
            if isinstance(tracked, tf.__internal__.tracking.TrackableDataStructure):
                largest = max(largest, len(tracked._values))
    return largest


@pytest.fixture(scope="module")
def movielens():
    return FakeMovieLens(num_users=150, num_items=300, n=3000, seed=1)


@pytest.mark.parametrize("make", [RankingModel, RetrievalModel], ids=["ranking", "retrieval"])
def test_models_track_no_vocabulary_lists(movielens, make):
    model = make(movielens, embedding_dim=4)
    model.compile(optimizer=keras.optimizers.Adam())
    model.fit(movielens.train_dataset().take(1), verbose=0)
    # Vocabularies of 150 users and 300 items are held, but not as tracked lists that
    # Keras's progress bar walks element by element after every batch.
    assert _largest_tracked_structure(model) < 50
    assert model.metrics is not None


def test_text_classifier_tracks_no_vocabulary_list():
    vocabulary = [f"token{i}" for i in range(500)]
    model = TextClassifier(None, vocabulary=vocabulary, max_tokens=1000, sequence_length=8)
    model(tf.constant(["token1 token2", "token3"]))
    assert _largest_tracked_structure(model) < 50
    assert model.get_config()["vocabulary"][:3] == vocabulary[:3]


def test_tower_config_keeps_vocabularies_as_lists():
    tower = Tower({"id": {"kind": "id", "embedding_dim": 2, "vocabulary": ["a", "b", "c"]}})
    config = tower.get_config()
    assert config["features"]["id"]["vocabulary"] == ["a", "b", "c"]
    assert FeatureEmbedding("id", embedding_dim=2, vocabulary=["x", "y"]).get_config()[
        "vocabulary"
    ] == [
        "x",
        "y",
    ]
    np.testing.assert_array_equal(
        Tower.from_config(config)({"id": tf.constant(["c", "a", "zzz"])}).shape,
        (3, 2),
    )
