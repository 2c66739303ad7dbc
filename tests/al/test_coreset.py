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
