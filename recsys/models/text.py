"""Binary text classification (IMDB sentiment) over a 20000 x 128 embedding table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys import evaluation
from recsys._tf import keras, no_autograph, tf
from recsys.checks import check_choice, check_fraction, check_positive_int
from recsys.data.contract import TextData
from recsys.layers import Embedding
from recsys.layers.text import standardize_text
from recsys.models._common import check_eval_split

__all__ = ["TextClassifier"]

BACKBONES = ("pooled", "cnn", "conv")


class TextClassifier(keras.Model):
    """Classifies raw text with a TextVectorization, an Embedding and a backbone.

    The model takes raw strings (`[batch]` `tf.string`) and returns the probability of
    the positive class. Its text vectorizer (lower-case, ``<br />`` and punctuation
    stripped, `max_tokens` tokens, `sequence_length` positions) is adapted on the
    training texts when the model is built; with `ngrams=2` the vocabulary holds the
    most frequent unigrams *and* bigrams, in the same `max_tokens` rows. The embedding
    is a `recsys.layers.Embedding` (`max_tokens` x `embedding_dim`), so a row-sparse
    optimizer touches only the rows a batch uses.

    Backbones:

    - ``"pooled"``: the mean of the token embeddings (padding left out), dropout, then
      a sigmoid unit (fastText-like; fast: each distinct token of a batch is looked up
      once).
    - ``"cnn"``: one `Conv1D(conv_filters, conv_kernel_size)` with global max pooling.
    - ``"conv"``: the seed recipe: two strided `Conv1D(conv_filters, conv_kernel_size,
      strides=3)`, global max pooling, a 128-unit hidden layer.

    `compile()` defaults to binary cross-entropy, accuracy and `SparseAdam`.

    Example:

    >>> model = TextClassifier(data)  # data: recsys.data.TextData, e.g. IMDB
    >>> model.compile(optimizer=recsys.optimizers.SparseAdam(1e-3))
    >>> model.fit(data.train_dataset(), epochs=3)
    >>> model.evaluate_metrics(data)  # {'test/accuracy': ..., 'test/auc': ...}
    >>> model.export("/tmp/imdb")  # serving_default: text -> probability

    Args:
        data: What the model reads (:class:`recsys.data.TextData`): the training
            texts, to adapt the vectorizer on (unless `vocabulary` is given).
        max_tokens: Vocabulary size (rows of the embedding table).
        sequence_length: Tokens kept per text (padded or truncated).
        ngrams: 1 for unigrams, 2 for unigrams and bigrams.
        embedding_dim: Width of the embedding.
        backbone: ``"pooled"``, ``"cnn"`` or ``"conv"`` (see above).
        conv_filters: Filters of the convolutions.
        conv_kernel_size: Kernel size of the convolutions.
        hidden_units: Hidden layers before the output unit (``"pooled"``/``"cnn"``).
        dropout: Dropout rate on the token embeddings (on their mean for ``"pooled"``)
            and on hidden layers, in [0, 1).
        vocabulary: Tokens of an already-adapted vocabulary (e.g. another model's
            `vocabulary`), without padding and OOV tokens; None adapts on `data.train`.
        name: Model name.

    Raises:
        ValueError: An argument is out of range, or the data has no training texts.
    """

    def __init__(
        self,
        data: TextData,
        max_tokens: int = 20_000,
        sequence_length: int = 500,
        ngrams: int = 2,
        embedding_dim: int = 128,
        backbone: str = "pooled",
        conv_filters: int = 128,
        conv_kernel_size: int = 7,
        hidden_units: Sequence[int] = (),
        dropout: float = 0.5,
        vocabulary: Sequence[str] | None = None,
        name: str = "text_classifier",
    ) -> None:
        super().__init__(name=name)
        check_positive_int("max_tokens", max_tokens)
        check_positive_int("sequence_length", sequence_length)
        check_choice("ngrams", ngrams, (1, 2))
        check_positive_int("embedding_dim", embedding_dim)
        check_choice("backbone", backbone, BACKBONES)
        check_positive_int("conv_filters", conv_filters)
        check_positive_int("conv_kernel_size", conv_kernel_size)
        check_fraction("dropout", dropout, allow_zero=True)
        self.backbone = backbone
        self.vectorizer = self._make_vectorizer(
            data, max_tokens, sequence_length, ngrams, vocabulary
        )
        self.embedding = Embedding(max_tokens, embedding_dim, name="embedding")
        self.input_dropout = keras.layers.Dropout(dropout)
        layers: list[Any] = []
        if backbone == "conv":
            layers += [
                keras.layers.Conv1D(conv_filters, conv_kernel_size, strides=3, activation="relu"),
                keras.layers.Conv1D(conv_filters, conv_kernel_size, strides=3, activation="relu"),
                keras.layers.GlobalMaxPooling1D(),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dropout(dropout),
            ]
        else:
            if backbone == "cnn":
                layers += [
                    keras.layers.Conv1D(conv_filters, conv_kernel_size, activation="relu"),
                    keras.layers.GlobalMaxPooling1D(),
                ]
            for units in hidden_units:
                layers += [
                    keras.layers.Dense(check_positive_int("hidden_units", units), "relu"),
                    keras.layers.Dropout(dropout),
                ]
        self.backbone_layers = layers
        self.classifier = keras.layers.Dense(1, activation="sigmoid", name="probability")
        self._config = {
            "max_tokens": max_tokens,
            "sequence_length": sequence_length,
            "ngrams": ngrams,
            "embedding_dim": embedding_dim,
            "backbone": backbone,
            "conv_filters": conv_filters,
            "conv_kernel_size": conv_kernel_size,
            "hidden_units": list(hidden_units),
            "dropout": dropout,
            "vocabulary": None if vocabulary is None else list(vocabulary),
        }

    @property
    def vocabulary(self) -> list[str]:
        """The vectorizer's tokens, without the padding and OOV tokens."""
        return self.vectorizer.get_vocabulary(include_special_tokens=False)

    @staticmethod
    def _make_vectorizer(
        data: TextData,
        max_tokens: int,
        sequence_length: int,
        ngrams: int,
        vocabulary: Sequence[str] | None,
    ) -> Any:
        settings = {
            "max_tokens": max_tokens,
            "standardize": standardize_text,
            "ngrams": None if ngrams == 1 else ngrams,
            "output_mode": "int",
            "output_sequence_length": sequence_length,
            "name": "vectorizer",
        }
        if vocabulary is not None:
            if len(vocabulary) > max_tokens - 2:
                raise ValueError(
                    f"`vocabulary` has {len(vocabulary)} tokens; at most max_tokens - 2 = "
                    f"{max_tokens - 2} fit (rows 0 and 1 are padding and OOV)."
                )
            # An array, not a list: a tracked list is walked by Keras after every batch.
            vocabulary = np.asarray([str(token) for token in vocabulary], dtype=object)
            return keras.layers.TextVectorization(vocabulary=vocabulary, **settings)
        texts, _ = data.texts("train")
        if not len(texts):
            raise ValueError("TextClassifier needs training texts to adapt its vectorizer on.")
        vectorizer = keras.layers.TextVectorization(**settings)
        vectorizer.adapt(tf.data.Dataset.from_tensor_slices(texts).batch(2048))
        return vectorizer

    def encode_inputs(self, texts: Any) -> Any:
        """Token ids (`[n, sequence_length]` int32) of raw texts (`[n]` strings).

        What the model computes first from raw text; the trainer has the data encode
        each split once with it (`encode=`), so training steps start from token ids.
        """
        return tf.cast(self.vectorizer(tf.reshape(texts, [-1])), tf.int32)

    @no_autograph
    def call(self, inputs: Any, training: bool | None = None) -> Any:
        """Probabilities `[batch]` of raw `[batch]` strings (or token ids `[batch, n]`)."""
        tokens = inputs
        if tokens.dtype == tf.string:
            tokens = self.vectorizer(tf.reshape(tokens, [-1]))
        if self.backbone == "pooled":
            x = self.input_dropout(self._mean_of_token_embeddings(tokens), training=training)
        else:
            x = self.input_dropout(self.embedding(tokens), training=training)
        for layer in self.backbone_layers:
            x = layer(x, training=training) if isinstance(layer, keras.layers.Dropout) else layer(x)
        return tf.squeeze(self.classifier(x), -1)

    def _mean_of_token_embeddings(self, tokens: Any) -> Any:
        """Mean of each text's token embeddings (padding, id 0, left out).

        Each distinct token of the batch is looked up once and each text's mean is a
        fused gather-and-mean (`tf.sparse.segment_mean`), so the step (and the table's
        gradient) scales with the distinct tokens of a batch, not with batch x sequence
        length.
        """
        bags = tf.RaggedTensor.from_tensor(tf.cast(tokens, tf.int64), padding=0)
        unique, position = tf.unique(bags.flat_values, out_idx=tf.int64)
        rows = self.embedding(unique)
        return tf.sparse.segment_mean(
            rows, position, bags.value_rowids(), num_segments=bags.nrows()
        )

    def compile(
        self,
        optimizer: Any = None,
        loss: Any = None,
        metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        """As `keras.Model.compile`, with defaults: SparseAdam, BCE, accuracy."""
        if optimizer is None:
            from recsys.optimizers import SparseAdam

            optimizer = SparseAdam()
        super().compile(
            optimizer=optimizer,
            loss=loss or keras.losses.BinaryCrossentropy(),
            metrics=metrics if metrics is not None else [keras.metrics.BinaryAccuracy("accuracy")],
            **kwargs,
        )

    def predict_probabilities(self, texts: Any, batch_size: int = 256) -> np.ndarray:
        texts = np.asarray(texts, dtype=object)
        return np.concatenate(
            [
                self(
                    tf.constant(list(texts[i : i + batch_size]), tf.string), training=False
                ).numpy()
                for i in range(0, len(texts), batch_size)
            ]
        )

    def evaluate_metrics(self, data: TextData, split: str = "test") -> dict[str, float]:
        """Accuracy (threshold 0.5) and exact ROC AUC on `split`."""
        texts, labels = data.texts(check_eval_split(split))
        if not len(texts):
            raise ValueError(f"The data's {split!r} split is empty.")
        probabilities = self.predict_probabilities(texts)
        return {
            f"{split}/accuracy": evaluation.accuracy(labels, probabilities),
            f"{split}/auc": evaluation.auc(labels, probabilities),
        }

    def export(self, path: str, data: Any = None) -> Path:
        """Writes a SavedModel under `path/<version>`: raw text `tf.string [None]` -> ``{"probability": [None]}``.

        Args:
            path: The export folder (TensorFlow Serving's layout: ``path/1/``).
            data: The training data (unused: the model holds its vectorizer).

        Returns:
            The SavedModel's folder.
        """
        from recsys.serving import save_versioned

        module = _TextExport(self)
        return save_versioned(module, path, {"serving_default": module.serve}, version=1)

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)


class _TextExport(tf.Module):
    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text: Any) -> dict[str, Any]:
        return {"probability": self.model(text, training=False)}
