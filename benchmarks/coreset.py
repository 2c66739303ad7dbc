"""Core-set (k-center greedy) at scale: chunked O(N*d) version vs the full-matrix baseline.

Each case runs in a fresh subprocess and reports wall seconds and peak memory (CPU: peak RSS of
the process minus its RSS after imports, i.e. what the case itself added -- embeddings
included; CUDA: torch's peak allocated GPU memory). The full-matrix version is run at the
largest N whose distance matrix fits ``--full-matrix-gb``, next to the chunked version at the
same N (the ratio), and its memory at the target N is extrapolated. Not a test: nothing asserted.

    .venv/bin/python benchmarks/coreset.py                       # N=200k, d=128, k=2k on CPU
    .venv/bin/python benchmarks/coreset.py --device cuda --n 1000000 --d 256 --k 10000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _case(kind: str, n: int, d: int, k: int, labeled: int, device: str, threads: int, queue) -> None:
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # before numpy/torch load their BLAS
    import numpy as np
    import torch

    from activedet.al.coreset import k_center_greedy, k_center_greedy_full_matrix

    base = _rss_mb()
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((n, d), dtype=np.float32)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    centers = rng.standard_normal((labeled, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        k_center_greedy(pts[:1000], 2, device=device)  # warm-up: CUDA context, kernels
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if kind == "chunked":
        res = k_center_greedy(pts, k, centers=centers, device=device)
    else:
        res = k_center_greedy_full_matrix(pts, k, centers=centers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    queue.put({"threads": threads, "kind": kind, "n": n, "d": d, "k": k, "labeled": labeled, "device": device, "seconds": secs,
               "peak_mb": peak, "gpu_peak_mb": gpu, "radius": res.radius, "first": res.indices[:5].tolist()})


def run_case(*args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def _show(r: dict) -> str:
    mem = f"{r['peak_mb']:8.0f} MB RSS" + (f"  {r['gpu_peak_mb']:8.0f} MB GPU" if r["gpu_peak_mb"] is not None else "")
    return (f"  {r['kind']:11s} N={r['n']:>9,} d={r['d']:<4} k={r['k']:<6,} L={r['labeled']:<5,} {r['device']:5s}"
            f" {r['seconds']:8.2f} s  {mem}  radius {r['radius']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="pool size N")
    parser.add_argument("--d", type=int, default=128, help="embedding size d")
    parser.add_argument("--k", type=int, default=2_000, help="budget k")
    parser.add_argument("--labeled", type=int, default=2_000, help="initial centers L (labeled images)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads (1: on a shared 2-core machine more threads only add contention)")
    parser.add_argument("--full-matrix-gb", type=float, default=2.0, help="memory allowed to the full-matrix baseline")
    args = parser.parse_args()

    print(f"core-set k-center greedy: N={args.n:,} d={args.d} k={args.k:,} L={args.labeled:,} on {args.device}, "
          f"{args.threads} BLAS thread(s), load average {os.getloadavg()[0]:.1f}")
    main_case = run_case("chunked", args.n, args.d, args.k, args.labeled, args.device, args.threads)
    print(_show(main_case))
    # full matrix: [N, N + L] float32 distances plus ~2 temporaries of the same size
    n_full = int(((args.full_matrix_gb * 2**30 / 12) ** 0.5) - args.labeled)
    n_full = max(1000, min(n_full, args.n))
    k_full = min(args.k, n_full)
    full = run_case("full-matrix", n_full, args.d, k_full, args.labeled, "cpu", args.threads)
    same = run_case("chunked", n_full, args.d, k_full, args.labeled, args.device, args.threads)
    print(f"baseline at the largest N the full matrix fits in {args.full_matrix_gb:g} GB:")
    print(_show(full))
    print(_show(same))
    print(f"  same picks: {full['first'] == same['first'] and abs(full['radius'] - same['radius']) < 1e-4}")
    print(f"  full-matrix / chunked at N={n_full:,}: time x{full['seconds'] / same['seconds']:.2f}, "
          f"memory x{full['peak_mb'] / max(same['peak_mb'], 1):.1f}")
    need_gb = args.n * (args.n + args.labeled) * 12 / 2**30
    print(f"  full matrix at N={args.n:,} would need ~{need_gb:,.0f} GB; chunked used {main_case['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
