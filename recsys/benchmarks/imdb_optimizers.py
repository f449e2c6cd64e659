"""IMDB: epoch time and test accuracy of the same TextClassifier with SparseAdam vs Adam.

Both models are built in the same process from the same data, the same adapted
vocabulary and the same seed; only the optimizer differs (`recsys.optimizers.SparseAdam`
vs tf-keras's dense `Adam`, same learning rate). ``--order`` sets which runs first.

``--pipeline tokens`` (default) vectorizes the training reviews once, before timing, and
feeds token ids (reshuffled every epoch), as the seed recipe does (it maps the
vectorizer over the dataset and caches it): the epoch time is then the training step
itself. ``--pipeline text`` feeds raw text, so every step also runs the TextVectorization
(string splitting, n-grams, lookups), which costs the same with either optimizer.
Prints one JSON line per epoch and a summary, and writes the summary to ``--output``.

    python -m recsys.benchmarks.imdb_optimizers \\
        --path ../shared/datasets/aclImdb_labeled.tar.gz --epochs 3

Data: Maas et al., "Learning Word Vectors for Sentiment Analysis", ACL 2011.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)


def _token_dataset(data: Any, vectorizer: Any, seed: int) -> Any:
    """The training reviews as (token ids, label) batches, reshuffled every epoch."""
    from recsys._tf import tf

    texts = tf.constant(data.train["text"].astype(str).to_numpy())
    tokens = tf.concat(
        [vectorizer(texts[i : i + 2048]) for i in range(0, len(data.train), 2048)], 0
    )
    labels = tf.constant(data.train["label"].to_numpy().astype("float32"))
    dataset = tf.data.Dataset.from_tensor_slices((tokens, labels))
    dataset = dataset.shuffle(len(data.train), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(data.batch_size).prefetch(tf.data.AUTOTUNE)


OPTIMIZERS = ("sparse_adam", "sparse_adam_unfused", "adam")


def _run(
    name: str,
    data: Any,
    model_kwargs: dict[str, Any],
    learning_rate: float,
    epochs: int,
    seed: int,
    train_data: Any,
) -> dict[str, Any]:
    from recsys._tf import keras
    from recsys.models import TextClassifier
    from recsys.optimizers import SparseAdam

    keras.utils.set_random_seed(seed)
    model = TextClassifier(data, **model_kwargs)
    optimizers = {
        "sparse_adam": lambda: SparseAdam(learning_rate),
        # The plain TensorFlow sparse path, without the fused XLA kernel.
        "sparse_adam_unfused": lambda: SparseAdam(learning_rate, jit_compile=False),
        "adam": lambda: keras.optimizers.Adam(learning_rate),
    }
    optimizer = optimizers[name]()
    model.compile(optimizer=optimizer)
    epoch_seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        dataset = data.train_dataset() if train_data is None else train_data
        model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, verbose=0)
        epoch_seconds.append(time.perf_counter() - start)
        print(
            json.dumps(
                {"optimizer": name, "epoch": epoch + 1, "seconds": round(epoch_seconds[-1], 2)}
            ),
            flush=True,
        )
    metrics = model.evaluate_metrics(data, split="test")
    return {
        "optimizer": name,
        "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "fit_seconds": round(sum(epoch_seconds), 2),
        # The first epoch also traces the training function; later ones are steady state.
        "steady_epoch_seconds": round(
            sum(epoch_seconds[1:]) / max(len(epoch_seconds) - 1, 1)
            if epochs > 1
            else epoch_seconds[0],
            2,
        ),
        **{k: round(v, 4) for k, v in metrics.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", default=None, help="aclImdb tarball or folder")
    parser.add_argument("--data-dir", default=None, help="cache root of recsys.data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--backbone", default="pooled", choices=["pooled", "cnn", "conv"])
    parser.add_argument("--ngrams", type=int, default=2, choices=[1, 2])
    parser.add_argument(
        "--order",
        default="sparse_adam,adam",
        help="comma-separated optimizers to run, in order: sparse_adam, "
        "sparse_adam_unfused (SparseAdam(jit_compile=False)), adam",
    )
    parser.add_argument("--pipeline", default="tokens", choices=["tokens", "text"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=None, help="write the summary JSON here")
    args = parser.parse_args(argv)
    unknown = set(args.order.split(",")) - set(OPTIMIZERS)
    if unknown:
        parser.error(
            f"--order names unknown optimizers {sorted(unknown)}; choose from "
            f"{', '.join(OPTIMIZERS)}. Received: --order {args.order}"
        )

    from recsys.data import ImdbDataModule

    data = ImdbDataModule(path=args.path, data_dir=args.data_dir).setup()
    start = time.perf_counter()
    from recsys.models import TextClassifier

    # Adapt the vocabulary once; both models reuse it.
    first = TextClassifier(data, backbone=args.backbone, ngrams=args.ngrams)
    vocabulary = first.vocabulary
    print(json.dumps({"adapt_seconds": round(time.perf_counter() - start, 2)}), flush=True)
    train_data = None
    if args.pipeline == "tokens":
        start = time.perf_counter()
        train_data = _token_dataset(data, first.vectorizer, args.seed)
        print(json.dumps({"vectorize_seconds": round(time.perf_counter() - start, 2)}), flush=True)
    model_kwargs = {"backbone": args.backbone, "ngrams": args.ngrams, "vocabulary": vocabulary}
    runs = [
        _run(name, data, model_kwargs, args.learning_rate, args.epochs, args.seed, train_data)
        for name in args.order.split(",")
    ]
    by_name = {run["optimizer"]: run for run in runs}
    summary: dict[str, Any] = {
        "backbone": args.backbone,
        "ngrams": args.ngrams,
        "pipeline": args.pipeline,
        "runs": runs,
    }
    if {"sparse_adam", "adam"} <= set(by_name):
        summary["speedup_fit"] = round(
            by_name["adam"]["fit_seconds"] / by_name["sparse_adam"]["fit_seconds"], 2
        )
        summary["speedup_steady_epoch"] = round(
            by_name["adam"]["steady_epoch_seconds"]
            / by_name["sparse_adam"]["steady_epoch_seconds"],
            2,
        )
    print(json.dumps(summary), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
