"""Fetch, verify and cache a dataset from the command line, and say what was loaded.

Run:
    python -m recsys.data movielens --variant 1m
    python -m recsys.data movielens --variant 100k --path ~/Downloads/ml-100k.zip
    python -m recsys.data imdb --path ../shared/datasets/aclImdb_labeled.tar.gz

The cache goes under ``--data-dir`` (default ``$RECSYS_DATA_DIR`` or ``./data``), where
``python -m recsys.train`` finds it. Exit status 2 when no route can get the data.
"""

from __future__ import annotations

import argparse
import sys
import time

from recsys.data.imdb import load_imdb
from recsys.data.movielens import VARIANTS, load_movielens
from recsys.data.sources import DataError


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m recsys.data", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="dataset", required=True)
    ml = sub.add_parser("movielens", help="MovieLens ratings (GroupLens)")
    ml.add_argument("--variant", default="100k", help=f"one of {sorted(VARIANTS)}")
    imdb = sub.add_parser("imdb", help="IMDB reviews (Maas et al., 2011)")
    for p in (ml, imdb):
        p.add_argument("--path", default=None, help="local copy: folder, zip/wheel or tarball")
        p.add_argument(
            "--data-dir", default=None, help="cache root (default $RECSYS_DATA_DIR or ./data)"
        )
        p.add_argument("--no-progress", action="store_true", help="no download progress bars")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.dataset == "movielens":
            data = load_movielens(
                args.variant, args.path, args.data_dir, progress=not args.no_progress
            )
            detail = (
                f"{len(data.ratings):,} ratings, {data.ratings['user_id'].nunique():,} users, "
                f"{len(data.items):,} items"
            )
        else:
            data = load_imdb(args.path, args.data_dir, progress=not args.no_progress)
            detail = f"{len(data.train):,} train and {len(data.test):,} test reviews"
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(
        f"{args.dataset}: {detail}; source {data.source}; cache {data.cache_dir}; {seconds:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
