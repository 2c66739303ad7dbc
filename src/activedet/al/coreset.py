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
import math
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
    if device == "cpu":
        return device
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
    points = np.asarray(points)
    if points.ndim != 2:
        raise ActivedetError(f"core-set: embeddings must be [N, d], got shape {points.shape}")
    n, d = points.shape
    if centers is not None:
        centers = np.asarray(centers, dtype=points.dtype)
        if centers.ndim != 2 or (len(centers) and centers.shape[1] != d):
            raise ActivedetError(f"core-set: initial centers have shape {centers.shape}, expected [L, {d}]")
        if not len(centers):
            centers = None
    k = min(int(k), n)
    if k <= 0:
        return CoresetResult(np.empty(0, np.int64), np.empty(0), 0.0)
    first = None if centers is not None else int(np.random.default_rng(seed).integers(n))
    dev = resolve_device(device)
    # CPU: numpy's BLAS matrix-vector product was ~3x faster than torch's here (memory-bound);
    # GPU: torch. Both run the same steps.
    ops = _NumpyOps(points) if dev == "cpu" else _TorchOps(points, dev)
    if centers is not None:
        for start in range(0, len(centers), chunk):
            ops.fold_centers(centers[start : start + chunk])
    picked = np.empty(k, np.int64)
    pick_d = np.empty(k, np.float64)
    for step in range(k):
        if step == 0 and first is not None:
            idx, pick_d[step] = first, float("inf")
        else:
            idx = ops.argmax()  # first maximal index on ties
            pick_d[step] = math.sqrt(max(ops.value(idx), 0.0))
        picked[step] = idx
        ops.add_center(idx)
    return CoresetResult(picked, pick_d, math.sqrt(max(ops.max_value(), 0.0)))


class _NumpyOps:
    """The min-distance vector on CPU: one BLAS matrix-vector product per added center."""

    def __init__(self, points: np.ndarray):
        self.x = np.ascontiguousarray(points)
        self.x_sq = np.einsum("ij,ij->i", self.x, self.x)
        self.min_d2 = np.full(len(self.x), np.inf, self.x.dtype)
        self.d2 = np.empty(len(self.x), self.x.dtype)  # reused every step: no per-step allocation

    def fold_centers(self, c: np.ndarray) -> None:
        c = np.ascontiguousarray(c, self.x.dtype)
        c_sq = np.einsum("ij,ij->i", c, c)
        rows = max(1, (1 << 22) // len(c))  # at most 4M distances (16 MB fp32) at a time
        for r in range(0, len(self.x), rows):
            block = self.x_sq[r : r + rows, None] + c_sq[None, :] - 2.0 * (self.x[r : r + rows] @ c.T)
            np.minimum(self.min_d2[r : r + rows], np.maximum(block.min(axis=1), 0.0), out=self.min_d2[r : r + rows])

    def add_center(self, idx: int) -> None:
        # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c, in place: one pass over the embeddings
        d2 = self.d2
        np.dot(self.x, self.x[idx], out=d2)
        d2 *= -2.0
        d2 += self.x_sq
        d2 += self.x_sq[idx]
        np.maximum(d2, 0.0, out=d2)
        np.minimum(self.min_d2, d2, out=self.min_d2)
        self.min_d2[idx] = -1.0  # picked: never again, even when duplicates leave every distance 0

    def argmax(self) -> int:
        return int(np.argmax(self.min_d2))

    def value(self, idx: int) -> float:
        return float(self.min_d2[idx])

    def max_value(self) -> float:
        return float(self.min_d2.max())


class _TorchOps:
    """The same steps on a torch device (CUDA)."""

    def __init__(self, points: np.ndarray, device: str):
        import torch

        self.torch = torch
        self.x = torch.from_numpy(np.ascontiguousarray(points)).to(device)
        self.x_sq = (self.x * self.x).sum(dim=1)
        self.min_d2 = torch.full((len(self.x),), float("inf"), dtype=self.x.dtype, device=self.x.device)
        self.d2 = torch.empty_like(self.min_d2)

    def fold_centers(self, c: np.ndarray) -> None:
        torch = self.torch
        c = torch.from_numpy(np.ascontiguousarray(c)).to(self.x.device)
        c_sq = (c * c).sum(dim=1)
        rows = max(1, (1 << 22) // len(c))
        for r in range(0, len(self.x), rows):
            block = self.x_sq[r : r + rows, None] + c_sq[None, :] - 2.0 * (self.x[r : r + rows] @ c.T)
            torch.minimum(self.min_d2[r : r + rows], block.min(dim=1).values.clamp_min_(0.0), out=self.min_d2[r : r + rows])

    def add_center(self, idx: int) -> None:
        torch = self.torch
        torch.mv(self.x, self.x[idx], out=self.d2)
        self.d2.mul_(-2.0).add_(self.x_sq).add_(self.x_sq[idx]).clamp_min_(0.0)
        torch.minimum(self.min_d2, self.d2, out=self.min_d2)
        self.min_d2[idx] = -1.0

    def argmax(self) -> int:
        return int(self.torch.argmax(self.min_d2))

    def value(self, idx: int) -> float:
        return float(self.min_d2[idx])

    def max_value(self) -> float:
        return float(self.min_d2.max())


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
