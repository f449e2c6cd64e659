"""Fetch, verify and cache a dataset from the command line, and say what was loaded.

Run:
    python -m recsys.data movielens --variant 1m
    python -m recsys.data movielens --variant 100k --path ~/Downloads/ml-100k.zip
    python -m recsys.data imdb --path ../shared/datasets/aclImdb_labeled.tar.gz
    python -m recsys.data synth --users 1000000 --items 200000 --rows 50000000 --out /tmp/log
    python -m recsys.data interactions --path /tmp/log --rating-column rating \
        --item-feature genres=multi_hot --item-feature title=text

The cache goes under ``--data-dir`` (default ``$RECSYS_DATA_DIR`` or ``./data``), where
``python -m recsys.train`` finds it. ``synth`` writes a synthetic interaction log with
known structure (:mod:`recsys.data.interactions.synth`); ``interactions`` checks and
counts your own log as ``data=interactions`` would (one error line when it cannot).
Exit status 2 when no route can get the data or a log cannot be used.
"""

from __future__ import annotations

import argparse
import sys
import time

from recsys.data.imdb import load_imdb
from recsys.data.movielens import VARIANTS, load_movielens
from recsys.data.sources import DataError


def _pairs(values: list[str], option: str) -> dict[str, str]:
    """``["genres=multi_hot"]`` -> ``{"genres": "multi_hot"}``."""
    pairs = {}
    for value in values:
        name, sep, kind = value.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: {option} takes COLUMN=KIND. Received: {value!r}")
        pairs[name] = kind
    return pairs


def _synth(args: argparse.Namespace) -> int:
    from recsys.data.interactions.synth import SynthSpec, synthesize

    spec = SynthSpec(
        users=args.users,
        items=args.items,
        rows=args.rows,
        seed=args.seed,
        clusters=args.clusters,
        rows_per_file=args.rows_per_file,
        row_group_rows=args.row_group_rows,
    )
    start = time.perf_counter()
    summary = synthesize(args.out, spec)
    seconds = time.perf_counter() - start
    print(
        f"synth: {summary['rows']:,} rows ({args.users:,} users, {args.items:,} items, "
        f"{summary['clusters']} clusters) in {len(summary['files'])} Parquet files, "
        f"{summary['bytes'] / 2**20:,.1f} MiB, under {args.out}; {seconds:.1f} s"
    )
    return 0


def _interactions(args: argparse.Namespace) -> int:
    from recsys.data.interactions import InteractionsDataModule

    start = time.perf_counter()
    dm = InteractionsDataModule(
        args.path,
        user_column=args.user_column,
        item_column=args.item_column,
        rating_column=args.rating_column,
        timestamp_column=args.timestamp_column,
        user_features=_pairs(args.user_feature, "--user-feature"),
        item_features=_pairs(args.item_feature, "--item-feature"),
        split=args.split,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        data_dir=args.data_dir,
    ).setup()
    index = dm.index
    assert index is not None
    seconds = time.perf_counter() - start
    print(
        f"interactions: {index.rows.total:,} rows ({index.rows.train:,} train, "
        f"{index.rows.val:,} val, {index.rows.test:,} test), {len(index.users):,} users, "
        f"{len(index.items):,} items, {len(index.blocks)} blocks; cache {index.folder}; "
        f"{seconds:.2f} s"
    )
    return 0


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
    synth = sub.add_parser("synth", help="write a synthetic interaction log (Parquet)")
    synth.add_argument("--users", type=int, default=1000)
    synth.add_argument("--items", type=int, default=500)
    synth.add_argument("--rows", type=int, default=20_000)
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--clusters", type=int, default=None, help="taste clusters")
    synth.add_argument("--rows-per-file", type=int, default=5_000_000)
    synth.add_argument("--row-group-rows", type=int, default=1 << 17)
    log = sub.add_parser("interactions", help="check and count your own interaction log")
    log.add_argument("--path", required=True, help="file, folder or glob")
    log.add_argument("--user-column", default="user_id")
    log.add_argument("--item-column", default="item_id")
    log.add_argument("--rating-column", default=None)
    log.add_argument("--timestamp-column", default=None)
    log.add_argument("--user-feature", action="append", default=[], metavar="COLUMN=KIND")
    log.add_argument("--item-feature", action="append", default=[], metavar="COLUMN=KIND")
    log.add_argument("--split", default="random", choices=["random", "time"])
    log.add_argument("--test-fraction", type=float, default=0.2)
    log.add_argument("--val-fraction", type=float, default=0.0)
    log.add_argument("--data-dir", default=None, help="cache root")
    args = parser.parse_args(argv)
    if args.dataset in ("synth", "interactions"):
        try:
            return _synth(args) if args.dataset == "synth" else _interactions(args)
        except (DataError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
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
