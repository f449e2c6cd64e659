"""Recommendations from a trained run's export: ``python -m recsys.recommend``.

Examples::

    python -m recsys.recommend RUN_DIR --user-id 42 -k 10              # print, with titles
    python -m recsys.recommend RUN_DIR --all-users -k 100 --out recs.parquet
    python -m recsys.recommend RUN_DIR --users users.txt -k 20 --out recs.parquet
    python -m recsys.recommend RANKING_RUN_DIR --pairs pairs.csv --out scores.parquet

Loads ``<run dir>/export`` (the SavedModel ``recsys.train`` wrote; the highest version
of TensorFlow Serving's layout ``export/<version>/``). Retrieval runs answer with the
``serving_default`` signature, which leaves out the items each user interacted with in
training and validation (``--include-seen`` keeps them: the ``unfiltered`` signature);
titles come from ``<run dir>/items.parquet``. ``--all-users`` and ``--users`` stream
blocks of users into a Parquet file with columns ``user_id``, ``rank``, ``item_id``,
``score``. Ranking runs score ``(user_id, item_id)`` pairs into ``user_id``,
``item_id``, ``rating``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.checks import check_positive_int
from recsys.run import RunPaths

__all__ = ["load_export", "main", "recommend", "recommend_users", "score_pairs"]

PAIR_COLUMNS = ("user_id", "item_id")


def _decode(value: object) -> object:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def load_export(run_dir: str | Path) -> Any:
    """The run's exported SavedModel, loaded with ``tf.saved_model.load``.

    Raises:
        FileNotFoundError: The run directory holds no export.
    """
    paths = RunPaths(Path(run_dir))
    from recsys.serving.export import latest_version

    try:
        folder = latest_version(paths.export)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No exported model in {paths.export}. Pass the run directory of a finished "
            "`python -m recsys.train` run (it holds export/)."
        ) from None
    from recsys._tf import tf

    return tf.saved_model.load(str(folder))


def _top_k_function(loaded: Any, include_seen: bool) -> Callable[[Any, int], dict[str, Any]]:
    """``fn(user_ids, k)`` -> ``item_ids``, ``scores`` of a retrieval export.

    Current exports take ``k`` (and leave seen items out unless ``include_seen``);
    exports written before that answer a fixed top-k with seen items included.
    """
    from recsys._tf import tf

    # The functions refer to the loaded object's variables: the closures keep it alive.
    name = "unfiltered" if include_seen else "serving_default"
    if hasattr(loaded, name) and hasattr(loaded, "user_ids"):
        return lambda users, k: getattr(loaded, name)(users, tf.constant(k, tf.int32))
    signature = loaded.signatures.get("serving_default")
    inputs = dict(signature.structured_input_signature[1]) if signature is not None else {}
    del signature
    if len(inputs) != 1 or next(iter(inputs.values())).dtype != tf.string:
        raise ValueError(
            f"This export is not a retrieval model: its serving_default takes {sorted(inputs)}, "
            "not user ids. (Ranking runs score pairs: --pairs FILE.)"
        )
    ((input_name, _),) = inputs.items()

    def legacy(users: Any, k: int) -> dict[str, Any]:
        outputs = loaded.signatures["serving_default"](**{input_name: users})
        if "item_ids" not in outputs or "scores" not in outputs:
            raise ValueError(
                f"This export is not a retrieval model: it returns {sorted(outputs)}, "
                "not item_ids and scores."
            )
        if k > outputs["item_ids"].shape[1]:
            raise ValueError(
                f"The export returns the top {outputs['item_ids'].shape[1]} items per user; "
                f"asked for k={k}."
            )
        return {"item_ids": outputs["item_ids"][:, :k], "scores": outputs["scores"][:, :k]}

    return legacy


def _titles(paths: RunPaths) -> dict[str, str] | None:
    """Item id -> display title (MovieLens keeps the year apart), when the run saved them."""
    if not paths.items.exists():
        return None
    items = pd.read_parquet(paths.items)
    if "title" not in items.columns:
        return None
    names = items["title"].astype(str)
    if "year" in items.columns:
        year = pd.to_numeric(items["year"], errors="coerce")
        years = year.where(year > 0).astype("Int64").astype(str).replace("<NA>", "")
        names = names.where(years == "", names + " (" + years + ")")
    return dict(zip(items["item_id"].astype(str), names, strict=True))


def recommend(
    run_dir: str | Path, user_id: str | int, k: int = 10, include_seen: bool = False
) -> pd.DataFrame:
    """The ``k`` best items for ``user_id`` according to a run's exported retrieval model.

    Example:
        >>> recommend("outputs/movielens_retrieval/runs/2026-12-01_10-00-00", 42, k=3)
        ... # doctest: +SKIP
           rank item_id     score                          title
        0     1     313  1.234567             Titanic (1997)

    Args:
        run_dir: A run directory of a retrieval experiment (holding ``export/``).
        user_id: The user, as in the dataset (MovieLens-100K ids are ``"1"``..``"943"``).
            A user the model never saw gets the answer for an empty history.
        k: Number of items.
        include_seen: Keep the items the user interacted with in training.

    Returns:
        A frame with columns ``rank`` (1-based), ``item_id``, ``score`` and, when the run
        saved item titles, ``title``.

    Raises:
        FileNotFoundError: The run directory has no export.
        ValueError: ``k`` is not positive, or the export is not a retrieval model.
    """
    k = check_positive_int("k", k)
    from recsys._tf import tf

    top_k = _top_k_function(load_export(run_dir), include_seen)
    outputs = top_k(tf.constant([str(user_id)]), k)
    pairs = [
        (str(_decode(item)), float(score))
        for item, score in zip(
            outputs["item_ids"].numpy()[0].tolist(),
            outputs["scores"].numpy()[0].tolist(),
            strict=True,
        )
        if _decode(item) != ""  # fewer than k items left after the exclusions
    ]
    frame = pd.DataFrame(
        {
            "rank": range(1, len(pairs) + 1),
            "item_id": [item for item, _ in pairs],
            "score": [score for _, score in pairs],
        }
    )
    titles = _titles(RunPaths(Path(run_dir)))
    if titles is not None:
        frame["title"] = [titles.get(i, "") for i in frame["item_id"]]
    return frame


def read_ids(path: str | Path, column: str | None = None) -> list[str]:
    """User ids from a text file (one per line) or a column of a Parquet file.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The Parquet file has no such column (or several, and none named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No file {path}: pass a text file of ids or a Parquet file.")
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        if column is None:
            if len(table.columns) != 1 and "user_id" not in table.columns:
                raise ValueError(
                    f"{path} has columns {list(table.columns)}: name one with --users-column."
                )
            column = "user_id" if "user_id" in table.columns else table.columns[0]
        if column not in table.columns:
            raise ValueError(f"{path} has no column {column!r}; it has {list(table.columns)}.")
        return table[column].astype(str).tolist()
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def recommend_users(
    run_dir: str | Path,
    out: str | Path,
    users: Sequence[str] | None = None,
    k: int = 100,
    include_seen: bool = False,
    batch_size: int = 256,
    progress: bool = True,
) -> int:
    """Writes the top ``k`` of many users to Parquet (``user_id``, ``rank``, ``item_id``, ``score``).

    Args:
        run_dir: A retrieval run directory.
        out: The Parquet file (written under a temporary name, then renamed).
        users: The users; None: every user the export stores (training and validation).
        k: Items per user.
        include_seen: Keep the users' training items.
        batch_size: Users per block.
        progress: Show a progress bar.

    Returns:
        The number of rows written.

    Raises:
        ValueError: ``users`` is None and the export stores no user list.
    """
    from recsys.serving import write_recommendations

    loaded = load_export(run_dir)
    top_k = _top_k_function(loaded, include_seen)
    if users is None:
        if not hasattr(loaded, "user_ids"):
            raise ValueError(
                "This export does not list its users (it predates --all-users): pass --users FILE."
            )
        users = [str(_decode(u)) for u in loaded.user_ids.numpy().tolist()]

    def answer(user_id: Any, k: Any) -> dict[str, Any]:
        return top_k(user_id, int(k))

    return write_recommendations(
        answer, users, out, k=check_positive_int("k", k), batch_size=batch_size, progress=progress
    )


def score_pairs(
    run_dir: str | Path, pairs: str | Path, out: str | Path, batch_size: int = 65536
) -> int:
    """Scores ``(user_id, item_id)`` pairs with a ranking run's export, into Parquet.

    Args:
        run_dir: A rating-prediction run directory.
        pairs: A CSV or Parquet file with ``user_id`` and ``item_id`` columns.
        out: The Parquet file to write (``user_id``, ``item_id``, ``rating``).
        batch_size: Pairs per call.

    Returns:
        The number of rows written.

    Raises:
        ValueError: The file lacks the columns, or the export is not a ranking model.
    """
    from recsys._tf import tf

    pairs = Path(pairs)
    if not pairs.is_file():
        raise FileNotFoundError(f"No file {pairs}: pass a CSV or Parquet file of pairs.")
    frame = pd.read_parquet(pairs) if pairs.suffix == ".parquet" else pd.read_csv(pairs, dtype=str)
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{pairs} lacks column(s) {missing}; it has {list(frame.columns)}.")
    loaded = load_export(run_dir)
    signature = loaded.signatures.get("serving_default")
    inputs = set(dict(signature.structured_input_signature[1])) if signature is not None else set()
    if inputs != set(PAIR_COLUMNS):
        raise ValueError(
            f"This export is not a ranking model: its serving_default takes {sorted(inputs)}, "
            "not user_id and item_id. (Retrieval runs: --user-id, --users or --all-users.)"
        )
    users = frame["user_id"].astype(str).to_numpy()
    items = frame["item_id"].astype(str).to_numpy()
    ratings = [
        signature(
            user_id=tf.constant(users[i : i + batch_size]),
            item_id=tf.constant(items[i : i + batch_size]),
        )["rating"].numpy()
        for i in range(0, len(frame), batch_size)
    ]
    result = pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": np.concatenate(ratings).astype("float32") if ratings else [],
        }
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.incomplete")
    result.to_parquet(scratch, index=False)
    scratch.replace(out)
    return len(result)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.recommend",
        description="Recommendations (or pair scores) from a trained run's export.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory (holds export/)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id", help="print one user's top-k with titles, e.g. 42")
    who.add_argument("--all-users", action="store_true", help="every user the export stores")
    who.add_argument("--users", type=Path, help="a text file (one id a line) or a Parquet file")
    who.add_argument("--pairs", type=Path, help="ranking runs: CSV/Parquet of user_id,item_id")
    parser.add_argument("-k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument("--out", type=Path, help="Parquet file for --all-users/--users/--pairs")
    parser.add_argument("--users-column", help="the column of ids in a --users Parquet file")
    parser.add_argument(
        "--include-seen", action="store_true", help="keep the items users saw in training"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="users per block (256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.user_id is None and args.out is None:
        parser.error("--all-users, --users and --pairs write a Parquet file: pass --out PATH")
    try:
        if args.user_id is not None:
            frame = recommend(args.run_dir, args.user_id, args.k, args.include_seen)
            print(f"Top {args.k} items for user {args.user_id} ({args.run_dir}):")
            print(frame.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
            return 0
        if args.pairs is not None:
            rows = score_pairs(args.run_dir, args.pairs, args.out)
        else:
            users = None if args.all_users else read_ids(args.users, args.users_column)
            rows = recommend_users(
                args.run_dir,
                args.out,
                users,
                k=args.k,
                include_seen=args.include_seen,
                batch_size=args.batch_size,
                progress=not args.no_progress,
            )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {rows} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
