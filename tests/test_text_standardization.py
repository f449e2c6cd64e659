"""One text standardizer, registered once: both of its Keras names load it."""

from __future__ import annotations

import recsys  # first: sets TF_USE_LEGACY_KERAS before TensorFlow
import recsys.data.pipelines  # imports it too: must not register a second one
import recsys.models
from recsys._tf import keras, tf
from recsys.layers.text import standardize_text


def test_both_registered_names_resolve_to_the_one_function():
    for name in ("recsys>standardize_text", "recsys>standardize_review"):
        assert keras.saving.get_registered_object(name) is standardize_text
    assert keras.saving.get_registered_name(standardize_text) == "recsys>standardize_text"
    assert recsys.data.pipelines.standardize_text is standardize_text


def test_a_vectorizer_saved_with_the_old_name_loads():
    layer = keras.layers.TextVectorization(
        standardize=standardize_text, vocabulary=["great", "film"], output_sequence_length=3
    )
    config = keras.layers.serialize(layer)
    old = {**config, "config": {**config["config"], "standardize": "recsys>standardize_review"}}
    loaded = keras.layers.deserialize(old)
    texts = tf.constant(["Great film!<br />"])
    assert loaded(texts).numpy().tolist() == layer(texts).numpy().tolist() == [[2, 3, 0]]
