"""Core-set selection: k-center greedy (Sener & Savarese) in O(N * d) memory.

Each step adds the point farthest from its nearest center. We keep one vector ``min_d2[N]`` (the
squared distance of every point to its nearest center) and update it per added center with one
matrix-vector product, ``|x|^2 + |c|^2 - 2 x.c``: no N x N (or N x k) matrix is ever built. The
initial centers (the labeled images) are folded in by blocks of ``chunk`` centers, so that part
is a sequence of bounded matrix products. Runs on torch: CPU, or CUDA when ``device`` says so.

Cost: O(N * d) memory (the embeddings themselves plus a few N-vectors), O((k + L) * N * d) time
for k selected and L initial centers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from activedet.errors import ActivedetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoresetResult:
    """Selected indices (in selection order), the distance of each to its nearest center at the
    time it was picked, and the final covering radius (max distance of any point to its nearest
    center, selected and initial centers included)."""

    indices: np.ndarray
    pick_distances: np.ndarray
    radius: float


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed through."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ActivedetError(f"device {device!r} requested but CUDA is not available")
    return device


def k_center_greedy(
    points: np.ndarray,
    k: int,
    *,
    centers: np.ndarray | None = None,
    seed: int = 0,
    device: str = "auto",
    chunk: int = 1024,
) -> CoresetResult:
    """Pick ``k`` of ``points [N, d]`` by k-center greedy, starting from ``centers [L, d]``.

    Without initial centers the first pick is a seeded random point. ``k >= N`` selects every
    point (in greedy order). Ties are broken by the lowest index, so results are deterministic.
    The dtype of ``points`` is kept (float32 normally; float64 for exact references).
    """
    import torch

    points = np.asarray(points)
    if points.ndim != 2:
        raise ActivedetError(f"core-set: embeddings must be [N, d], got shape {points.shape}")
    n, d = points.shape
    if centers is not None:
        centers = np.asarray(centers, dtype=points.dtype)
        if centers.ndim != 2 or (len(centers) and centers.shape[1] != d):
            raise ActivedetError(f"core-set: initial centers have shape {centers.shape}, expected [L, {d}]")
    k = min(int(k), n)
    if k <= 0:
        return CoresetResult(np.empty(0, np.int64), np.empty(0), 0.0)
    dev = torch.device(resolve_device(device))
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(points)).to(dev)
        x_sq = (x * x).sum(dim=1)
        min_d2 = torch.full((n,), float("inf"), dtype=x.dtype, device=dev)
        if centers is not None and len(centers):
            for start in range(0, len(centers), chunk):
                c = torch.from_numpy(np.ascontiguousarray(centers[start : start + chunk])).to(dev)
                c_sq = (c * c).sum(dim=1)
                rows = max(1, (1 << 24) // len(c))  # at most 16M distances (64 MB fp32) at a time
                for r in range(0, n, rows):
                    d2 = x_sq[r : r + rows, None] + c_sq[None, :] - 2.0 * (x[r : r + rows] @ c.T)
                    block_min = d2.min(dim=1).values.clamp_min_(0)
                    torch.minimum(min_d2[r : r + rows], block_min, out=min_d2[r : r + rows])
            first = None
        else:
            first = int(np.random.default_rng(seed).integers(n))
        picked = np.empty(k, np.int64)
        pick_d = np.empty(k, np.float64)
        for step in range(k):
            if first is not None and step == 0:
                idx = first
                pick_d[step] = float("inf")
            else:
                idx = int(torch.argmax(min_d2))  # first maximal index on ties
                pick_d[step] = float(min_d2[idx].clamp_min(0).sqrt())
            picked[step] = idx
            c = x[idx]
            d2 = (x_sq + x_sq[idx] - 2.0 * (x @ c)).clamp_min_(0)
            torch.minimum(min_d2, d2, out=min_d2)
            min_d2[idx] = -1.0  # picked: never again, even when duplicates leave every distance 0
        radius = float(min_d2.max().clamp_min(0).sqrt())
    return CoresetResult(picked, pick_d, radius)


def k_center_greedy_full_matrix(points: np.ndarray, k: int, *, centers: np.ndarray | None = None, seed: int = 0) -> CoresetResult:
    """The textbook version with a full pairwise-distance matrix ([N, N + L] memory).

    Kept as the baseline for ``benchmarks/coreset.py`` and as a readable reference.
    """
    points = np.asarray(points)
    n = len(points)
    k = min(int(k), n)
    allc = points if centers is None or not len(centers) else np.concatenate([points, np.asarray(centers, points.dtype)])
    sq = (allc * allc).sum(1)
    dist = np.sqrt(np.maximum(sq[:n, None] + sq[None, :] - 2.0 * points @ allc.T, 0))
    if centers is not None and len(centers):
        min_d = dist[:, n:].min(axis=1)
        first = None
    else:
        min_d = np.full(n, np.inf, dist.dtype)
        first = int(np.random.default_rng(seed).integers(n))
    picked, pick_d = [], []
    for step in range(k):
        idx = first if (first is not None and step == 0) else int(np.argmax(min_d))
        pick_d.append(float("inf") if (first is not None and step == 0) else float(min_d[idx]))
        picked.append(idx)
        min_d = np.minimum(min_d, dist[:, idx])
        min_d[idx] = -1.0
    return CoresetResult(np.asarray(picked, np.int64), np.asarray(pick_d), max(float(min_d.max()), 0.0))
