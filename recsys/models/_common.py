"""What the task models share: the evaluation split check and the model's seen pairs."""

from __future__ import annotations

from recsys.checks import check_choice

EVAL_SPLITS = ("val", "test")


def check_eval_split(split: str) -> str:
    """``split`` when it is ``"val"`` or ``"test"``."""
    return check_choice("split", split, EVAL_SPLITS)


def seen_splits(split: str) -> tuple[str, ...]:
    """The splits a model has seen before ``split``: train, and val before test."""
    return ("train", "val") if check_eval_split(split) == "test" else ("train",)
