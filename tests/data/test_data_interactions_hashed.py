"""`data.vocabulary=hashed` end to end: hashed ids (two salted hashes a row pair)
train about as well as the counted vocabulary on a synthetic log with planted taste
clusters, and the export built from hashed-id data answers a user id that training
never saw through the empty-history path instead of failing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys._tf import tf
from recsys.data.interactions import SynthSpec, synthesize
from recsys.train import train
from tests.helpers.training import compose_train, process_state_restored

# Both runs embed the user id too (model.use_user_id=true), so the user table goes
# through the id space as well as the item table.
COMMON = (
    "+experiment=interactions",
    "data.rating_column=rating",
    "data.timestamp_column=timestamp",
    "data.batch_size=512",
    "model.use_user_id=true",
    "trainer.epochs=4",
    "trainer.tensorboard=false",
)
# Far more rows than ids (400 users, 600 items), as an open id space would have:
# collisions are rare but possible; two hashes a row keep a collision from being blind.
HASHED = ("data.vocabulary=hashed", "data.num_buckets=4096", "data.num_hashes=2")


def _train(log: Path, tmp: Path, name: str, extra: tuple[str, ...]) -> dict[str, Any]:
    run = tmp / name
    with process_state_restored():
        cfg = compose_train(
            [*COMMON, *extra, f"data.path={log}", f"data.data_dir={tmp / 'cache'}"],
            run_dir=run,
        )
        metrics, _ = train(cfg)
    return {"metrics": metrics, "run": run}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("hashed")
    spec = SynthSpec(users=400, items=600, rows=12000, seed=3)
    log = synthesize(tmp / "log", spec)["files"][0]
    return {
        "counted": _train(Path(log), tmp, "counted", ("trainer.export=false",)),
        "hashed": _train(Path(log), tmp, "hashed", HASHED),
    }


@pytest.mark.slow  # two training runs (about a minute)
def test_hashed_ids_reach_the_counted_vocabularys_quality(runs):
    counted, hashed = runs["counted"]["metrics"], runs["hashed"]["metrics"]
    for name, metrics in (("counted", counted), ("hashed", hashed)):  # shown by pytest -rP
        print(name, {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")})
    # Both learn the clusters: well above popularity on the same split.
    for metrics in (counted, hashed):
        assert metrics["test/top100_accuracy"] > metrics["test/popularity_top100_accuracy"] + 0.05
    # Same split (the hash split does not depend on the vocabulary), so the baselines agree.
    assert hashed["test/popularity_top100_accuracy"] == counted["test/popularity_top100_accuracy"]
    for key in ("test/recall@100", "test/ndcg@10"):
        assert abs(hashed[key] - counted[key]) <= 0.03, (key, hashed[key], counted[key])


@pytest.mark.slow  # shares the two training runs
def test_hashed_export_answers_a_user_never_seen_through_the_empty_history(runs):
    loaded = tf.saved_model.load(str(runs["hashed"]["run"] / "export" / "1"))
    users = tf.constant(["never-seen-user", "another-stranger"])
    answer = loaded.signatures["serving_default"](user_id=users, k=tf.constant(10))
    empty = loaded.by_history(tf.fill([1, 0], ""), tf.constant(10))
    ids = answer["item_ids"].numpy()
    assert ids.shape == (2, 10)
    # Both strangers get the empty history's answer: real catalogue items, no padding.
    np.testing.assert_array_equal(ids[0], empty["item_ids"].numpy()[0])
    np.testing.assert_array_equal(ids[1], ids[0])
    assert all(i.decode().startswith("i") for i in ids[0])
    assert np.isfinite(answer["scores"].numpy()).all()
