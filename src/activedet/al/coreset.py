"""Core-set selection: k-center greedy (Sener & Savarese) in O(N * d) memory, pruned.

Each step adds the point farthest from its nearest center. We keep one vector ``min_d2[N]`` (the
squared distance of every point to its nearest center), computed as ``|x|^2 + |c|^2 - 2 x.c``:
no N x N (or N x k) matrix is ever built. The initial centers (the labeled images) are folded in
by blocks of ``chunk`` centers (bounded matrix products).

Pruning (Elkan's triangle inequality, as in accelerated k-means): every point also remembers its
nearest center ``a`` and ``u = |x - a|``. A new center ``c`` cannot be closer to ``x`` than ``u``
when ``|a - c| >= 2u``, so a step only computes distances for the points that fail that test (one
cheap pass over two N-vectors). The test carries a margin that covers the rounding of the distance
formula, so a skipped point is one whose computed distance could not have been smaller: the
picks are those of the plain greedy (``prune=False``). The one way they can differ is a pair of
candidates whose squared distances are within one float rounding (~1e-7 relative in float32) of
each other, where the plain greedy's own choice already depends on BLAS summation order; with
exactly representable data (integer grids, ties and duplicates) both are exact and identical.
When many points are affected (isotropic, unclustered embeddings) a step falls back to the one
dense matrix-vector product of the plain greedy, and scans less often while that lasts, so
pruning costs at most a few per cent there.

``storage="float16"`` keeps the embeddings in half precision (half the memory and, on GPU, half
the traffic); distances then carry the rounding of float16 embeddings and float16 dot products
(~1e-3 relative): picks are the same as float32 except where two candidates' distances are that
close (near-ties), and the covering radius agrees to that precision.

Runs on torch: CPU (where numpy's BLAS does the matrix-vector products, ~3x faster than torch's
here) or the stage's device (CUDA). Cost: O(N * d) memory, at most O((k + L) * N * d) time for k
selected and L initial centers, less when pruning skips points.
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
    time it was picked, the final covering radius (max distance of any point to its nearest
    center, selected and initial centers included), and the share of the plain greedy's
    point-center distances that were computed (1.0 without pruning)."""

    indices: np.ndarray
    pick_distances: np.ndarray
    radius: float
    computed_share: float = 1.0


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
    prune: bool = True,
    storage: str = "auto",
    engine: str = "auto",
) -> CoresetResult:
    """Pick ``k`` of ``points [N, d]`` by k-center greedy, starting from ``centers [L, d]``.

    Without initial centers the first pick is a seeded random point. ``k >= N`` selects every
    point (in greedy order). Ties are broken by the lowest index, so results are deterministic.
    ``storage``: ``auto`` keeps float64 input as float64 (exact references) and uses float32
    otherwise; ``float32``; ``float16`` (half the memory, see the module docstring for exactness).
    ``prune=False`` runs the plain greedy (every distance every step). ``engine``: ``auto`` (numpy
    BLAS on CPU, torch on CUDA), ``numpy`` or ``torch`` (torch's own kernels, also on CPU).
    """
    points = np.asarray(points)
    if points.ndim != 2:
        raise ActivedetError(f"core-set: embeddings must be [N, d], got shape {points.shape}")
    if storage not in STORAGES:
        raise ActivedetError(f"core-set: storage {storage!r} is not one of {', '.join(STORAGES)}")
    if engine not in ("auto", "numpy", "torch"):
        raise ActivedetError(f"core-set: engine {engine!r} is not one of auto, numpy, torch")
    n, d = points.shape
    if centers is not None:
        centers = np.asarray(centers)
        if centers.ndim != 2 or (len(centers) and centers.shape[1] != d):
            raise ActivedetError(f"core-set: initial centers have shape {centers.shape}, expected [L, {d}]")
        if not len(centers):
            centers = None
    k = min(int(k), n)
    if k <= 0:
        return CoresetResult(np.empty(0, np.int64), np.empty(0), 0.0)
    first = None if centers is not None else int(np.random.default_rng(seed).integers(n))
    dev = resolve_device(device)
    if engine == "numpy" and dev != "cpu":
        raise ActivedetError(f"core-set: engine 'numpy' runs on the CPU, not on {dev!r}")
    # numpy's BLAS matrix-vector product was ~3x faster than torch's on this CPU (memory-bound);
    # it has no fast float16 product, so float16 on CPU uses torch's
    blas = dev == "cpu" and engine != "torch" and storage != "float16"
    greedy = _Greedy(points, (0 if centers is None else len(centers)) + k, device=dev, storage=storage,
                     prune=prune, numpy_blas=blas)
    if centers is not None:
        for start in range(0, len(centers), chunk):
            greedy.fold_centers(centers[start : start + chunk])
    greedy.start_pruning()
    picked = np.empty(k, np.int64)
    pick_d = np.empty(k, np.float64)
    for step in range(k):
        if step == 0 and first is not None:
            idx, pick_d[step] = first, float("inf")
        else:
            idx, value = greedy.farthest()  # first maximal index on ties
            pick_d[step] = math.sqrt(max(value, 0.0))
        picked[step] = idx
        greedy.add_center(idx)
    share = greedy.computed / (k * n)
    log.debug("core-set: %d dense and %d pruned steps, %.1f %% of the distances computed",
              greedy.dense_steps, greedy.pruned_steps, 100 * share)
    return CoresetResult(picked, pick_d, math.sqrt(max(greedy.max_value(), 0.0)), share)


STORAGES = ("auto", "float32", "float16")
# Above this share of candidate points a step does the dense product instead: gathering rows
# cost ~5x a contiguous product per row here (np.take of 10 % of 200k x 128 float32: 5 ms vs 9 ms
# for all of them).
DENSE_SHARE = 0.15


class _Greedy:
    """The greedy's state on one torch device: ``min_d2`` and, for pruning, each point's nearest
    center (``owner``) and the squared distance ``thr`` that a center must be under (from its
    owner) to possibly come closer; ``thr = -inf`` for picked points (never updated again).

    The same code runs on CPU and CUDA; ``numpy_blas`` swaps in numpy for the two kernels that
    dominate on CPU (matrix-vector product, row gather), on the same memory.
    """

    def __init__(self, points: np.ndarray, capacity: int, *, device: str, storage: str, prune: bool,
                 numpy_blas: bool):
        import torch

        self.torch = torch
        compute = np.float64 if storage == "auto" and points.dtype == np.float64 else np.float32
        stored = np.ascontiguousarray(points, np.float16 if storage == "float16" else compute)
        self.x = torch.from_numpy(stored).to(device)
        self.xn = stored if numpy_blas else None
        self.dtype = torch.from_numpy(np.empty(0, compute)).dtype
        n, d = self.x.shape
        self.x_sq = torch.empty(n, dtype=self.dtype, device=device)
        for r in range(0, n, 1 << 16):  # by blocks: no [N, d] temporary (10^6 x 128 fp32: 512 MB)
            block = self.x[r : r + (1 << 16)].to(self.dtype)
            self.x_sq[r : r + (1 << 16)] = torch.einsum("ij,ij->i", block, block)
        self.min_d2 = torch.full((n,), float("inf"), dtype=self.dtype, device=device)
        self.prune = prune
        self.dense_steps = self.pruned_steps = self.computed = 0  # for the log line and benchmarks
        if not prune:
            return
        # |computed - exact| <= tau for any squared distance (dot products of length d, the two
        # norms, the sums; float16 adds the rounding of its dot product to float16, 2^-11 of
        # |x||c| and measured at 2^-12: 2^-10 leaves room): the pruning margin
        scale = float(self.x_sq.max()) if n else 0.0
        self.tau = (4.0 * (d + 3) * float(np.finfo(compute).eps) + (2.0**-10 if storage == "float16" else 0.0)) * scale
        self.owner = torch.zeros(n, dtype=torch.int64, device=device)
        self.centers = torch.empty((capacity, d), dtype=self.dtype, device=device)
        self.c_sq = torch.empty(capacity, dtype=self.dtype, device=device)
        self.m = 0
        self.skip_scans = self.backoff = 0  # scans skipped after a scan found too many candidates
        self.thr: object = None

    # ----------------------------------------------------------------- kernels
    def _mv(self, rows, c):
        if self.xn is not None:
            return self.torch.from_numpy(np.dot(rows.numpy(), c.numpy()))
        return self.torch.mv(rows, c.to(rows.dtype)).to(self.dtype)

    def _dot(self, idx, c):
        """``x[idx] . c`` (all rows when ``idx`` is None) in the compute dtype."""
        if self.xn is not None and idx is not None:
            return self.torch.from_numpy(np.dot(np.take(self.xn, idx.numpy(), axis=0), c.numpy()))
        return self._mv(self.x if idx is None else self.x.index_select(0, idx), c)

    def _dist(self, idx, center: int):
        """Squared distances of ``x[idx]`` to point ``center``: the same operations, in the same
        order, for the dense and the pruned steps (so both give the same numbers)."""
        d2 = self._dot(idx, self.x[center])
        d2 *= -2.0
        d2 += self.x_sq if idx is None else self.x_sq[idx]
        d2 += self.x_sq[center]
        return d2.clamp_min_(0.0)

    def _threshold(self, d2):
        root_tau = math.sqrt(self.tau)
        return (2.0 * (d2 + self.tau).sqrt() + 2.0 * root_tau) ** 2

    # ----------------------------------------------------------------- steps
    def fold_centers(self, c: np.ndarray) -> None:
        torch = self.torch
        c = torch.from_numpy(np.ascontiguousarray(c)).to(self.x.device, self.dtype)
        if self.x.dtype == torch.float16:
            c = c.half().to(self.dtype)  # the centers carry the same rounding as the points
        c_sq = (c * c).sum(dim=1)
        rows = max(1, (1 << 22) // len(c))  # at most 4M distances (16 MB fp32) at a time
        for r in range(0, len(self.x), rows):
            block = self.x_sq[r : r + rows, None] + c_sq[None, :] - 2.0 * (self.x[r : r + rows].to(self.dtype) @ c.T)
            best, arg = block.min(dim=1)
            best.clamp_min_(0.0)
            if self.prune:
                closer = best < self.min_d2[r : r + rows]
                self.owner[r : r + rows][closer] = arg[closer] + self.m
            torch.minimum(self.min_d2[r : r + rows], best, out=self.min_d2[r : r + rows])
        if self.prune:
            self.centers[self.m : self.m + len(c)] = c
            self.c_sq[self.m : self.m + len(c)] = c_sq
            self.m += len(c)

    def start_pruning(self) -> None:
        """Per-point thresholds, once the initial centers are in."""
        if self.prune and self.m:
            self.thr = self._threshold(self.min_d2)

    def add_center(self, idx: int) -> None:
        torch = self.torch
        cand = None
        if self.prune and self.m and self.skip_scans:
            self.skip_scans -= 1
        elif self.prune and self.m:
            c = self.x[idx].to(self.dtype)
            dcc = self.c_sq[: self.m] + self.x_sq[idx] - 2.0 * self._mv(self.centers[: self.m], c)
            lower = (dcc - self.tau).clamp_min_(0.0)  # squared center-center distance, minus the margin
            cand = torch.nonzero(lower[self.owner] < self.thr).squeeze(1)
            if len(cand) > DENSE_SHARE * len(self.x):
                # unclustered data: the scan (two N-vectors) rarely pays, so skip it for a while
                # (1, 2, 4, ... 64 steps; reset by the next step that prunes)
                cand, self.backoff = None, min(2 * self.backoff or 1, 64)
                self.skip_scans = self.backoff
            else:
                self.backoff = 0
        if cand is None:
            self.dense_steps += 1
            self.computed += len(self.x)
            d2 = self._dist(None, idx)
            closer = torch.nonzero(d2 < self.min_d2).squeeze(1)
            closer_d2 = d2[closer]
        else:
            self.pruned_steps += 1
            self.computed += len(cand)
            d2 = self._dist(cand, idx)
            keep = d2 < self.min_d2[cand]
            closer, closer_d2 = cand[keep], d2[keep]
        self.min_d2[closer] = closer_d2
        self.min_d2[idx] = -1.0  # picked: never again, even when duplicates leave every distance 0
        if self.prune:
            self._reassign(idx, closer, closer_d2)

    def _reassign(self, idx: int, closer, closer_d2) -> None:
        torch = self.torch
        m = self.m
        if self.thr is None:  # first center without initial ones: everything belongs to it
            self.thr = self._threshold(self.min_d2)
            closer = torch.arange(len(self.x), device=self.x.device)
            closer_d2 = self.min_d2
        self.owner[closer] = m
        self.thr[closer] = self._threshold(closer_d2)
        self.thr[idx] = float("-inf")
        self.centers[m] = self.x[idx].to(self.dtype)
        self.c_sq[m] = self.x_sq[idx]
        self.m = m + 1

    def farthest(self) -> tuple[int, float]:
        idx = int(self.torch.argmax(self.min_d2))
        return idx, float(self.min_d2[idx])

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
