"""Top-k recommendations from a trained retrieval run: ``python -m recsys.recommend``.

Example::

    python -m recsys.recommend outputs/movielens_retrieval/runs/2026-01-01_12-00-00 --user-id 42 -k 10

Loads ``<run dir>/export`` (the SavedModel ``recsys.train`` wrote), asks its
``serving_default`` signature for the user's top items, and prints them with their
titles from ``<run dir>/items.parquet``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from recsys.run import RunPaths

__all__ = ["main", "recommend"]


def _decode(value: object) -> object:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def recommend(run_dir: str | Path, user_id: str | int, k: int = 10) -> pd.DataFrame:
    """The ``k`` best items for ``user_id`` according to a run's exported retrieval model.

    Args:
        run_dir: A run directory of a retrieval experiment (holding ``export/``).
        user_id: The user, as in the dataset (MovieLens-100K ids are ``"1"``..``"943"``).
        k: Number of items; at most what the export returns per user.

    Returns:
        A frame with columns ``rank`` (1-based), ``item_id``, ``score`` and, when the run
        saved item titles, ``title``.

    Raises:
        FileNotFoundError: The run directory has no export.
        ValueError: ``k`` is not positive or exceeds the export's top-k, or the export
            is not a retrieval model (no ``item_ids`` output).
    """
    if k < 1:
        raise ValueError(f"`k` must be >= 1. Received: k={k}")
    paths = RunPaths(Path(run_dir))
    if not (paths.export / "saved_model.pb").exists():
        raise FileNotFoundError(
            f"No exported model in {paths.export}. Pass the run directory of a finished "
            "`python -m recsys.train +experiment=movielens` run (it holds export/)."
        )

    from recsys._tf import tf

    serve = tf.saved_model.load(str(paths.export)).signatures["serving_default"]
    inputs = serve.structured_input_signature[1]
    if len(inputs) != 1:
        raise ValueError(
            f"{paths.export} is not a retrieval export: its signature takes {sorted(inputs)}, "
            "not a single user id."
        )
    ((input_name, spec),) = inputs.items()
    outputs = serve(**{input_name: tf.constant([str(user_id)], dtype=spec.dtype)})
    if "item_ids" not in outputs or "scores" not in outputs:
        raise ValueError(
            f"{paths.export} is not a retrieval export: it returns {sorted(outputs)}, "
            "not item_ids and scores."
        )
    item_ids = [_decode(v) for v in outputs["item_ids"].numpy()[0].tolist()]
    scores = outputs["scores"].numpy()[0].tolist()
    if k > len(item_ids):
        raise ValueError(
            f"The export returns the top {len(item_ids)} items per user; asked for k={k}."
        )
    frame = pd.DataFrame(
        {"rank": range(1, k + 1), "item_id": [str(i) for i in item_ids[:k]], "score": scores[:k]}
    )
    if paths.items.exists():
        items = pd.read_parquet(paths.items)
        if "title" in items.columns:
            names = items["title"].astype(str)
            if "year" in items.columns:  # MovieLens keeps the year apart from the title
                year = pd.to_numeric(items["year"], errors="coerce")
                years = year.where(year > 0).astype("Int64").astype(str).replace("<NA>", "")
                names = names.where(years == "", names + " (" + years + ")")
            titles = dict(zip(items["item_id"].astype(str), names, strict=True))
            frame["title"] = [titles.get(i, "") for i in frame["item_id"]]
    return frame


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.recommend",
        description="Print a user's top-k items from a trained retrieval run.",
    )
    parser.add_argument("run_dir", type=Path, help="run directory of a retrieval experiment")
    parser.add_argument("--user-id", required=True, help="user id as in the dataset, e.g. 42")
    parser.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        frame = recommend(args.run_dir, args.user_id, args.k)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Top {args.k} items for user {args.user_id} ({args.run_dir}):")
    print(frame.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
