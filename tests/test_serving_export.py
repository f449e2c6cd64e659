"""recsys.serving.export and stock_ops: the retrieval SavedModel's signatures, layout and ops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys._tf import tf
from recsys.benchmarks.serving import synthetic, table_queries
from recsys.serving import (
    ExactIndex,
    PartitionedIndex,
    RetrievalServingModule,
    UserItems,
    export_retrieval,
    latest_version,
    non_stock_ops,
)
from recsys.serving.stock_ops import graph_op_types

DEFAULT_K = 5


@pytest.fixture(scope="module")
def world():
    """160 items in 4 planted topics, 30 users near a topic, 10 seen items each."""
    data = synthetic(160, 30, dim=8, topics=4, noise=0.5, seen_per_user=10, seed=3)
    data["item_ids"] = [f"item{i}" for i in range(160)]
    data["user_ids"] = [f"user{u}" for u in range(30)]
    return data


def _module(world, index=None):
    index = index or ExactIndex(world["item_vectors"])
    queries = table_queries(world["user_ids"], world["user_vectors"], world["item_ids"], index)
    return RetrievalServingModule(
        item_ids=world["item_ids"],
        index=index,
        user_query_fn=queries.users,
        history_query_fn=queries.histories,
        user_ids=world["user_ids"],
        seen=world["seen"],
        k=DEFAULT_K,
        track=[queries],
    )


@pytest.fixture(scope="module")
def module(world):
    return _module(world)


@pytest.fixture(scope="module")
def exported(world, module, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return export_retrieval(
        root,
        item_ids=world["item_ids"],
        index=module.index,
        user_query_fn=module._user_query_fn,
        history_query_fn=module._history_query_fn,
        user_ids=world["user_ids"],
        seen=world["seen"],
        k=DEFAULT_K,
        track=module.tracked,
    )


def _reference(world, query, k, excluded=()):
    scores = world["item_vectors"] @ query
    scores[list(excluded)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return [world["item_ids"][i] if np.isfinite(scores[i]) else "" for i in order], scores[order]


def _ids(tensor):
    return [[v.decode() for v in row] for row in tensor.numpy()]


def _history_query(world, history):
    rows = [world["item_ids"].index(i) for i in history if i in world["item_ids"]]
    total = world["item_vectors"][rows].sum(axis=0) if rows else np.zeros(8, np.float32)
    norm = np.linalg.norm(total)
    return total / norm if norm > 0 else total


def test_serving_default_excludes_the_stored_interactions_and_matches_numpy(world, module):
    users = world["user_ids"]
    out = module.serving_default(tf.constant(users), tf.constant(12))
    got_ids, got_scores = _ids(out["item_ids"]), out["scores"].numpy()
    assert out["item_ids"].shape == (30, 12)
    for u, user in enumerate(users):
        seen = world["seen"].items_of(u)
        assert not {world["item_ids"][r] for r in seen} & set(got_ids[u])
        want_ids, want_scores = _reference(world, world["user_vectors"][u], 12, seen)
        assert got_ids[u] == want_ids, user
        np.testing.assert_allclose(got_scores[u], want_scores, rtol=1e-5)


def test_unfiltered_keeps_seen_items(world, module):
    out = module.unfiltered(tf.constant(world["user_ids"][:5]), tf.constant(10))
    for u, row in enumerate(_ids(out["item_ids"])):
        assert row == _reference(world, world["user_vectors"][u], 10)[0]
    # Seen items are drawn from the user's own topic, so some rank at the top.
    seen_ranked = sum(
        bool({world["item_ids"][r] for r in world["seen"].items_of(u)} & set(row))
        for u, row in enumerate(_ids(out["item_ids"]))
    )
    assert seen_ranked >= 3


def test_default_k_and_k_beyond_the_catalogue(world, module):
    out = module.serving_default(tf.constant(["user0"]))
    assert out["item_ids"].shape == (1, DEFAULT_K)
    out = module.serving_default(tf.constant(["user0"]), tf.constant(1000))
    ids, scores = _ids(out["item_ids"])[0], out["scores"].numpy()[0]
    left = 160 - world["seen"].items_of(0).size
    assert len(ids) == 160 and all(ids[:left]) and ids[left:] == [""] * (160 - left)
    assert np.isneginf(scores[left:]).all() and np.isfinite(scores[:left]).all()


def test_by_history_excludes_its_items_and_ignores_padding_and_unknown_ids(world, module):
    topic = world["item_topic"]
    ids = world["item_ids"]
    history = [
        [ids[i] for i in np.flatnonzero(topic == 2)[:6]] + ["", "never-seen"],
        ["", "", "", "", "", "", "", ""],
    ]
    history[1][0] = ids[int(np.flatnonzero(topic == 0)[0])]
    out = module.by_history(tf.constant(history), tf.constant(10))
    for row, got in zip(history, _ids(out["item_ids"]), strict=True):
        known = [i for i in row if i in ids]
        want, _ = _reference(world, _history_query(world, row), 10, [ids.index(i) for i in known])
        assert got == want
        assert not set(known) & set(got)
    # Planted structure: a history from one topic recommends that topic.
    top = [topic[ids.index(i)] for i in _ids(out["item_ids"])[0]]
    assert top.count(2) >= 8


def test_unknown_user_gets_the_empty_history_answer(world, module):
    unknown = module.serving_default(tf.constant(["nobody", "user3", "ghost"]), tf.constant(7))
    empty = module.by_history(tf.fill([1, 0], ""), tf.constant(7))
    padded = module.by_history(tf.constant([["", ""]]), tf.constant(7))
    for answer in (empty, padded):
        assert _ids(unknown["item_ids"])[0] == _ids(answer["item_ids"])[0]
        assert _ids(unknown["item_ids"])[2] == _ids(answer["item_ids"])[0]
    known = module.serving_default(tf.constant(["user3"]), tf.constant(7))
    assert _ids(unknown["item_ids"])[1] == _ids(known["item_ids"])[0]
    everyone_new = module.serving_default(tf.constant(["a", "b"]), tf.constant(3))
    assert everyone_new["item_ids"].shape == (2, 3)
    nobody = module.serving_default(tf.constant([], tf.string), tf.constant(3))
    assert nobody["item_ids"].shape == (0, 3)


def test_embedding_signatures(world, module):
    items = module.item_embeddings(tf.constant(["item4", "missing", "item0"]))["embeddings"].numpy()
    np.testing.assert_array_equal(items[0], world["item_vectors"][4])
    np.testing.assert_array_equal(items[1], np.zeros(8))
    users = module.user_embeddings(tf.constant(["user2", "missing"]))["embeddings"].numpy()
    np.testing.assert_array_equal(users[0], world["user_vectors"][2])
    np.testing.assert_array_equal(users[1], np.zeros(8))  # the empty history's vector here


def test_partitioned_index_serves_the_same_signatures(world):
    index = PartitionedIndex.build(world["item_vectors"], num_partitions=8, nprobe=8)
    approximate = _module(world, index)
    exact = _module(world)
    users = tf.constant(world["user_ids"])
    got = approximate.serving_default(users, tf.constant(10))["item_ids"].numpy()
    want = exact.serving_default(users, tf.constant(10))["item_ids"].numpy()
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))  # all probed


def test_module_validates_its_inputs(world):
    base = {
        "item_ids": world["item_ids"],
        "index": ExactIndex(world["item_vectors"]),
        "user_query_fn": lambda ids: ids,
        "history_query_fn": lambda h: h,
        "user_ids": world["user_ids"],
        "seen": world["seen"],
    }
    with pytest.raises(ValueError, match="repeat"):
        RetrievalServingModule(**{**base, "item_ids": ["a"] * 160})
    with pytest.raises(ValueError, match='must not contain ""'):
        RetrievalServingModule(**{**base, "user_ids": ["", *world["user_ids"][1:]]})
    with pytest.raises(ValueError, match="one row per stored user"):
        RetrievalServingModule(**{**base, "user_ids": world["user_ids"][:5]})
    with pytest.raises(ValueError, match="k=0"):
        RetrievalServingModule(**{**base, "k": 0})
    with pytest.raises(ValueError, match="beyond the"):
        RetrievalServingModule(**{**base, "seen": UserItems.from_pairs([0], [999], num_users=30)})
    with pytest.raises(ValueError, match="item_vectors"):
        export_retrieval("/nonexistent", **{k: v for k, v in base.items() if k != "index"})


def test_signature_defs_name_inputs_outputs_and_the_default_k(exported):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((exported / "saved_model.pb").read_bytes())
    signatures = proto.meta_graphs[0].signature_def
    for name in ("serving_default", "unfiltered", "by_history"):
        sig = signatures[name]
        assert set(sig.outputs) == {"item_ids", "scores"}
        assert sig.outputs["item_ids"].dtype == tf.string.as_datatype_enum
        assert sig.outputs["scores"].dtype == tf.float32.as_datatype_enum
        assert sig.inputs["k"].dtype == tf.int32.as_datatype_enum
        assert len(sig.inputs["k"].tensor_shape.dim) == 0
        assert list(sig.defaults["k"].int_val) == [DEFAULT_K]
    assert set(signatures["serving_default"].inputs) == {"user_id", "k"}
    assert set(signatures["by_history"].inputs) == {"history", "k"}
    assert [d.size for d in signatures["by_history"].inputs["history"].tensor_shape.dim] == [-1, -1]
    assert set(signatures["item_embeddings"].inputs) == {"item_id"}
    assert set(signatures["user_embeddings"].outputs) == {"embeddings"}


def test_every_op_is_stock_and_a_foreign_op_is_flagged(world, exported, tmp_path):
    assert non_stock_ops(exported) == {}
    partitioned = _module(world, PartitionedIndex.build(world["item_vectors"], 8, nprobe=2))
    path = export_retrieval(
        tmp_path / "approx",
        item_ids=world["item_ids"],
        index=partitioned.index,
        user_query_fn=partitioned._user_query_fn,
        history_query_fn=partitioned._history_query_fn,
        user_ids=world["user_ids"],
        seen=world["seen"],
        track=partitioned.tracked,
    )
    assert non_stock_ops(path) == {}
    ops = graph_op_types(path)
    assert {"TopKV2", "MatMul", "LookupTableFindV2"} <= set(ops)

    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((exported / "saved_model.pb").read_bytes())
    proto.meta_graphs[0].graph_def.node.add(name="scann", op="Scann>ScannSearchBatched")
    function = proto.meta_graphs[0].graph_def.library.function[0]
    function.node_def.add(name="py", op="EagerPyFunc")
    assert non_stock_ops(proto) == {
        "EagerPyFunc": [function.signature.name],
        "Scann>ScannSearchBatched": ["graph"],
    }


def test_versioned_layout_is_written_atomically(world, module, exported, tmp_path):
    assert exported.name == "1" and latest_version(exported.parent) == exported
    kwargs = {
        "item_ids": world["item_ids"],
        "index": module.index,
        "user_query_fn": module._user_query_fn,
        "history_query_fn": module._history_query_fn,
        "user_ids": world["user_ids"],
        "seen": world["seen"],
        "track": module.tracked,
    }
    root = tmp_path / "model"
    assert export_retrieval(root, **kwargs).name == "1"
    assert export_retrieval(root, **kwargs).name == "2"
    assert latest_version(root) == root / "2"
    with pytest.raises(FileExistsError, match="exists already"):
        export_retrieval(root, version=2, **kwargs)

    def broken(ids):
        raise RuntimeError("tower failed")

    with pytest.raises(RuntimeError, match="tower failed"):
        export_retrieval(root, **{**kwargs, "user_query_fn": broken})
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]  # nothing half-written
    with pytest.raises(FileNotFoundError, match="No SavedModel"):
        latest_version(tmp_path)


_FRESH = r"""
import json, sys
import tensorflow as tf
path = sys.argv[1]
loaded = tf.saved_model.load(path)
users = tf.constant(["user0", "stranger"])
k = tf.constant(4)
out = {"signatures": sorted(loaded.signatures)}
for name, inputs in [
    ("serving_default", {"user_id": users, "k": k}),
    ("unfiltered", {"user_id": users, "k": k}),
    ("by_history", {"history": tf.constant([["item1", ""], ["", ""]]), "k": k}),
    ("item_embeddings", {"item_id": tf.constant(["item1"])}),
    ("user_embeddings", {"user_id": users}),
]:
    result = loaded.signatures[name](**inputs)
    out[name] = {key: value.numpy().tolist() for key, value in result.items()}
out["default_k"] = loaded.serving_default(users)["item_ids"].shape.as_list()
out["stored_users"] = loaded.user_ids.numpy().tolist()
out["catalogue"] = loaded.item_ids.numpy().tolist()
# A TF1 session, as TensorFlow Serving runs the graph: k left out of the feed.
with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    signature = meta.signature_def["serving_default"]
    fetched = session.run(signature.outputs["item_ids"].name,
                          {signature.inputs["user_id"].name: ["user0"]})
    out["session_default_k"] = list(fetched.shape)
out["foreign_modules"] = sorted(
    m for m in sys.modules if m.split(".")[0] in ("recsys", "tf_keras", "tensorflow_recommenders"))
print(json.dumps(out, default=lambda v: v.decode() if isinstance(v, bytes) else str(v)))
"""


def test_export_answers_every_signature_in_a_fresh_tensorflow_only_process(world, module, exported):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(exported)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["foreign_modules"] == []
    assert out["signatures"] == sorted(
        ["serving_default", "unfiltered", "by_history", "item_embeddings", "user_embeddings"]
    )
    users = tf.constant(["user0", "stranger"])
    k = tf.constant(4)
    in_process = {
        "serving_default": module.serving_default(users, k),
        "unfiltered": module.unfiltered(users, k),
        "by_history": module.by_history(tf.constant([["item1", ""], ["", ""]]), k),
    }
    for name, want in in_process.items():
        assert out[name]["item_ids"] == _ids(want["item_ids"]), name
        np.testing.assert_allclose(out[name]["scores"], want["scores"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["item_embeddings"]["embeddings"], world["item_vectors"][[1]])
    np.testing.assert_allclose(out["user_embeddings"]["embeddings"][0], world["user_vectors"][0])
    assert out["default_k"] == [2, DEFAULT_K]
    assert out["stored_users"] == world["user_ids"]
    assert out["catalogue"] == ["", *world["item_ids"]]
    assert out["session_default_k"] == [1, DEFAULT_K]


def test_latest_version_accepts_a_plain_saved_model_dir(exported):
    assert latest_version(exported) == exported
    assert Path(exported / "saved_model.pb").exists()


@pytest.mark.parametrize("kind", ["exact", "partitioned"])
def test_indexes_never_gather_from_their_vector_variables(world, kind):
    # A gather straight from a variable (ResourceGather) switches it to copy-on-read:
    # every later dense read then copies the whole catalogue (1M x 64: 70 -> 700 ms
    # per request). The indexes read their variables whole and gather from tensors.
    vectors = world["item_vectors"]
    index = ExactIndex(vectors) if kind == "exact" else PartitionedIndex.build(vectors, 8)
    traced = tf.function(
        lambda q: (index.search(q, 5, exclude=tf.constant([[1]])).rows, index.vectors([0, 2]))
    ).get_concrete_function(tf.TensorSpec([None, 8]))
    ops = {node.op for node in traced.graph.as_graph_def().node}
    for function in traced.graph.as_graph_def().library.function:
        ops |= {node.op for node in function.node_def}
    assert "ReadVariableOp" in ops
    assert "ResourceGather" not in ops
