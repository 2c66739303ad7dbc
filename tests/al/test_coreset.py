from __future__ import annotations

import numpy as np
import pytest

from activedet.al.coreset import k_center_greedy, k_center_greedy_full_matrix


def brute_force(points, k, centers):
    """Textbook greedy: recompute every point's distance to every center at each step."""
    chosen: list[int] = []
    for _ in range(k):
        cs = np.concatenate([centers, points[chosen]]) if chosen else centers
        d = np.sqrt(((points[:, None, :] - cs[None, :, :]) ** 2).sum(-1)).min(axis=1)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    return chosen


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_matches_brute_force_and_radius_bounds_unselected(chunk):
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(200, 6))
    centers = rng.normal(size=(9, 6))
    res = k_center_greedy(pts, 25, centers=centers, chunk=chunk, device="cpu")
    assert res.indices.tolist() == brute_force(pts, 25, centers)
    allc = np.concatenate([centers, pts[res.indices]])
    nearest = np.sqrt(((pts[:, None] - allc[None]) ** 2).sum(-1)).min(axis=1)
    unselected = np.setdiff1d(np.arange(len(pts)), res.indices)
    assert nearest[unselected].max() <= res.radius + 1e-9
    assert res.radius == pytest.approx(nearest.max(), rel=1e-9)
    # each pick was the farthest point at its time: distances never increase
    assert np.all(np.diff(res.pick_distances) <= 1e-12)


def test_float32_matches_full_matrix_and_no_initial_centers_is_seeded():
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(300, 16)).astype(np.float32)
    a = k_center_greedy(pts, 20, seed=5, device="cpu")
    b = k_center_greedy_full_matrix(pts.astype(np.float64), 20, seed=5)
    assert a.indices.tolist() == b.indices.tolist()
    assert a.indices[0] == k_center_greedy(pts, 1, seed=5, device="cpu").indices[0]
    assert len(set(a.indices.tolist())) == 20


def test_k_larger_than_n_and_duplicates():
    pts = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    res = k_center_greedy(pts, 10, centers=np.array([[0.0, 0.0]]), device="cpu")
    assert sorted(res.indices.tolist()) == [0, 1, 2]
    assert res.indices[0] == 2 and res.radius == 0.0
    assert k_center_greedy(pts, 0, device="cpu").indices.size == 0


def _grid(rng, n, d, high):
    """Small integers: every squared distance is exact (float64, float32 and float16 alike), so
    ties and duplicates are real ties and any arithmetic order gives the same numbers."""
    return rng.integers(0, high, size=(n, d)).astype(np.float64)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("prune", [True, False])
def test_pruned_and_plain_match_brute_force_on_ties_and_duplicates(engine, prune):
    rng = np.random.default_rng(3)
    # few distinct values: many duplicate points and many equal distances (lowest index wins)
    pts = _grid(rng, 300, 3, 4)
    pts[150:] = pts[:150]  # every point twice
    centers = _grid(rng, 5, 3, 4)
    res = k_center_greedy(pts, 80, centers=centers, prune=prune, engine=engine, device="cpu")
    assert res.indices.tolist() == brute_force(pts, 80, centers)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_pruning_skips_work_on_clustered_data_with_identical_picks(engine):
    rng = np.random.default_rng(4)
    means = rng.normal(size=(30, 16))
    pts = (means[rng.integers(30, size=3000)] + 0.05 * rng.normal(size=(3000, 16))).astype(np.float32)
    centers = pts[:40] + np.float32(0.01)
    plain = k_center_greedy(pts, 60, centers=centers, prune=False, device="cpu")
    pruned = k_center_greedy(pts, 60, centers=centers, engine=engine, device="cpu")
    assert pruned.indices.tolist() == plain.indices.tolist()
    # float32 distances from |x|^2 + |c|^2 - 2x.c lose ~eps * |x|^2 / r^2 (about 1e-5 here) and the engines sum in different orders
    assert pruned.radius == pytest.approx(plain.radius, rel=1e-4)
    assert plain.computed_share == 1.0 and pruned.computed_share < 0.5
    # no initial centers: the seeded first pick, then the same greedy
    assert (k_center_greedy(pts, 30, seed=2, engine=engine, device="cpu").indices.tolist()
            == k_center_greedy(pts, 30, seed=2, prune=False, device="cpu").indices.tolist())


def test_pruned_matches_brute_force_on_random_float64():
    rng = np.random.default_rng(5)
    pts = np.concatenate([rng.normal(size=(150, 5)), rng.normal(size=(150, 5)) * 0.1 + 3])
    centers = rng.normal(size=(4, 5))
    assert k_center_greedy(pts, 40, centers=centers, device="cpu").indices.tolist() == brute_force(pts, 40, centers)


def test_float16_is_exact_on_representable_data_and_near_float32_otherwise():
    rng = np.random.default_rng(6)
    pts, centers = _grid(rng, 200, 4, 8), _grid(rng, 3, 4, 8)
    half = k_center_greedy(pts, 50, centers=centers, storage="float16", device="cpu")
    assert half.indices.tolist() == brute_force(pts, 50, centers)
    # continuous data: the picks agree until a near-tie, where the two choices are within the
    # float16 rounding of each other's distance (float64 evaluation at that step)
    pts = rng.normal(size=(2000, 32)).astype(np.float32)
    centers = pts[:10] + np.float32(0.1)
    a = k_center_greedy(pts, 100, centers=centers, device="cpu")
    b = k_center_greedy(pts, 100, centers=centers, storage="float16", device="cpu")
    assert b.radius == pytest.approx(a.radius, rel=2e-3)
    differ = np.flatnonzero(a.indices != b.indices)
    if len(differ):
        step = differ[0]
        cs = np.concatenate([centers, pts[a.indices[:step]]]).astype(np.float64)
        near = np.sqrt(((pts[:, None].astype(np.float64) - cs[None]) ** 2).sum(-1)).min(axis=1)
        assert near[b.indices[step]] == pytest.approx(near[a.indices[step]], rel=2e-3)


def test_bad_storage_and_engine_are_errors():
    from activedet.errors import ActivedetError

    with pytest.raises(ActivedetError, match="storage"):
        k_center_greedy(np.zeros((3, 2)), 1, storage="int8", device="cpu")
    with pytest.raises(ActivedetError, match="engine"):
        k_center_greedy(np.zeros((3, 2)), 1, engine="jax", device="cpu")
