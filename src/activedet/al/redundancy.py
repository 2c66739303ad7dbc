"""How redundant is a pool? The measurement behind ``strategy: auto`` (Mittal et al., Table 6).

Consecutive driving frames are near-duplicates; a pool of them needs batch-based diversity
(core-set), while a diverse pool is served best by single-sample uncertainty, and at very low
budgets by random selection (Mittal et al., Table 6 and section 4.3). :func:`measure_redundancy`
measures the first axis from the images' embeddings, scale-free so that it means the same for
any backbone: an image is a *near-duplicate* when its nearest neighbour is closer than
``ratio`` times the median distance between two random images of the pool.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Redundancy:
    """Result of :func:`measure_redundancy`.

    Attributes:
        near_duplicate_share: share of the measured images whose nearest neighbour is a near-duplicate.
        within_sequence_share: of those, the share whose neighbour is in the same sequence (NaN
            without sequence ids or without near-duplicates): redundancy from video, not from repeats.
        threshold: the near-duplicate distance (``ratio`` x the median random-pair distance).
        measured: images measured (a seeded sample when the pool is larger than ``max_images``).
    """

    near_duplicate_share: float
    within_sequence_share: float
    threshold: float
    measured: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest_neighbours(x: np.ndarray, queries: np.ndarray | None = None, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(index, distance)`` of the nearest other row of ``x`` (Euclidean) for each row in ``queries``.

    ``x``: ``[N, d]`` float32, N >= 2; ``queries``: row indices into ``x`` (default: every row).
    Memory: ``block x N`` floats at a time.
    """
    queries = np.arange(len(x)) if queries is None else np.asarray(queries, np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    index = np.empty(len(queries), np.int64)
    dist = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        d2 = sq[q, None] + sq[None, :] - 2.0 * (x[q] @ x.T)
        d2[np.arange(len(q)), q] = np.inf  # not itself
        j = np.argmin(d2, axis=1)
        index[start : start + len(q)] = j
        dist[start : start + len(q)] = np.sqrt(np.maximum(d2[np.arange(len(q)), j], 0.0))
    return index, dist


def measure_redundancy(
    embeddings: np.ndarray, sequence_ids: list | None = None, *, ratio: float = 0.5, max_queries: int = 2000,
    max_reference: int = 50_000, seed: int = 0,
) -> Redundancy:
    """Near-duplicate share of a pool from its image embeddings (rows L2-normalised here).

    Args:
        embeddings: ``[N, d]`` one vector per image (score-unlabeled's ``embedding`` column).
        sequence_ids: per-row sequence id (None entries: no sequence), for the within-sequence share.
        ratio: near-duplicate when the nearest neighbour is closer than ``ratio`` x the median
            distance between random pairs.
        max_queries: measure a seeded sample of at most this many images ...
        max_reference: ... each against its nearest neighbour among at most this many (a seeded
            sample holding the queries; exact for pools up to this size). Cost O(queries x reference x d).
        seed: seed of the samples and of the random pairs.

    Returns:
        a :class:`Redundancy`; fewer than 3 images give share 0 (nothing to compare).
    """
    n = len(embeddings)
    if n < 3:
        return Redundancy(0.0, float("nan"), float("nan"), n)
    rng = np.random.default_rng(seed)
    ref_rows = np.sort(rng.choice(n, max_reference, replace=False)) if n > max_reference else np.arange(n)
    x = _normalise(np.asarray(embeddings)[ref_rows])
    queries = np.sort(rng.choice(len(x), max_queries, replace=False)) if len(x) > max_queries else np.arange(len(x))
    partner = (queries + rng.integers(1, len(x), len(queries))) % len(x)  # a random other image
    threshold = ratio * float(np.median(np.linalg.norm(x[queries] - x[partner], axis=1)))
    nn, dist = nearest_neighbours(x, queries)
    near = (dist < threshold) | (dist <= 1e-6)  # exact repeats are near-duplicates at any scale
    within = float("nan")
    if sequence_ids is not None and near.any():
        seq = [sequence_ids[r] for r in ref_rows]
        pairs = zip(queries[near], nn[near], strict=True)
        within = float(np.mean([seq[i] is not None and seq[i] == seq[j] for i, j in pairs]))
    return Redundancy(float(near.mean()), within, threshold, len(queries))
