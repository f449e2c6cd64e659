"""Test doubles and helpers for recsys.train's tests.

:class:`FakeDataModule` and :class:`FakeModel` honour the contracts ``recsys.train``
codes against (the model-data contract :class:`recsys.data.InteractionData`; a Keras
model with ``evaluate_metrics`` and ``export``) in a few dozen lines, so the training
loop, checkpoints, resume and artifacts are tested without the real datasets or
models. Configs for them live in ``tests/configs`` (``data=fake``, ``model=fake``).
:class:`FaultInjection` stands for a crash and :class:`SendSignal` sends this process a
real signal: tests add them through ``trainer.callbacks`` (:func:`fault_after`,
:func:`signal_after`), so the product config carries no fault switch. Tests that
run ``python -m recsys.train`` in a subprocess use :data:`FAKE_CLI` and
:func:`cli_env`, and send real signals from outside (``recsys.benchmarks.faults``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from recsys._tf import keras, tf
from recsys.data.frames import FrameInteractionData
from recsys.run import register_resolvers

TESTS_DIR = Path(__file__).resolve().parents[1]
PROJECT_ROOT = TESTS_DIR.parent
CONF_DIR = PROJECT_ROOT / "conf"
TEST_CONF_DIR = TESTS_DIR / "configs"

# Overrides that keep a test run small and self-contained (no allocator re-exec).
TEST_OVERRIDES = ("hardware.allocator=none", "trainer.verbose=0")

# The same for `python -m recsys.train` in a subprocess: the fake data and model.
FAKE_CLI = (
    f"hydra.searchpath=[file://{TEST_CONF_DIR}]",
    "data=fake",
    "model=fake",
    "hardware.allocator=none",
    "trainer.tensorboard=false",
    "trainer.verbose=2",
)


def cli_env() -> dict[str, str]:
    """The environment of a ``python -m recsys.train`` subprocess that uses :data:`FAKE_CLI`."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


@contextmanager
def process_state_restored() -> Iterator[None]:
    """Undo what a run does to this process: the hardware plan's environment variables
    and CPU pinning, and Hydra's global state, so later tests start clean."""
    environ = dict(os.environ)
    cpus = os.sched_getaffinity(0)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.sched_setaffinity(0, cpus)
        GlobalHydra.instance().clear()


def compose_train(
    overrides: list[str] | tuple[str, ...] = (),
    run_dir: Path | None = None,
    fake: bool = False,
) -> DictConfig:
    """Compose ``conf/train.yaml`` the way ``python -m recsys.train`` does.

    Args:
        overrides: Command-line style overrides.
        run_dir: The run directory (``hydra.run.dir`` and ``paths.output_dir``).
        fake: Add ``tests/configs`` to the search path and use ``data=fake model=fake``.

    Returns:
        The config, with Hydra's own node, registered as the current HydraConfig.
    """
    extra = list(TEST_OVERRIDES)
    if fake:
        extra += [f"hydra.searchpath=[file://{TEST_CONF_DIR}]", "data=fake", "model=fake"]
    if run_dir is not None:
        extra.append(f"hydra.run.dir={run_dir}")
    register_resolvers()  # what importing recsys.train does for the command line
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="recsys.conf"):
        cfg = compose("train", overrides=[*extra, *overrides], return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


class SimulatedFault(RuntimeError):
    """Raised by :class:`FaultInjection` to stand for a crash."""


class FaultInjection(keras.callbacks.Callback):
    """Raise :class:`SimulatedFault` after a given number of training batches.

    The batch count is over the whole ``fit`` call, so ``after_batches =
    steps_per_epoch + 1`` fails one step into the second epoch, after the first
    epoch's checkpoint was written.

    Args:
        after_batches: Training batches to run before raising (>= 1).
    """

    def __init__(self, after_batches: int) -> None:
        super().__init__()
        if after_batches < 1:
            raise ValueError(
                f"`after_batches` must be >= 1. Received: after_batches={after_batches}"
            )
        self.after_batches = after_batches
        self.seen = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """Count the batch and raise once ``after_batches`` have run."""
        self.seen += 1
        if self.seen >= self.after_batches:
            raise SimulatedFault(f"Simulated fault after {self.seen} training batches.")


def fault_after(batches: int) -> str:
    """The override that adds :class:`FaultInjection` to the trainer's callbacks."""
    return (
        "trainer.callbacks=[{_target_:tests.helpers.training.FaultInjection,"
        f"after_batches:{batches}}}]"
    )


class SendSignal(keras.callbacks.Callback):
    """Send this process a real signal (SIGTERM by default) after some training batches.

    The signal goes through the operating system to the handler recsys installed,
    exactly as one from outside would; the run then stops at the next step boundary.

    Args:
        after_batches: Training batches to run before sending it (>= 1).
        signum: The signal's number.
    """

    def __init__(self, after_batches: int, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        if after_batches < 1:
            raise ValueError(
                f"`after_batches` must be >= 1. Received: after_batches={after_batches}"
            )
        self.after_batches = after_batches
        self.signum = int(signum)
        self.seen = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """Count the batch and send the signal once ``after_batches`` have run."""
        self.seen += 1
        if self.seen == self.after_batches:
            os.kill(os.getpid(), self.signum)


def signal_after(batches: int, signum: int = signal.SIGTERM) -> str:
    """The override that adds :class:`SendSignal` to the trainer's callbacks."""
    return (
        "trainer.callbacks=[{_target_:tests.helpers.training.SendSignal,"
        f"after_batches:{batches},signum:{int(signum)}}}]"
    )


class CountEpochs(keras.callbacks.Callback):
    """Logs ``val_growing_loss``: a loss that grows every epoch, so it never improves."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seen += 1
        if logs is not None:
            logs["val_growing_loss"] = float(self.seen)


class FakeDataModule(FrameInteractionData):
    """Random ratings for a few users and items, split 70/15/15.

    Args:
        num_users: Number of users (ids ``"u0"``, ``"u1"``, ...).
        num_items: Number of items (ids ``"i0"``, ...).
        num_ratings: Number of (user, item, rating) rows.
        batch_size: Batch size of the datasets.
        seed: Seeds the data and the training order.
        val_fraction: Share of the rows held out for validation (15% go to test).
        data_dir: Accepted like the real data modules' cache root; unused.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_ratings: int,
        batch_size: int,
        seed: int,
        val_fraction: float = 0.15,
        data_dir: str | None = None,
    ) -> None:
        self.num_users = num_users
        self.num_items = num_items
        self.num_ratings = num_ratings
        self.batch_size = batch_size
        self.seed = seed
        self.val_fraction = val_fraction
        self.frames: dict[str, pd.DataFrame] = {}
        self.items: pd.DataFrame | None = None

    def setup(self) -> FakeDataModule:
        """Draw the ratings and split them (once)."""
        if self.frames:
            return self
        rng = np.random.default_rng(self.seed)
        frame = pd.DataFrame(
            {
                "user_id": [f"u{u}" for u in rng.integers(0, self.num_users, self.num_ratings)],
                "item_id": [f"i{i}" for i in rng.integers(0, self.num_items, self.num_ratings)],
                "rating": rng.integers(1, 6, self.num_ratings).astype("float32"),
            }
        )
        a, b = int((0.85 - self.val_fraction) * len(frame)), int(0.85 * len(frame))
        self.frames = {"train": frame[:a], "val": frame[a:b], "test": frame[b:]}
        self.train, self.val, self.test = (
            self.frames["train"],
            self.frames["val"],
            self.frames["test"],
        )
        self.items = pd.DataFrame(
            {
                "item_id": [f"i{i}" for i in range(self.num_items)],
                "title": [f"Movie number {i} (1999)" for i in range(self.num_items)],
            }
        )
        return self

    def item_table(self) -> pd.DataFrame | None:
        """Item ids and titles."""
        return self.items

    def _dataset(self, split: str, shuffle: bool) -> tf.data.Dataset:
        frame = self.frames[split]
        ds = tf.data.Dataset.from_tensor_slices({k: frame[k].to_numpy() for k in frame})
        if shuffle:
            ds = ds.shuffle(len(frame), seed=self.seed, reshuffle_each_iteration=True)
        return ds.batch(self.batch_size)

    def train_dataset(self) -> tf.data.Dataset:
        """Shuffled (seeded, reshuffled each epoch) training batches."""
        return self._dataset("train", shuffle=True)

    def val_dataset(self) -> tf.data.Dataset:
        """Validation batches."""
        return self._dataset("val", shuffle=False)

    def test_dataset(self) -> tf.data.Dataset:
        """Test batches."""
        return self._dataset("test", shuffle=False)


class FakeModel(keras.Model):
    """Dot product of user and item embeddings fitted to ratings; exports top-k retrieval.

    Args:
        data: The data module (its users and items make the vocabularies).
        embedding_dim: Embedding width.
        top_k: Items the export returns per user.
    """

    def __init__(self, data: FakeDataModule, embedding_dim: int, top_k: int) -> None:
        super().__init__()
        users = [f"u{u}" for u in range(data.num_users)]
        self.item_vocabulary = [f"i{i}" for i in range(data.num_items)]
        self.user_lookup = keras.layers.StringLookup(vocabulary=users)
        self.item_lookup = keras.layers.StringLookup(vocabulary=self.item_vocabulary)
        self.user_embedding = keras.layers.Embedding(len(users) + 1, embedding_dim)
        self.item_embedding = keras.layers.Embedding(len(self.item_vocabulary) + 1, embedding_dim)
        self.top_k = top_k

    def call(self, inputs: dict[str, tf.Tensor]) -> tf.Tensor:
        user = self.user_embedding(self.user_lookup(inputs["user_id"]))
        item = self.item_embedding(self.item_lookup(inputs["item_id"]))
        return tf.reduce_sum(user * item, axis=-1) + 3.0

    def _loss(self, batch: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.reduce_mean(tf.square(self(batch) - batch["rating"]))

    def train_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = self._loss(batch)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return {"loss": loss}

    def test_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"loss": self._loss(batch)}

    def evaluate_metrics(self, data: FakeDataModule, split: str = "test") -> dict[str, float]:
        """RMSE and MAE over a split, named ``<split>/rmse`` and ``<split>/mae``."""
        errors = [
            (self(batch) - batch["rating"]).numpy() for batch in getattr(data, f"{split}_dataset")()
        ]
        error = np.concatenate(errors)
        return {
            f"{split}/rmse": float(np.sqrt(np.mean(error**2))),
            f"{split}/mae": float(np.mean(np.abs(error))),
        }

    def export(self, path: str, data: Any = None) -> None:
        """SavedModel: ``serving_default(user_id [None] string) -> item_ids, scores [None, k]``."""
        module = tf.Module()
        module.model = self
        items = tf.constant(self.item_vocabulary)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
        def serve(user_id: tf.Tensor) -> dict[str, Any]:
            users = self.user_embedding(self.user_lookup(user_id))
            item_table = self.item_embedding(self.item_lookup(items))
            scores = tf.matmul(users, item_table, transpose_b=True)
            top = tf.math.top_k(scores, k=self.top_k)
            return {"item_ids": tf.gather(items, top.indices), "scores": top.values}

        module.serve = serve
        tf.saved_model.save(module, path, signatures={"serving_default": serve})


def write_tiny_movielens(
    folder: Path, num_users: int = 30, num_items: int = 40, num_ratings: int = 600, seed: int = 0
) -> Path:
    """Write a small MovieLens-100K release in the official layout (u.data, u.item, u.user).

    Every user rates at least a few items, so every split has users seen in training.

    Returns:
        ``folder``, ready for ``data.path``.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < num_ratings:
        user = len(pairs) % num_users + 1  # round-robin users: each gets ~num_ratings/num_users
        pairs.add((user, int(rng.integers(1, num_items + 1))))
    rows = [
        f"{u}\t{i}\t{int(rng.integers(1, 6))}\t{874965758 + n}" for n, (u, i) in enumerate(pairs)
    ]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    items = []
    for i in range(1, num_items + 1):
        flags = ["0"] * 19
        flags[i % 19] = "1"
        title = f"Movie number {i} ({1950 + i})"
        items.append("|".join([str(i), title, f"01-Jan-{1950 + i}", "", "http://x", *flags]))
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    users = [f"{u}|{20 + u % 40}|{'MF'[u % 2]}|student|0{u:04d}" for u in range(1, num_users + 1)]
    (folder / "u.user").write_text("\n".join(users) + "\n")
    return folder


_POSITIVE = ["great", "wonderful", "moving", "brilliant", "loved", "superb", "funny", "touching"]
_NEGATIVE = ["awful", "boring", "terrible", "dull", "hated", "poor", "weak", "predictable"]


def write_tiny_imdb(folder: Path, per_folder: int = 24, seed: int = 0) -> Path:
    """Write a small aclImdb tree (``aclImdb/{train,test}/{pos,neg}/ID_RATING.txt``).

    Positive reviews use positive words and negative ones negative words, so even a
    short training run separates them.

    Returns:
        ``folder / "aclImdb"``'s parent, ready for ``data.path``.
    """
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "plot", "actor", "scene", "story", "and", "was", "it", "this", "movie"]
    for split in ("train", "test"):
        for label, words, ratings in (("pos", _POSITIVE, (7, 10)), ("neg", _NEGATIVE, (1, 4))):
            target = folder / "aclImdb" / split / label
            target.mkdir(parents=True, exist_ok=True)
            for n in range(per_folder):
                text = " ".join(rng.choice(words + filler, size=30))
                rating = int(rng.integers(ratings[0], ratings[1] + 1))
                (target / f"{n}_{rating}.txt").write_text(text.capitalize() + ".")
    return folder
