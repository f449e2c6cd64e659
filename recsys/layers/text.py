"""Text standardization for vectorizers: the one definition recsys uses.

``standardize_text`` is registered with Keras as ``recsys>standardize_text``; the
name earlier releases used for the same function in the text model,
``recsys>standardize_review``, resolves to it too, so SavedModels and ``.keras`` files
that name either one still load.
"""

from __future__ import annotations

from typing import Any

from recsys._tf import keras, tf

__all__ = ["PUNCTUATION", "standardize_text"]

# ASCII punctuation (string.punctuation) as a regex character class.
PUNCTUATION = r"[!\"#$%&()\*\+,\-\./:;<=>?@\[\\\]\^_`{|}~']"


@keras.saving.register_keras_serializable(package="recsys", name="standardize_text")
def standardize_text(text: Any) -> Any:
    """Lower-cases, replaces ``<br />`` with a space and strips ASCII punctuation.

    The standardization of the seed IMDB example, for ``TextVectorization(standardize=...)``.

    Example:
        >>> standardize_text(tf.constant(["Great!<br />Loved it."])).numpy().tolist()
        [b'great loved it']
    """
    text = tf.strings.lower(text)
    text = tf.strings.regex_replace(text, "<br />", " ")
    return tf.strings.regex_replace(text, PUNCTUATION, "")


# The old registered name of the same function (models saved before the two copies
# were merged name it); a second name in the registry, not a second function.
keras.saving.get_custom_objects().setdefault("recsys>standardize_review", standardize_text)
