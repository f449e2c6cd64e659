"""The task models on tiny synthetic data: training, metrics, export round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from recsys._tf import keras, tf
from recsys.data.contract import InteractionData, TextData, positions
from recsys.data.frames import FrameInteractionData, FrameTextData
from recsys.models import FeatureStore, RankingModel, RetrievalModel, TextClassifier
from recsys.optimizers import SparseAdam


class FakeMovieLens(FrameInteractionData):
    """The model-data contract (`recsys.data.InteractionData`) on random ratings."""

    def __init__(self, num_users=25, num_items=40, n=600, seed=0, batch_size=64):
        rng = np.random.default_rng(seed)
        pairs = rng.choice(num_users * num_items, size=n, replace=False)
        frame = pd.DataFrame(
            {
                "user_id": [f"u{p // num_items}" for p in pairs],
                "item_id": [f"i{p % num_items}" for p in pairs],
                "rating": rng.integers(1, 6, size=n).astype("float32"),
                "timestamp": rng.integers(0, 10**9, size=n).astype("int64"),
            }
        )
        cut = int(0.8 * n)
        self.train = frame.iloc[:cut].reset_index(drop=True)
        self.test = frame.iloc[cut:].reset_index(drop=True)
        self.val = frame.iloc[:0]
        genres = ["Action", "Comedy", "Drama", "Horror"]
        self.items = pd.DataFrame(
            {
                "item_id": [f"i{i}" for i in range(num_items)],
                "title": [f"Movie {i} part {i % 3}" for i in range(num_items)],
                "year": rng.integers(1950, 2000, size=num_items),
                "genres": [
                    list(rng.choice(genres, size=1 + i % 2, replace=False))
                    for i in range(num_items)
                ],
            }
        )
        self.batch_size = batch_size

    def setup(self):
        return self

    def item_table(self):
        return self.items

    def _dataset(self, frame, shuffle=False):
        columns = {c: frame[c].to_numpy() for c in ("user_id", "item_id", "rating")}
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if shuffle:
            ds = ds.shuffle(len(frame), seed=0)
        return ds.batch(self.batch_size)

    def train_dataset(self, shuffle=True):
        return self._dataset(self.train, shuffle)

    def val_dataset(self):
        return self._dataset(self.val)

    def test_dataset(self):
        return self._dataset(self.test)


class FakeImdb(FrameTextData):
    """The model-data contract (`recsys.data.TextData`) on made-up reviews."""

    def __init__(self, n=120, seed=0, batch_size=16):
        rng = np.random.default_rng(seed)
        good = ["great", "wonderful", "superb", "moving"]
        bad = ["awful", "boring", "terrible", "dull"]
        filler = ["the", "film", "plot", "actor", "was", "a", "scene"]
        texts, labels = [], []
        for _ in range(n):
            label = int(rng.integers(0, 2))
            words = list(rng.choice(filler, size=8)) + list(rng.choice(good if label else bad, 2))
            rng.shuffle(words)
            texts.append(" ".join(words) + "<br />!")
            labels.append(label)
        frame = pd.DataFrame({"text": texts, "label": labels, "rating": 5})
        self.train = frame.iloc[: n // 2].reset_index(drop=True)
        self.test = frame.iloc[n // 2 :].reset_index(drop=True)
        self.val = frame.iloc[:0]
        self.batch_size = batch_size

    def setup(self):
        return self

    def _dataset(self, frame):
        ds = tf.data.Dataset.from_tensor_slices(
            (frame["text"].to_numpy(), frame["label"].to_numpy().astype("float32"))
        )
        return ds.batch(self.batch_size)

    def train_dataset(self, shuffle=True):
        return self._dataset(self.train)

    def val_dataset(self):
        return self._dataset(self.val)

    def test_dataset(self):
        return self._dataset(self.test)


@pytest.fixture(scope="module")
def movielens():
    return FakeMovieLens()


def test_the_fakes_honour_the_model_data_contract(movielens, imdb):
    # isinstance on a runtime-checkable Protocol checks the members exist.
    assert isinstance(movielens, InteractionData)
    assert isinstance(imdb, TextData)
    assert not isinstance(imdb, InteractionData)


@pytest.fixture(scope="module")
def imdb():
    return FakeImdb()


SMALL_RETRIEVAL = {"embedding_dim": 8, "item_features": ("genres", "year", "title")}


def _reference_top_k_accuracy(model, data, k):
    users = np.array(sorted(model.user_ids))
    items = np.array(sorted(model.item_ids))
    u = model.user_embeddings(tf.constant(users)).numpy()
    v = model.item_embeddings(tf.constant(items)).numpy()
    scores = u @ v.T
    hits = []
    for user, item in zip(data.test["user_id"], data.test["item_id"], strict=True):
        row = scores[np.searchsorted(users, user)]
        hits.append(np.sum(row > row[np.searchsorted(items, item)]) < k)
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def retrieval(movielens):
    tf.keras.utils.set_random_seed(0)
    model = RetrievalModel(movielens, **SMALL_RETRIEVAL, top_k=5)
    model.compile(optimizer=SparseAdam(0.01))
    history = model.fit(movielens.train_dataset(), epochs=3, verbose=0)
    return model, history.history["loss"]


@pytest.mark.parametrize(
    "optimizer", [lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.Adagrad(0.1)]
)
def test_retrieval_trains_with_dense_optimizers(movielens, optimizer):
    tf.keras.utils.set_random_seed(0)
    model = RetrievalModel(movielens, embedding_dim=4, item_features=())
    model.compile(optimizer=optimizer())
    losses = model.fit(movielens.train_dataset(), epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_retrieval_metrics_and_export(movielens, retrieval, tmp_path):
    model, losses = retrieval
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    metrics = model.evaluate_metrics(movielens, split="test")
    assert list(metrics) == [
        "test/top100_accuracy",
        "test/top100_seen_share",
        "test/recall@100",
        "test/ndcg@10",
        "test/popularity_top100_accuracy",
    ]
    # 40 items < 100: every test pair is in the top 100, and all test items are recalled.
    assert metrics["test/top100_accuracy"] == 1.0
    # ... and a user's top 100 holds every catalogue item, so the seen share is the
    # share of the 40 items each test user rated in training.
    seen = movielens.train.groupby("user_id")["item_id"].nunique()
    users = movielens.test["user_id"].unique()
    want = np.mean([seen.get(u, 0) / 40 for u in users])
    assert metrics["test/top100_seen_share"] == pytest.approx(want, rel=1e-6)
    assert metrics["test/recall@100"] == 1.0
    assert 0.0 < metrics["test/ndcg@10"] <= 1.0

    folder = model.export(str(tmp_path), movielens)
    serving = tf.saved_model.load(str(folder)).signatures["unfiltered"]
    users = tf.constant(["u3", "u7", "nobody"])
    out = serving(user_id=users, k=tf.constant(5))
    assert out["item_ids"].shape == (3, 5) and out["item_ids"].dtype == tf.string
    assert out["scores"].shape == (3, 5) and out["scores"].dtype == tf.float32
    expected = (
        model.user_embeddings(users).numpy()
        @ model.item_embeddings(tf.constant(list(model.item_ids))).numpy().T
    )
    order = np.argsort(-expected, axis=1)[:, :5]
    np.testing.assert_allclose(
        out["scores"].numpy(), np.take_along_axis(expected, order, 1), rtol=1e-5
    )
    np.testing.assert_array_equal(
        out["item_ids"].numpy().astype(str), np.asarray(model.item_ids)[order].astype(str)
    )


def test_retrieval_top_k_accuracy_matches_reference(movielens, retrieval):
    from recsys import evaluation

    model, _ = retrieval
    users, items = np.array(sorted(model.user_ids)), np.array(sorted(model.item_ids))
    got = evaluation.retrieval_metrics(
        model.user_embeddings(tf.constant(users)).numpy(),
        model.item_embeddings(tf.constant(items)).numpy(),
        positions(users, movielens.test["user_id"]),
        positions(items, movielens.test["item_id"]),
        top_accuracy_ks=[10],
        recall_ks=[],
        ndcg_ks=[],
    )
    assert got["test/top10_accuracy"] == pytest.approx(
        _reference_top_k_accuracy(model, movielens, 10)
    )


def test_retrieval_metrics_are_the_same_scored_a_few_users_at_a_time(
    movielens, retrieval, monkeypatch
):
    from recsys import evaluation
    from recsys.models import retrieval as retrieval_module

    model, _ = retrieval
    whole = model.evaluate_metrics(movielens, split="test")
    # The reference: every test user scored at once by recsys.evaluation.
    rows = movielens.interactions("test")
    users, items = np.asarray(rows.users), np.asarray(model.item_ids)
    seen = movielens.histories(("train", "val"))
    owner, members = seen.select(users)
    k = {"top_accuracy_ks": [10], "recall_ks": [10], "ndcg_ks": [5]}
    reference = evaluation.retrieval_metrics(
        model.user_embeddings(tf.constant(users)).numpy(),
        model.item_embeddings(tf.constant(items)).numpy(),
        rows.user_index,
        positions(items, rows.items)[rows.item_index],
        owner,
        positions(items, movielens.catalogue().ids)[members],
        **k,
    )
    monkeypatch.setattr(evaluation, "retrieval_metrics", _with_ks(evaluation.retrieval_metrics, k))
    at_once = model.evaluate_metrics(movielens, split="test")
    monkeypatch.setattr(retrieval_module, "EVAL_USERS_PER_BLOCK", 3)  # uneven blocks
    in_blocks = model.evaluate_metrics(movielens, split="test")
    for name, value in reference.items():
        assert at_once[name] == pytest.approx(value, rel=1e-9), name
        assert in_blocks[name] == pytest.approx(value, rel=1e-9), name
    assert whole["test/top100_accuracy"] == 1.0


def _with_ks(metrics_fn, ks):
    def wrapped(*args, **kwargs):
        return metrics_fn(*args, **{**kwargs, **ks})

    return wrapped


def test_retrieval_history_leaves_out_the_target_in_training(movielens):
    model = RetrievalModel(movielens, embedding_dim=4, item_features=(), history_pooling="sum")
    train = movielens.train.sort_values("timestamp", kind="stable")
    user = train["user_id"].iloc[0]
    mine = train.loc[train["user_id"] == user, "item_id"].tolist()
    item, outsider = mine[0], next(i for i in model.item_ids if i not in mine)
    features = model.user_features(
        tf.constant([user, user, user]), tf.constant([item, outsider, mine[-1]])
    )
    history = features["history"]
    # One bag for the user's three examples; each leaves out its target if in the bag.
    assert history["bag_index"].numpy().tolist() == [0, 0, 0]
    # The user's items (kept sorted by row: the table also answers membership).
    assert model.item_ids[np.array(history["ids"].to_list()[0]) - 1].tolist() == sorted(mine)
    rows = {i: 1 + list(model.item_ids).index(i) for i in (item, mine[-1])}
    assert history["leave_out"].numpy().tolist() == [rows[item], -1, rows[mine[-1]]]
    # Pooled (sum) embeddings equal NumPy sums of the history without the target.
    got = model.user_tower.embedders["history"](history).numpy()
    table = model.user_tower.embedders["history"].embedding.embeddings.numpy()
    full = table[[1 + list(model.item_ids).index(i) for i in mine]].sum(0)
    np.testing.assert_allclose(got[0], full - table[rows[item]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], full, rtol=1e-5, atol=1e-6)


def test_retrieval_history_max_length_keeps_the_most_recent_items(movielens):
    model = RetrievalModel(movielens, embedding_dim=4, item_features=(), history_max_length=2)
    train = movielens.train.sort_values("timestamp", kind="stable")
    for user, items in train.groupby("user_id", sort=False)["item_id"]:
        history = model.user_features(tf.constant([user]))["history"]["ids"].to_list()[0]
        kept = model.item_ids[np.array(history, dtype=int) - 1].tolist()
        assert kept == sorted(items.tolist()[-2:])  # the last two by time, sorted by row
        # An item that was cut is not in the history, so it is not left out.
        if len(items) > 2:
            out = model.user_features(tf.constant([user]), tf.constant([items.iloc[0]]))
            assert out["history"]["leave_out"].numpy().tolist() == [-1]
    with pytest.raises(ValueError, match="history_max_length=0"):
        RetrievalModel(movielens, history_max_length=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"embedding_dim": 0}, "embedding_dim=0"),
        ({"item_features": ("color",)}, r"\['color'\] are not in the data's item columns"),
        ({"use_user_id": False, "use_history": False}, "use_user_id"),
        ({"history_pooling": "max"}, "history_pooling='max'"),
    ],
)
def test_retrieval_validates_arguments(movielens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetrievalModel(movielens, **kwargs)


def test_ranking_trains_evaluates_and_exports(movielens, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = RankingModel(movielens, embedding_dim=8, hidden_units=[8])
    model.compile(optimizer=SparseAdam(0.01))
    history = model.fit(movielens.train_dataset(), epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    metrics = model.evaluate_metrics(movielens)
    assert list(metrics) == ["test/rmse", "test/mae"]
    users, items = movielens.test["user_id"].to_numpy(), movielens.test["item_id"].to_numpy()
    predicted = model.predict_ratings(tf.constant(users), tf.constant(items)).numpy()
    assert predicted.min() >= 1.0 and predicted.max() <= 5.0
    truth = movielens.test["rating"].to_numpy()
    assert metrics["test/rmse"] == pytest.approx(
        np.sqrt(np.mean((truth - predicted) ** 2)), rel=1e-5
    )
    assert metrics["test/mae"] == pytest.approx(np.mean(np.abs(truth - predicted)), rel=1e-5)

    folder = model.export(str(tmp_path))
    serving = tf.saved_model.load(str(folder)).signatures["serving_default"]
    out = serving(user_id=tf.constant(users[:7]), item_id=tf.constant(items[:7]))
    assert set(out) == {"rating"} and out["rating"].shape == (7,)
    np.testing.assert_allclose(out["rating"].numpy(), predicted[:7], rtol=1e-5)
    unknown = serving(user_id=tf.constant(["nobody"]), item_id=tf.constant(["nothing"]))
    assert np.isfinite(unknown["rating"].numpy()).all()


@pytest.mark.parametrize(
    "optimizer", [lambda: keras.optimizers.Adam(0.01), lambda: keras.optimizers.Adagrad(0.1)]
)
def test_ranking_trains_with_dense_optimizers(movielens, optimizer):
    tf.keras.utils.set_random_seed(0)
    model = RankingModel(movielens, embedding_dim=4)
    model.compile(optimizer=optimizer())
    history = model.fit(movielens.train_dataset(), epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_ranking_biases_fit_a_known_model():
    # Ratings = 3 + user offset + item offset: a biased model without factors recovers it.
    data = FakeMovieLens(num_users=10, num_items=12, n=120, seed=3, batch_size=32)
    user_offset = {f"u{i}": (i - 5) / 10 for i in range(10)}
    item_offset = {f"i{i}": (i - 6) / 12 for i in range(12)}
    for frame in (data.train, data.test):
        frame["rating"] = (
            3.0 + frame["user_id"].map(user_offset) + frame["item_id"].map(item_offset)
        ).astype("float32")
    tf.keras.utils.set_random_seed(0)
    model = RankingModel(
        data, embedding_dim=2, use_history=False, factors_l2=0.0, bias_l2=0.0, init_stddev=0.0
    )
    model.compile(optimizer=SparseAdam(0.05))
    model.fit(data.train_dataset(), epochs=150, verbose=0)
    data.test = data.train  # score the training rows (the contract caches on first use)
    train_rmse = model.evaluate_metrics(data)["test/rmse"]
    assert train_rmse < 0.05


def test_ranking_builds_in_a_strategy_scope(movielens):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = RankingModel(movielens, embedding_dim=4)
        model.compile(optimizer=SparseAdam(0.01))
    model.fit(movielens.train_dataset(), epochs=1, verbose=0)
    assert all(v.trainable for v in model.trainable_variables)


def test_ranking_validates_arguments(movielens):
    with pytest.raises(ValueError, match="factors_l2=-1"):
        RankingModel(movielens, factors_l2=-1)
    with pytest.raises(ValueError, match="history_pooling='max'"):
        RankingModel(movielens, history_pooling="max")


@pytest.mark.parametrize("name", ["RankingModel", "AutoRecModel"])
def test_rating_models_start_from_the_training_ratings_and_refuse_data_without(name):
    import recsys.models

    model_class = getattr(recsys.models, name)
    data = FakeMovieLens()
    model = model_class(data)
    ratings = data.train["rating"].to_numpy(np.float64)
    assert model.global_mean == pytest.approx(ratings.mean(), rel=1e-12)
    assert (model.min_rating, model.max_rating) == (ratings.min(), ratings.max())
    unrated = FakeMovieLens()
    unrated.train = unrated.train.drop(columns="rating")
    with pytest.raises(ValueError, match=f"{name} needs training interactions with ratings"):
        model_class(unrated)
    empty = FakeMovieLens()
    empty.train = empty.train.iloc[:0]
    with pytest.raises(ValueError, match="training split has 0 rows"):
        model_class(empty)


def test_text_classifier_learns_and_exports(imdb, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = TextClassifier(imdb, max_tokens=200, sequence_length=30, embedding_dim=16, dropout=0.1)
    assert model.embedding.input_dim == 200 and model.embedding.output_dim == 16
    model.compile(optimizer=SparseAdam(0.02))
    model.fit(imdb.train_dataset(), epochs=8, verbose=0)
    metrics = model.evaluate_metrics(imdb)
    assert list(metrics) == ["test/accuracy", "test/auc"]
    probabilities = model.predict_probabilities(imdb.test["text"].to_numpy())
    labels = imdb.test["label"].to_numpy()
    assert metrics["test/accuracy"] == pytest.approx(np.mean((probabilities > 0.5) == labels))
    assert metrics["test/auc"] > 0.9  # two sentiment words per review

    folder = model.export(str(tmp_path))
    serving = tf.saved_model.load(str(folder)).signatures["serving_default"]
    out = serving(text=tf.constant(imdb.test["text"].to_numpy()[:5]))
    assert set(out) == {"probability"} and out["probability"].shape == (5,)
    np.testing.assert_allclose(out["probability"].numpy(), probabilities[:5], rtol=1e-5)


@pytest.mark.parametrize("backbone", ["cnn", "conv"])
def test_text_classifier_conv_backbones(imdb, backbone):
    model = TextClassifier(
        imdb,
        max_tokens=100,
        sequence_length=30,
        embedding_dim=8,
        backbone=backbone,
        conv_filters=4,
        conv_kernel_size=3,
    )
    model.compile()
    assert isinstance(model.optimizer, SparseAdam)
    model.fit(imdb.train_dataset(), epochs=1, verbose=0)
    out = model(tf.constant(["great film", "awful"]))
    assert out.shape == (2,) and np.all((out.numpy() > 0) & (out.numpy() < 1))


def test_text_classifier_trains_with_dense_adam_and_validates(imdb):
    model = TextClassifier(imdb, max_tokens=100, sequence_length=20, embedding_dim=8, ngrams=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(imdb.train_dataset(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="backbone='lstm'"):
        TextClassifier(imdb, backbone="lstm")
    with pytest.raises(ValueError, match="ngrams=3"):
        TextClassifier(imdb, ngrams=3)


def test_feature_store_lookups_and_config():
    store = FeatureStore(
        ["a", "b"], {"bag": [["x"], ["y", "z"]], "rows": [[1, 2], []], "n": [1.5, None]}
    )
    out = store(tf.constant(["b", "?", "a"]))
    assert out["bag"].to_list() == [[b"y", b"z"], [], [b"x"]]
    assert out["rows"].to_list() == [[], [], [1, 2]]
    np.testing.assert_array_equal(out["n"].numpy(), [0.0, 0.0, 1.5])
    config = store.get_config()
    assert FeatureStore.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="has 1 values for 2 keys"):
        FeatureStore(["a", "b"], {"n": [1]})


def test_custom_model_example_learns():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "custom_two_tower.py"
    spec = importlib.util.spec_from_file_location("custom_two_tower", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    metrics = example.main()
    assert metrics["test/top50_accuracy"] > 0.5  # chance: 50 / 300


def test_text_classifier_reuses_a_vocabulary(imdb):
    first = TextClassifier(imdb, max_tokens=50, sequence_length=12, embedding_dim=4)
    second = TextClassifier(
        imdb, max_tokens=50, sequence_length=12, embedding_dim=4, vocabulary=first.vocabulary
    )
    texts = tf.constant(imdb.test["text"].to_numpy()[:4])
    np.testing.assert_array_equal(first.vectorizer(texts).numpy(), second.vectorizer(texts).numpy())
    with pytest.raises(ValueError, match="at most max_tokens - 2"):
        TextClassifier(imdb, max_tokens=10, vocabulary=[f"w{i}" for i in range(9)])


def test_ranking_rated_history_holds_residuals_and_leaves_out_the_target(movielens):
    model = RankingModel(movielens, embedding_dim=4, history_pooling="sum")
    train = movielens.train
    user = train["user_id"].iloc[0]
    item = train["item_id"].iloc[0]
    mine = train[train["user_id"] == user]
    rated = model.user_features(tf.constant([user, user]))["rated_history"]
    ids, weights = rated["ids"].to_list()[0], rated["weights"].to_list()[0]
    assert rated["bag_index"].numpy().tolist() == [0, 0]  # one bag for the user's examples
    expected = dict(zip(mine["item_id"], mine["rating"] - train["rating"].mean(), strict=True))
    got = {model.item_ids[r - 1]: w for r, w in zip(ids, weights, strict=True)}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)
    # Training leaves the target out, with its own weight; an unrated item leaves nothing.
    unrated = next(i for i in model.item_ids if i not in expected)
    held_out = model.user_features(tf.constant([user, user]), tf.constant([item, unrated]))
    held_out = held_out["rated_history"]
    row = 1 + list(model.item_ids).index(item)
    assert held_out["leave_out"].numpy().tolist() == [row, -1]
    np.testing.assert_allclose(
        held_out["leave_out_weight"].numpy(), [expected[item], 0.0], rtol=1e-5
    )
    pooled = model.user_tower.embedders["rated_history"](held_out).numpy()
    table = model.user_tower.embedders["rated_history"].embedding.embeddings.numpy()
    full = sum(w * table[r] for r, w in zip(ids, weights, strict=True))
    np.testing.assert_allclose(pooled[0], full - expected[item] * table[row], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pooled[1], full, rtol=1e-4, atol=1e-6)


def test_weighted_bag_pooling_matches_numpy():
    from recsys.towers import FeatureEmbedding

    layer = FeatureEmbedding("multi_hot", embedding_dim=3, num_rows=6, pooling="sqrtn")
    ids = tf.ragged.constant([[1, 4, 1], [2]], dtype=tf.int64)
    weights = tf.ragged.constant([[0.5, -1.0, 2.0], [3.0]])
    out = layer({"ids": ids, "weights": weights}).numpy()
    table = layer.embedding.embeddings.numpy()
    expected = [
        (0.5 * table[1] - table[4] + 2.0 * table[1]) / np.sqrt(3),
        3.0 * table[2],
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="Only a 'multi_hot' feature takes a dict"):
        FeatureEmbedding("id", num_bins=3)({"ids": tf.constant(["a"]), "weights": None})


def test_ranking_item_side_rated_history_leaves_out_the_target_user(movielens):
    model = RankingModel(movielens, embedding_dim=4, use_item_rated_history=True)
    train = movielens.train
    user, item = train["user_id"].iloc[0], train["item_id"].iloc[0]
    raters = sorted(train.loc[train["item_id"] == item, "user_id"])
    rated_by = model.item_features(tf.constant([item]))["rated_by"]
    full = rated_by["ids"].to_list()[0]
    assert sorted(model.user_ids[r - 1] for r in full) == raters
    held_out = model.item_features(tf.constant([item]), tf.constant([user]))["rated_by"]
    assert held_out["leave_out"].numpy().tolist() == [1 + list(model.user_ids).index(user)]
    model.compile(optimizer=SparseAdam(0.01))
    model.fit(movielens.train_dataset(), epochs=1, verbose=0)
    assert np.isfinite(model.evaluate_metrics(movielens)["test/rmse"])


def test_pooled_backbone_is_the_mean_of_token_embeddings(imdb):
    model = TextClassifier(imdb, max_tokens=60, sequence_length=6, embedding_dim=4)
    tokens = tf.constant([[5, 7, 5, 0, 0, 0], [0, 0, 0, 0, 0, 0], [9, 1, 2, 3, 4, 8]], tf.int64)
    got = model._mean_of_token_embeddings(tokens).numpy()
    table = model.embedding.embeddings.numpy()
    expected = [table[[5, 7, 5]].mean(0), np.zeros(4), table[[9, 1, 2, 3, 4, 8]].mean(0)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
