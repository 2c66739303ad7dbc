"""How redundant is a pool? The measurement behind ``strategy: auto`` (Mittal et al., Table 6).

Consecutive driving frames are near-duplicates; a pool of them needs batch-based diversity
(core-set), while a diverse pool is served best by single-sample uncertainty, and at very low
budgets by random selection (Mittal et al., Table 6 and section 4.3). :func:`measure_redundancy`
measures the first axis from the images' embeddings. The distance scale is the pool's own:
the median distance from an image to the nearest image of *another* sequence (how far apart
distinct scenes are in this embedding space). An image is a *near-duplicate* when some other
image is closer to it than ``ratio`` times that scale.

Why that scale: pooled backbone embeddings of driving scenes are strongly anisotropic, so any
two frames look close next to random pairs (measured on SynthDrive with a trained Lite0: the
nearest neighbour sits at 0.06x the median random-pair distance in a pool of 20-frame
sequences and at 0.19x in a pool of independent frames; both would be "near" at any fixed
share of the random-pair distance). Against the nearest other-sequence image the two pools
separate cleanly (near-duplicate share 0.995 vs 0.0 at ratio 0.5). Without sequence ids every
image is its own sequence and only exact or very close repeats count: derive scenes first
(``activedet data split`` groups frames by time gaps or image similarity).
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
            without near-duplicates): redundancy from video rather than from repeated scenes.
        threshold: the near-duplicate distance (``ratio`` x the median distance to the nearest
            image of another sequence).
        measured: images measured (a seeded sample when the pool is larger than ``max_queries``).
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


def nearest_neighbours(
    x: np.ndarray, queries: np.ndarray | None = None, groups: np.ndarray | None = None, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest other row of ``x`` (Euclidean) for each row in ``queries``, and the nearest of another group.

    Args:
        x: ``[N, d]`` float32, N >= 2.
        queries: row indices into ``x`` (default: every row).
        groups: ``[N]`` integer group of each row (sequence); default: every row its own group.
        block: query rows per matrix product (memory: ``block x N`` floats).

    Returns:
        ``(index, distance, other_distance)``: the nearest row and its distance, and the distance
        to the nearest row of another group (inf when there is none).
    """
    queries = np.arange(len(x)) if queries is None else np.asarray(queries, np.int64)
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    sq = np.einsum("ij,ij->i", x, x)
    index = np.empty(len(queries), np.int64)
    dist = np.empty(len(queries), np.float32)
    other = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        rows = np.arange(len(q))
        d2 = sq[q, None] + sq[None, :] - 2.0 * (x[q] @ x.T)
        d2[rows, q] = np.inf  # not itself
        j = np.argmin(d2, axis=1)
        index[start : start + len(q)] = j
        dist[start : start + len(q)] = np.sqrt(np.maximum(d2[rows, j], 0.0))
        d2[groups[q][:, None] == groups[None, :]] = np.inf
        other[start : start + len(q)] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return index, dist, other


def measure_redundancy(
    embeddings: np.ndarray, sequence_ids: list | None = None, *, ratio: float = 0.5, max_queries: int = 2000,
    max_reference: int = 50_000, seed: int = 0,
) -> Redundancy:
    """Near-duplicate share of a pool from its image embeddings (rows L2-normalised here).

    Args:
        embeddings: ``[N, d]`` one vector per image (score-unlabeled's ``embedding`` column).
        sequence_ids: per-row sequence id (None entries: a sequence of their own).
        ratio: near-duplicate when another image is closer than ``ratio`` x the median distance
            from an image to the nearest image of another sequence.
        max_queries: measure a seeded sample of at most this many images ...
        max_reference: ... each against its neighbours among at most this many (a seeded sample
            holding the queries; exact for pools up to this size). Cost O(queries x reference x d).
        seed: seed of the samples.

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
    seq = [None] * len(x) if sequence_ids is None else [sequence_ids[r] for r in ref_rows]
    codes: dict = {}
    groups = np.array([codes.setdefault(s, len(codes)) if s is not None else -1 - k for k, s in enumerate(seq)], np.int64)
    nn, dist, other = nearest_neighbours(x, queries, groups)
    finite = other[np.isfinite(other)]
    threshold = ratio * float(np.median(finite)) if len(finite) else 0.0
    near = (dist < threshold) | (dist <= 1e-6)  # exact repeats are near-duplicates at any scale
    within = float("nan")
    if near.any():
        within = float(np.mean(groups[queries[near]] == groups[nn[near]]))
    return Redundancy(float(near.mean()), within, threshold, len(queries))
