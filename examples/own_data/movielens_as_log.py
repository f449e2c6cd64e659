"""Write MovieLens as a plain interaction log with shop-style column names.

The parity check of ``data=interactions`` against the built-in MovieLens loader: the
ratings and the movies' genres and year, joined row by row, written as one Parquet
file whose columns (``buyer``, ``product``, ``stars``, ``ts``, ``genres``, ``year``)
recsys does not know, then trained with the generic experiment:

    python -m recsys.data movielens --variant 1m          # caches data/movielens/ml-1m
    python examples/own_data/movielens_as_log.py --out /tmp/ml1m_log.parquet
    python -m recsys.train +experiment=interactions data.path=/tmp/ml1m_log.parquet \\
        data.user_column=buyer data.item_column=product data.rating_column=stars \\
        data.timestamp_column=ts 'data.item_features={genres: multi_hot, year: numeric}'

It reads recsys's Parquet cache of the dataset (not the loader's Python objects).
MovieLens data is by GroupLens Research and must not be redistributed: keep the
file to yourself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

RENAMED = {"user_id": "buyer", "item_id": "product", "rating": "stars", "timestamp": "ts"}


def write_log(cache: Path, out: Path) -> int:
    """Join ``cache``'s ratings with their movies' genres and year; write ``out``.

    Example:
        >>> write_log(Path("data/movielens/ml-1m"), Path("/tmp/ml1m.parquet"))  # doctest: +SKIP
        1000209

    Args:
        cache: A cached MovieLens folder (``ratings.parquet`` and ``items.parquet``).
        out: The Parquet file to write.

    Returns:
        The number of rows written.

    Raises:
        FileNotFoundError: ``cache`` lacks one of the two files; the message names the
            command that caches it.
    """
    missing = [n for n in ("ratings.parquet", "items.parquet") if not (cache / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{cache} has no {', '.join(missing)}. Received: cache={cache}. Fix: run "
            "`python -m recsys.data movielens --variant 1m` first, or pass --cache."
        )
    ratings = pq.read_table(cache / "ratings.parquet").to_pandas()
    items = pq.read_table(cache / "items.parquet").to_pandas().set_index("item_id")
    ratings["genres"] = ratings["item_id"].map(items["genres"]).map(list)
    ratings["year"] = ratings["item_id"].map(items["year"]).astype("float64")
    frame = ratings.rename(columns=RENAMED)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    return len(frame)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("data/movielens/ml-1m"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(f"wrote {write_log(args.cache, args.out):,} rows to {args.out}")


if __name__ == "__main__":
    main()
