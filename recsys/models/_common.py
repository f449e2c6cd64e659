"""What the task models share: the evaluation split check, the model's seen pairs, and
the rating models' training ratings, task, metrics and export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tensorflow_recommenders as tfrs

from recsys import evaluation
from recsys._tf import keras, tf
from recsys.checks import check_choice

EVAL_SPLITS = ("val", "test")


def check_eval_split(split: str) -> str:
    """``split`` when it is ``"val"`` or ``"test"``."""
    return check_choice("split", split, EVAL_SPLITS)


def seen_splits(split: str) -> tuple[str, ...]:
    """The splits a model has seen before ``split``: train, and val before test."""
    return ("train", "val") if check_eval_split(split) == "test" else ("train",)


class TrainingRatings(NamedTuple):
    """A rating model's training split and what its predictions start from."""

    split: Any  # recsys.data.contract.Interactions
    ratings: np.ndarray  # float64, one per training row
    mean: float
    low: float
    high: float


def training_ratings(data: Any, model: str) -> TrainingRatings:
    """`data`'s training split, its ratings and their mean, minimum and maximum.

    Raises:
        ValueError: The training split is empty or has no ratings (`model` names the
            model that needs them).
    """
    train = data.interactions("train")
    if train.ratings is None or not len(train):
        raise ValueError(
            f"{model} needs training interactions with ratings; the data's training split "
            f"has {len(train)} rows and {'no' if train.ratings is None else ''} ratings."
        )
    ratings = train.ratings.astype(np.float64)
    return TrainingRatings(
        train, ratings, float(ratings.mean()), float(ratings.min()), float(ratings.max())
    )


def rating_task() -> tfrs.tasks.Ranking:
    """The rating models' TFRS task: per-example squared errors and an ``rmse`` metric."""
    return tfrs.tasks.Ranking(
        loss=keras.losses.MeanSquaredError(reduction=keras.losses.Reduction.NONE),
        metrics=[keras.metrics.RootMeanSquaredError(name="rmse")],
    )


def rating_metrics(
    predict_ratings: Callable[[Any, Any], Any], data: Any, split: str
) -> dict[str, float]:
    """RMSE and MAE of `predict_ratings(users, items)` on `data`'s `split`.

    Returns:
        ``{split}/rmse`` and ``{split}/mae``, the split scored 65,536 pairs at a time.

    Raises:
        ValueError: The split is not val/test, is empty or has no ratings.
    """
    rows = data.interactions(check_eval_split(split))
    if not len(rows) or rows.ratings is None:
        raise ValueError(f"The data's {split!r} split is empty or has no ratings.")
    users, items = rows.user_ids(), rows.item_ids()
    predictions = np.concatenate(
        [
            predict_ratings(
                tf.constant(users[i : i + 65536]), tf.constant(items[i : i + 65536])
            ).numpy()
            for i in range(0, len(rows), 65536)
        ]
    )
    truth = rows.ratings.astype(np.float64)
    return {
        f"{split}/rmse": evaluation.rmse(truth, predictions),
        f"{split}/mae": evaluation.mae(truth, predictions),
    }


def export_ratings(model: Any, path: str) -> Path:
    """A SavedModel of `model.predict_ratings` under `path/1`: ``(user_id, item_id)``
    strings `[None]` -> ``{"rating"}``; returns its folder."""
    from recsys.serving import save_versioned

    module = _RatingExport(model)
    return save_versioned(module, path, {"serving_default": module.serve}, version=1)


class _RatingExport(tf.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None], tf.string, name="item_id"),
        ]
    )
    def serve(self, user_id: Any, item_id: Any) -> dict[str, Any]:
        return {"rating": self.model.predict_ratings(user_id, item_id)}
