"""A custom Keras model built from recsys parts, without Hydra.

Builds a two-tower model from `recsys.towers.UserTower` / `ItemTower` (whose tables are
`recsys.layers.Embedding`, so their gradients stay row-sparse), adds a plain
`recsys.layers.Embedding` for per-item biases, trains it with
`recsys.optimizers.SparseAdam` on synthetic interactions, and scores the whole catalogue
with `recsys.evaluation.retrieval_metrics`.

Run (a few seconds):

    python examples/custom_two_tower.py
"""

from __future__ import annotations

import numpy as np

# isort: off
import recsys  # noqa: F401  (first, before TensorFlow: makes tf.keras tf-keras)
import tensorflow as tf
import tf_keras as keras

# isort: on
from recsys import evaluation
from recsys.layers import Embedding
from recsys.optimizers import SparseAdam
from recsys.towers import ItemTower, UserTower

NUM_USERS, NUM_ITEMS, NUM_GENRES = 200, 300, 6
TEMPERATURE = 0.1


def synthetic_interactions(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users like items of their favourite genre; returns (users, items, item_genre)."""
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, NUM_GENRES, size=NUM_ITEMS)
    favourite = rng.integers(0, NUM_GENRES, size=NUM_USERS)
    users, items = [], []
    for user in range(NUM_USERS):
        liked = np.flatnonzero(item_genre == favourite[user])
        for item in rng.choice(liked, size=min(12, liked.size), replace=False):
            users.append(user)
            items.append(item)
    return np.array(users), np.array(items), item_genre


class TwoTower(keras.Model):
    """Dot product of a user tower and an item tower, plus an item bias."""

    def __init__(self, genre_of_item: list[str]) -> None:
        super().__init__()
        self.user_tower = UserTower(
            user_vocabulary=[f"u{u}" for u in range(NUM_USERS)],
            embedding_dim=16,
            output_dim=16,
            l2_normalize=True,
        )
        self.item_tower = ItemTower(
            item_vocabulary=[f"i{i}" for i in range(NUM_ITEMS)],
            genre_vocabulary=sorted(set(genre_of_item)),
            embedding_dim=16,
            output_dim=16,
            l2_normalize=True,
        )
        self.item_bias = Embedding(NUM_ITEMS, 1, embeddings_initializer="zeros")
        self.genre_of_item = tf.constant(genre_of_item)

    def embed_items(self, item_index: tf.Tensor) -> tf.Tensor:
        ids = tf.strings.join(["i", tf.strings.as_string(item_index)])
        genres = tf.gather(self.genre_of_item, item_index)[:, None]
        return self.item_tower({"item_id": ids, "genres": genres})

    def embed_users(self, user_index: tf.Tensor) -> tf.Tensor:
        return self.user_tower(
            {"user_id": tf.strings.join(["u", tf.strings.as_string(user_index)])}
        )

    def train_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            users = self.embed_users(batch["user"])
            items = self.embed_items(batch["item"])
            # In-batch softmax: each user's positive against the batch's other items.
            logits = tf.matmul(users, items, transpose_b=True) / TEMPERATURE
            logits += tf.transpose(self.item_bias(batch["item"]))
            labels = tf.range(tf.shape(logits)[0])
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        # Embedding tables get tf.IndexedSlices: SparseAdam updates only those rows.
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return {"loss": loss}


def main() -> dict[str, float]:
    tf.keras.utils.set_random_seed(0)
    users, items, item_genre = synthetic_interactions()
    order = np.random.default_rng(1).permutation(users.size)
    train, test = order[: int(0.8 * users.size)], order[int(0.8 * users.size) :]

    model = TwoTower([f"g{g}" for g in item_genre])
    model.compile(optimizer=SparseAdam(learning_rate=0.01))
    dataset = tf.data.Dataset.from_tensor_slices({"user": users[train], "item": items[train]})
    model.fit(dataset.shuffle(users.size, seed=0).batch(256), epochs=15, verbose=0)

    # Score = user . item / temperature + item bias, as one dot product per pair.
    queries = np.concatenate(
        [model.embed_users(tf.range(NUM_USERS)).numpy() / TEMPERATURE, np.ones([NUM_USERS, 1])],
        axis=1,
    )
    candidates = np.concatenate(
        [model.embed_items(tf.range(NUM_ITEMS)).numpy(), model.item_bias(tf.range(NUM_ITEMS))],
        axis=1,
    )
    metrics = evaluation.retrieval_metrics(
        queries,
        candidates,
        test_users=users[test],
        test_items=items[test],
        train_users=users[train],
        train_items=items[train],
        top_accuracy_ks=[50],
        recall_ks=[50],
        ndcg_ks=[10],
    )
    for name, value in metrics.items():
        print(f"{name}: {value:.3f}")
    return metrics


if __name__ == "__main__":
    main()
