from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from activedet import schema
from activedet.al.selection import STRATEGIES, SelectionInput, SelectionParams, select, uniform_candidates
from activedet.errors import ActivedetError


def images_table(seqs: int, frames: int) -> pa.Table:
    ids = [f"s{s}_f{f:02d}" for s in range(seqs) for f in range(frames)]
    return pa.table({"image_id": ids, "sequence_id": [i[:2] for i in ids],
                     "frame_index": pa.array([int(i[-2:]) for i in ids], pa.int32())})


def scores_table(ids, rng, dim=4, **cols) -> pa.Table:
    n = len(ids)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    data = {"image_id": pa.array(ids)}
    for name in ("entropy", "inconsistency"):
        data[name] = pa.array(cols.get(name, rng.random(n)), pa.float64())
    data["num_boxes"] = pa.array([1] * n, pa.int32())
    data["pred_classes"] = pa.array(cols.get("pred_classes", [[1]] * n), pa.list_(pa.int32()))
    data["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
    return pa.table(data)


@pytest.fixture
def world():
    images = images_table(4, 10)
    ids = images.column("image_id").to_pylist()
    labeled = ids[::7]
    pool = sorted(set(ids) - set(labeled))
    return images, ids, labeled, pool, scores_table(ids, np.random.default_rng(0))


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_selects_only_pool_once_and_is_deterministic(world, strategy):
    images, ids, labeled, pool, scores = world
    inp = SelectionInput(pool, 8, seed=3, scores=scores, images=images, labeled=labeled, params=SelectionParams(device="cpu"))
    a, b = select(strategy, inp), select(strategy, inp)
    assert a == b
    assert len(a.ids) == 8 and len(set(a.ids)) == 8
    assert not set(a.ids) & set(labeled) and set(a.ids) <= set(pool)


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_budget_over_pool_selects_whole_pool_and_empty_pool_is_empty(world, strategy):
    images, ids, labeled, pool, scores = world
    small = pool[:5]
    picked = select(strategy, SelectionInput(small, 50, scores=scores, images=images, labeled=labeled))
    assert sorted(picked.ids) == sorted(small)
    assert select(strategy, SelectionInput([], 5, scores=scores, images=images, labeled=labeled)).ids == []


def test_random_differs_by_seed(world):
    images, ids, labeled, pool, scores = world
    a = select("random", SelectionInput(pool, 10, seed=1))
    b = select("random", SelectionInput(pool, 10, seed=2))
    assert a.ids != b.ids


def test_uniform_picks_every_nth_frame():
    images = images_table(3, 10)
    ids = images.column("image_id").to_pylist()
    assert uniform_candidates(ids, images, 5) == [f"s{s}_f{f:02d}" for s in range(3) for f in (0, 5)]
    picked = select("uniform", SelectionInput(ids, 6, images=images, params=SelectionParams(uniform_n=5)))
    assert picked.ids == [f"s{s}_f{f:02d}" for s in range(3) for f in (0, 5)]
    # auto n = pool // budget = 3 -> frames 0, 3, 6, 9 of each sequence, thinned evenly to 10
    auto = select("uniform", SelectionInput(ids, 10, images=images))
    assert len(auto.ids) == 10 and all(int(i[-2:]) % 3 == 0 for i in auto.ids)
    # explicit n with too few candidates: topped up from the other frames, no duplicates
    more = select("uniform", SelectionInput(ids, 9, images=images, params=SelectionParams(uniform_n=5)))
    assert len(set(more.ids)) == 9 and set(picked.ids) <= set(more.ids)


def test_topk_ranks_by_score_with_nan_last():
    ids = ["a", "b", "c", "d"]
    sc = scores_table(ids, np.random.default_rng(0), entropy=[0.5, np.nan, 0.9, 0.1])
    picked = select("topk", SelectionInput(ids, 4, scores=sc))
    assert picked.ids == ["c", "a", "d", "b"]
    assert picked.scores[:3] == [0.9, 0.5, 0.1]
    other = select("topk", SelectionInput(ids, 2, scores=sc, params=SelectionParams(score="inconsistency")))
    inc = sc.column("inconsistency").to_pylist()
    assert other.ids == [ids[i] for i in np.argsort(inc)[::-1][:2]]
    with pytest.raises(ActivedetError, match="use strategy 'unified'"):
        select("topk", SelectionInput(ids, 2, scores=sc, params=SelectionParams(score="unified")))
    with pytest.raises(ActivedetError, match="score column 'nope'"):
        select("topk", SelectionInput(ids, 2, scores=sc, params=SelectionParams(score="nope")))


def test_unified_follows_definition():
    rng = np.random.default_rng(4)
    ids = [f"i{k:02d}" for k in range(30)]
    ent, inc = rng.random(30), rng.random(30)
    sc = scores_table(ids, rng, entropy=ent, inconsistency=inc)
    budget, factor = 4, 2.5
    picked = select("unified", SelectionInput(ids, budget, scores=sc, params=SelectionParams(unified_factor=factor)))
    top_n = np.argsort(-ent)[:10]  # N = ceil(2.5 * 4) by entropy
    expected = top_n[np.argsort(-inc[top_n])][:budget]
    assert picked.ids == [ids[i] for i in expected]
    assert picked.scores == [float(inc[i]) for i in expected]


def test_coreset_uses_labeled_as_centers():
    # pool: two clusters; the labeled image sits in cluster A, so the first pick is in cluster B
    pool = ["a1", "a2", "b1", "b2"]
    emb = {"a1": [1, 0], "a2": [0.99, 0.14], "b1": [0, 1], "b2": [0.14, 0.99], "lab": [1, 0.01]}
    ids = list(emb)
    vec = np.asarray([emb[i] for i in ids], np.float32)
    sc = pa.table({"image_id": ids, "entropy": pa.array([0.0] * 5),
                   "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), 2)})
    picked = select("coreset", SelectionInput(pool, 1, scores=sc, labeled=["lab"], params=SelectionParams(device="cpu")))
    assert picked.ids[0] in ("b1", "b2")
    with pytest.raises(ActivedetError, match="include_labeled.*no row"):
        select("coreset", SelectionInput(pool, 1, scores=sc, labeled=["missing"]))


def test_prefilter_coreset_only_picks_among_uncertain(world):
    images, ids, labeled, pool, scores = world
    picked = select("prefilter_coreset", SelectionInput(pool, 3, scores=scores, labeled=labeled,
                                                        params=SelectionParams(prefilter_factor=2, device="cpu")))
    ent = dict(zip(ids, scores.column("entropy").to_pylist(), strict=True))
    top6 = sorted(pool, key=lambda i: -ent[i])[:6]
    assert set(picked.ids) <= set(top6)


def test_uniform_topk_takes_best_of_every_nth():
    images = images_table(2, 10)
    ids = images.column("image_id").to_pylist()
    ent = np.arange(20, dtype=float)  # later frames score higher
    sc = scores_table(ids, np.random.default_rng(0), entropy=ent)
    picked = select("uniform_topk", SelectionInput(ids, 2, scores=sc, images=images, params=SelectionParams(uniform_n=5)))
    assert picked.ids == ["s1_f05", "s1_f00"]


def test_class_balanced_quotas():
    ids = [f"i{k}" for k in range(8)]
    # class 1 dominates and has the highest scores; class 3 is rare
    classes = [[1], [1], [1], [1], [2], [2], [3], []]
    ent = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1, 0.95]
    sc = scores_table(ids, np.random.default_rng(0), entropy=ent, pred_classes=classes)
    picked = select("class_balanced", SelectionInput(ids, 3, scores=sc))
    assert picked.ids == ["i6", "i4", "i0"]  # rarest first, each class's best
    everything = select("class_balanced", SelectionInput(ids, 8, scores=sc))
    assert sorted(everything.ids) == sorted(ids)  # quota leftovers filled by score


def test_negative_budget_rejected():
    with pytest.raises(ActivedetError, match="budget"):
        select("random", SelectionInput(["a"], -1))


def test_selection_table_schema_roundtrip(world):
    from activedet.stages.select_batch import selection_table

    images, ids, labeled, pool, scores = world
    p = select("topk", SelectionInput(pool, 5, scores=scores))
    t = selection_table(p.ids, p.scores, "topk")
    assert t.schema.equals(schema.SELECTION) and t.column("rank").to_pylist() == list(range(5))
