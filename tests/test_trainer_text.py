"""The Trainer feeds text models token ids: each split encoded once by the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys._tf import tf
from recsys.models import TextClassifier
from recsys.run import RunPaths
from recsys.training import Trainer
from tests.test_models import FakeImdb


class RecordingImdb(FakeImdb):
    """FakeImdb whose splits honour ``encode=`` and record what they were given."""

    def __init__(self) -> None:
        super().__init__(n=96, batch_size=16)
        self.val = self.test
        self.encoders: dict[str, object] = {}

    def _encoded(self, frame, split, encode):
        self.encoders[split] = encode
        texts = tf.constant(frame["text"].to_numpy().astype(str))
        x = texts if encode is None else encode(texts)
        labels = frame["label"].to_numpy().astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, labels)).batch(self.batch_size)

    def train_dataset(self, encode=None):
        return self._encoded(self.train, "train", encode)

    def val_dataset(self, encode=None):
        return self._encoded(self.val, "val", encode)


def test_fit_trains_text_models_on_token_ids_encoded_once_per_split(tmp_path: Path) -> None:
    data = RecordingImdb()
    trainer = Trainer(epochs=2, export=False, tensorboard=False, verbose=0)
    model = TextClassifier(data=data, max_tokens=64, sequence_length=12, embedding_dim=8)
    model.compile()
    seen_dtypes = []
    train_step = model.train_step

    def spy(batch):
        seen_dtypes.append(batch[0].dtype)
        return train_step(batch)

    model.train_step = spy
    result = trainer.fit(model, data, RunPaths(tmp_path / "run"))

    # Both splits were built once, with the model's own encoder, and training saw ids.
    assert set(data.encoders) == {"train", "val"}
    for encode in data.encoders.values():
        assert encode == model.encode_inputs
    assert seen_dtypes and all(dtype == tf.int32 for dtype in seen_dtypes)
    assert len(result.history["loss"]) == 2
    assert "val_accuracy" in result.history
    # The encoded path predicts what the raw-text path predicts.
    texts = data.test["text"].to_numpy().astype(str)
    raw = model(tf.constant(texts), training=False).numpy()
    ids = model(model.encode_inputs(tf.constant(texts)), training=False).numpy()
    np.testing.assert_allclose(raw, ids, rtol=1e-6)
