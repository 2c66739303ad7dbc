"""A 10^6-image pool (tables only): merge-scores and select-batch time and peak memory beside a
naive full-table approach, and core-set 200k x 128 -> 2k against the memory-traffic bound.

Built once under ``--work`` (reused by later runs): a dataset (images table of ``--pool`` train
images in sequences of 100 frames, no image files, no boxes), a ledger (``--labeled`` labeled,
the rest unlabeled) and ``--shards`` score-unlabeled shard outputs covering every image (entropy,
inconsistency, num_boxes, pred_classes and a ``--dim``-d embedding; embeddings are a mixture of
blobs, as redundant driving frames are). Then every case runs in a fresh process (spawn) and
reports wall seconds and memory: the peak RSS of the process (``VmHWM``, what a pod limit sees)
and that peak minus the RSS after imports (what the case added).

* merge-scores: the stage over the shards, beside pandas (read every shard, concat, write)
* select-batch: the stage for random, topk, uniform, coreset, each beside the same selection
  done on whole pandas frames (ledger, images and scores read in full, embeddings stacked from
  the object column, the plain greedy)
* core-set N x d -> k with L initial centers (isotropic and clustered embeddings; pruned, plain
  and float16), beside the memory-traffic bound ``k * N * d * bytes / bandwidth`` (4 bytes, 2 for
  float16) at the read bandwidth measured in the same run (a dot product of two 0.5 GiB
  vectors; the steps only read), and beside it the bound at the copy bandwidth (numpy copy of
  1 GiB, bytes read + written per second)

Each finished case is appended to ``<work>/cases.jsonl``; a rerun with the same settings skips
it (``--fresh`` to redo). Not a test: nothing asserted.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py                  # 10^6 pool, ~10 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --only coreset   # the bound only
    .venv/bin/python benchmarks/scale.py --smoke --out /tmp/x              # seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, figures_payload, peak_rss_mb, progress, rss_mb, timer, write_figures  # noqa: E402

STRATEGIES = ("random", "topk", "uniform", "coreset")
SECTIONS = ("bandwidth", "merge", "select", "coreset")
FRAMES_PER_SEQUENCE = 100


# --------------------------------------------------------------------------- the synthetic pool


def _ids(n: int) -> list[str]:
    return [f"img{i:08d}" for i in range(n)]


def _blobs(rng, n: int, d: int, centers: int, noise: float) -> np.ndarray:
    """Unit-ish embeddings around ``centers`` random directions (near-duplicate frames)."""
    means = rng.standard_normal((centers, d), dtype=np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    out = means[rng.integers(centers, size=n)]
    out += (noise / np.sqrt(d)) * rng.standard_normal((n, d), dtype=np.float32)
    return out


def build_pool(work: Path, pool: int, dim: int, labeled: int, shards: int) -> dict:
    """Dataset, ledger and score shards under ``work`` (kept: built once per settings)."""
    import pyarrow as pa

    from activedet import schema, store
    from activedet.al import ledger as ledger_mod
    from activedet.data.dataset import write_dataset_tables
    from activedet.stages.score_unlabeled import SCORES_FILE, SCORES_META, pool_digest

    paths = {"dataset": str(work / "dataset"), "ledger": str(work / "ledger"),
             "shards": [str(work / "scores" / f"shard{i}") for i in range(shards)]}
    marker = work / "pool.json"
    if marker.exists() and json.loads(marker.read_text()).get("paths") == paths:
        return paths
    progress(f"building the pool: {pool:,} images, {dim}-d embeddings, {shards} shards under {work}")
    rng = np.random.default_rng(0)
    ids = _ids(pool)
    seq = np.arange(pool) // FRAMES_PER_SEQUENCE
    images = pa.table({
        "image_id": ids, "uri": [f"images/{i}.jpg" for i in ids],
        "width": pa.array(np.full(pool, 1920, np.int32)), "height": pa.array(np.full(pool, 1080, np.int32)),
        "sequence_id": [f"seq{s:06d}" for s in seq], "frame_index": pa.array((np.arange(pool) % FRAMES_PER_SEQUENCE).astype(np.int32)),
        "timestamp": pa.array(np.arange(pool, dtype=np.float64) / 10), "split": ["train"] * pool,
    })
    categories = pa.table({"id": pa.array([1], pa.int32()), "name": ["car"]})
    with store.OutputWriter(paths["dataset"]) as out:
        write_dataset_tables(out, images, schema.empty(schema.BOXES), categories, {"name": "scale"})
    del images
    lab = [ids[i] for i in np.sort(rng.choice(pool, labeled, replace=False))]
    with store.OutputWriter(paths["ledger"]) as out:
        ledger_mod.write_ledger(out, ledger_mod.new_ledger(ids, lab), cycle=0, parent=None)
    digest = pool_digest(ids)
    cuts = np.linspace(0, pool, shards + 1).astype(int)
    for s in range(shards):
        lo, hi = cuts[s], cuts[s + 1]
        emb = _blobs(rng, hi - lo, dim, centers=1000, noise=0.5)
        cls = pa.ListArray.from_arrays(pa.array(np.arange(hi - lo + 1, dtype=np.int32)),
                                       pa.array(rng.integers(0, 3, hi - lo).astype(np.int32)))
        table = pa.table({
            "image_id": ids[lo:hi], "entropy": rng.random(hi - lo), "inconsistency": rng.random(hi - lo),
            "num_boxes": pa.array(np.ones(hi - lo, np.int32)), "pred_classes": cls,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
        })
        meta = {"shard": s, "num_shards": shards, "pool_size": pool, "pool_digest": digest, "rows": hi - lo,
                "scores": ["entropy", "inconsistency"], "embedding": True, "ledger_uri": paths["ledger"],
                "checkpoint_uri": "synthetic", "include_labeled": True, "batch_size": 8, "seed": 0}
        with store.OutputWriter(paths["shards"][s]) as out:
            out.write_table(SCORES_FILE, table)
            out.write_json(SCORES_META, meta)
        progress(f"  shard {s + 1}/{shards}: {hi - lo:,} rows")
    marker.write_text(json.dumps({"paths": paths, "pool": pool, "dim": dim, "labeled": labeled}))
    return paths


# --------------------------------------------------------------------------- cases (child process)


def _merge_stage(paths: dict, out: str, **_) -> dict:
    from activedet.stages import merge_scores

    res = merge_scores.run(merge_scores.Config(shard_uris=paths["shards"], output_uri=out))
    return {"rows": res.rows}


def _merge_naive(paths: dict, out: str, **_) -> dict:
    import pandas as pd

    from activedet.stages.score_unlabeled import SCORES_FILE

    frames = [pd.read_parquet(Path(s) / SCORES_FILE) for s in paths["shards"]]
    merged = pd.concat(frames, ignore_index=True).sort_values("image_id")
    Path(out).mkdir(parents=True, exist_ok=True)
    merged.to_parquet(Path(out) / SCORES_FILE)
    return {"rows": len(merged)}


def _select_stage(paths: dict, out: str, strategy: str, budget: int, scores: str, **_) -> dict:
    from activedet.stages import select_batch

    res = select_batch.run(select_batch.Config(
        dataset_uri=paths["dataset"], ledger_uri=paths["ledger"], output_uri=out, strategy=strategy, budget=budget,
        scores_uri=scores if strategy in ("topk", "coreset") else None, score="entropy", device="cpu"))
    from activedet.al.selection import read_selection

    return {"selected": res.selected, "pool_size": res.pool_size, "first": read_selection(out).column("image_id")[:3].to_pylist()}


def _select_naive(paths: dict, out: str, strategy: str, budget: int, scores: str, **_) -> dict:
    """The same selection on whole pandas frames."""
    import pandas as pd

    from activedet.al.coreset import k_center_greedy
    from activedet.al.ledger import LEDGER_FILE
    from activedet.stages.score_unlabeled import SCORES_FILE

    images = pd.read_parquet(Path(paths["dataset"]) / "images.parquet")
    ledger = pd.read_parquet(Path(paths["ledger"]) / LEDGER_FILE)
    df = ledger.merge(images, on="image_id")
    pool = df[(df.state == "unlabeled") & (df.split == "train")].sort_values("image_id")
    if strategy == "random":
        picked = pool.sample(budget, random_state=0).image_id.tolist()
    elif strategy == "uniform":
        n = max(1, len(pool) // budget)
        ordered = pool.sort_values(["sequence_id", "frame_index"])
        cands = ordered[ordered.groupby("sequence_id").cumcount() % n == 0].image_id.tolist()
        picked = [cands[i] for i in np.floor(np.arange(min(budget, len(cands))) * len(cands) / budget).astype(int)]
    else:
        sc = pd.read_parquet(Path(scores) / SCORES_FILE).set_index("image_id")
        if strategy == "topk":
            picked = sc.loc[pool.image_id, "entropy"].sort_values(ascending=False, kind="stable").index[:budget].tolist()
        else:
            lab = df[df.state != "unlabeled"].image_id
            emb = np.stack(sc.loc[pool.image_id, "embedding"].to_numpy()).astype(np.float32)
            centers = np.stack(sc.loc[lab, "embedding"].to_numpy()).astype(np.float32)
            res = k_center_greedy(emb, budget, centers=centers, prune=False, device="cpu")
            picked = pool.image_id.to_numpy()[res.indices].tolist()
    ledger.loc[ledger.image_id.isin(picked), ["state", "cycle"]] = ["pending", 1]
    Path(out).mkdir(parents=True, exist_ok=True)
    ledger.to_parquet(Path(out) / LEDGER_FILE)
    return {"selected": len(picked), "pool_size": len(pool), "first": picked[:3]}


def _coreset(n: int, d: int, k: int, labeled: int, data: str, prune: bool, storage: str, **_) -> dict:
    from activedet.al.coreset import k_center_greedy

    rng = np.random.default_rng(0)
    if data == "clustered":
        pts = _blobs(rng, n + labeled, d, centers=1000, noise=0.5)
    else:
        pts = rng.standard_normal((n + labeled, d), dtype=np.float32)
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    with timer() as t:
        res = k_center_greedy(pts[:n], k, centers=pts[n:], prune=prune, storage=storage, device="cpu")
    return {"coreset_seconds": t(), "radius": res.radius, "computed_share": res.computed_share,
            "first": res.indices[:5].tolist()}


def _bandwidth(gib: float, **_) -> dict:
    """Best of 5: copy bandwidth (bytes read + written per second, numpy copy of ``gib`` GiB),
    read bandwidth (a dot product of two ``gib / 2`` GiB vectors: reads only, as core-set's
    steps), and the matrix-vector read rate of the core-set kernel itself (200k x 128 float32)."""
    src = np.ones(int(gib * 2**30) // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    half = len(src) // 2
    a, b = src[:half], dst[half:]
    read = min(_timed(lambda: np.dot(a, b)) for _ in range(5))
    x = np.ones((min(200_000, len(src) // 128), 128), np.float32)
    out = np.empty(len(x), np.float32)
    mv = min(_timed(lambda: np.dot(x, x[0], out=out)) for _ in range(20))
    return {"copy_gb_s": 2 * src.nbytes / best / 1e9, "read_gb_s": 2 * a.nbytes / read / 1e9,
            "mv_read_gb_s": x.nbytes / mv / 1e9}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


CASES = {"merge_stage": _merge_stage, "merge_naive": _merge_naive, "select_stage": _select_stage,
         "select_naive": _select_naive, "coreset": _coreset, "bandwidth": _bandwidth}


def _child(kind: str, kwargs: dict, queue) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch  # imported before the baseline: the stages load it anyway

    import activedet.stages.select_batch  # noqa: F401

    torch.set_num_threads(1)
    load = round(os.getloadavg()[0], 2)  # per case: a resumed run mixes cases from several runs
    base = rss_mb()
    with timer() as t:
        out = CASES[kind](**kwargs)
    queue.put({**out, "seconds": t(), "peak_rss_mb": peak_rss_mb(), "added_mb": peak_rss_mb() - base, "import_rss_mb": base,
               "loadavg_1m": load})


def run_case(kind: str, in_process: bool = False, **kwargs) -> dict:
    if in_process:  # smoke tests: the code paths only (memory figures are then the whole run's)
        import queue

        q: queue.Queue = queue.Queue()
        _child(kind, kwargs, q)
        return q.get()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(kind, kwargs, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"failed": f"exit code {proc.exitcode}"}  # e.g. killed for memory: that is the figure
    return queue.get()


# --------------------------------------------------------------------------- driver


class Cases:
    """Finished cases in ``<work>/cases.jsonl`` keyed by name + settings: a rerun skips them."""

    def __init__(self, path: Path, fresh: bool, in_process: bool = False):
        self.path, self.in_process = path, in_process
        self.done: dict[str, dict] = {}
        if path.exists() and not fresh:
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                self.done[rec["key"]] = rec["result"]

    def get(self, name: str, settings: dict, kind: str, **kwargs) -> dict:
        key = hashlib.sha256(json.dumps([name, settings, kwargs], sort_keys=True, default=str).encode()).hexdigest()[:16]
        if key in self.done:
            progress(f"{name}: done in an earlier run (kept)")
            return self.done[key]
        progress(f"{name} ...")
        result = run_case(kind, self.in_process, **kwargs)
        progress(f"{name}: {result.get('seconds', float('nan')):.1f} s, peak RSS {result.get('peak_rss_mb', float('nan')):.0f} MB"
                 + (f" ({result['failed']})" if "failed" in result else ""))
        self.done[key] = result
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"key": key, "name": name, "result": result}) + "\n")
        return result


def _row(section: str, name: str, value: float, unit: str, baseline: str, baseline_value: float, *, lower_is_better=True, **extra) -> dict:
    ratio = (baseline_value / value if lower_is_better else value / baseline_value) if value and baseline_value else float("nan")
    return {"section": section, "name": name, "value": round(value, 3), "unit": unit, "baseline": baseline,
            "baseline_value": round(baseline_value, 3), "ratio": round(ratio, 2), **extra}


def _pair_rows(section: str, label: str, ours: dict, naive: dict, naive_label: str) -> list[dict]:
    if "failed" in ours or "failed" in naive:
        return [{"section": section, "name": label, "value": float("nan"), "unit": "s", "baseline": naive_label,
                 "baseline_value": float("nan"), "ratio": float("nan"), "note": f"ours {ours.get('failed', 'ok')}, naive {naive.get('failed', 'ok')}"}]
    return [_row(section, f"{label}: time", ours["seconds"], "s", naive_label, naive["seconds"],
                 loadavg_1m=ours.get("loadavg_1m"), baseline_loadavg_1m=naive.get("loadavg_1m")),
            _row(section, f"{label}: peak RSS", ours["peak_rss_mb"], "MB", naive_label, naive["peak_rss_mb"],
                 added_mb=round(ours["added_mb"]), baseline_added_mb=round(naive["added_mb"]))]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, default=1_000_000, help="images in the pool table")
    p.add_argument("--dim", type=int, default=128, help="embedding size")
    p.add_argument("--labeled", type=int, default=2_000, help="labeled images (core-set's initial centers)")
    p.add_argument("--budget", type=int, default=1_000, help="select-batch budget")
    p.add_argument("--shards", type=int, default=8, help="score shards merged by merge-scores")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--coreset-n", type=int, default=200_000)
    p.add_argument("--coreset-d", type=int, default=128)
    p.add_argument("--coreset-k", type=int, default=2_000)
    p.add_argument("--coreset-labeled", type=int, default=2_000)
    p.add_argument("--bandwidth-gib", type=float, default=1.0, help="array copied to measure bandwidth")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "activedet-scale",
                   help="where the pool tables and finished cases are kept between runs")
    p.add_argument("--fresh", action="store_true", help="redo cases finished in an earlier run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--in-process", action="store_true", help="run cases in this process (smoke tests; memory figures meaningless)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    p.add_argument("--name", default=None, help="results file stem (default scale[_smoke])")
    p.add_argument("--render", type=Path, default=None, help="only re-draw the PNG next to this results JSON")
    args = p.parse_args(argv)
    if args.smoke:
        args.pool, args.dim, args.labeled, args.budget, args.shards = 3_000, 8, 30, 20, 2
        args.coreset_n, args.coreset_d, args.coreset_k, args.coreset_labeled, args.bandwidth_gib = 3_000, 8, 20, 20, 0.01
    if args.name is None:
        args.name = "scale" + ("_smoke" if args.smoke else "")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text().replace("NaN", "null"))
        plot(payload["rows"], args.render.with_suffix(".png"))
        return payload
    started, load0 = time.time(), round(os.getloadavg()[0], 2)
    work = args.work / f"pool{args.pool}_d{args.dim}_l{args.labeled}_s{args.shards}"
    work.mkdir(parents=True, exist_ok=True)
    cases = Cases(work / "cases.jsonl", args.fresh, args.in_process)
    settings = {k: v for k, v in vars(args).items() if k not in ("only", "work", "fresh", "out", "name", "strategies", "in_process")}
    rows: list[dict] = []
    bw = None
    if "bandwidth" in args.only or "coreset" in args.only:
        bw = cases.get("bandwidth", settings, "bandwidth", gib=args.bandwidth_gib)
        rows.append(_row("bandwidth", "numpy copy (read + write)", bw["copy_gb_s"], "GB/s", "", float("nan"),
                         lower_is_better=False))
        rows.append(_row("bandwidth", "read (dot product of two large vectors)", bw["read_gb_s"], "GB/s", "", float("nan"),
                         lower_is_better=False))
        rows.append(_row("bandwidth", "float32 matrix-vector read (core-set kernel)", bw["mv_read_gb_s"], "GB/s", "",
                         float("nan"), lower_is_better=False))
    if "merge" in args.only or "select" in args.only:
        paths = build_pool(work, args.pool, args.dim, args.labeled, args.shards)
        merged = str(work / "merged")
        ours = cases.get("merge-scores stage", settings, "merge_stage", paths=paths, out=merged)
        if "merge" in args.only:
            naive = cases.get("merge-scores naive", settings, "merge_naive", paths=paths, out=str(work / "merged_naive"))
            rows += _pair_rows("merge-scores", f"merge-scores, {args.shards} shards, {args.pool:,} rows", ours, naive,
                               "pandas: read all, concat, sort, write")
        if "select" in args.only:
            for strategy in args.strategies:
                kw = {"paths": paths, "strategy": strategy, "budget": args.budget, "scores": merged}
                ours = cases.get(f"select-batch {strategy}", settings, "select_stage", out=str(work / f"sel_{strategy}"), **kw)
                naive = cases.get(f"select-batch {strategy} naive", settings, "select_naive",
                                  out=str(work / f"sel_{strategy}_naive"), **kw)
                rows += _pair_rows("select-batch", f"select-batch {strategy}, pool {args.pool:,}, budget {args.budget:,}",
                                   ours, naive, "pandas, whole frames" + (" + plain greedy" if strategy == "coreset" else ""))
                if strategy == "coreset" and "failed" not in ours and "failed" not in naive:
                    rows[-1]["same_first_picks"] = ours["first"] == naive["first"]
    if "coreset" in args.only:
        n, d, k, L = args.coreset_n, args.coreset_d, args.coreset_k, args.coreset_labeled
        label = f"core-set {n:,} x {d} -> {k:,} (L={L:,})"
        for data in ("isotropic", "clustered"):
            got = {}
            for name, prune, storage in (("plain", False, "auto"), ("pruned", True, "auto"), ("pruned float16", True, "float16")):
                got[name] = cases.get(f"core-set {data} {name}", settings, "coreset", n=n, d=d, k=k, labeled=L,
                                      data=data, prune=prune, storage=storage)
                r = got[name]
                if "failed" in r:
                    continue
                # every point's embedding read once a step (reads only: the read bandwidth; the copy
                # bandwidth, read + write bytes, is the stricter figure shown beside it)
                traffic = k * n * d * (2 if storage == "float16" else 4)
                bound = traffic / (bw["read_gb_s"] * 1e9)
                copy_bound = traffic / (bw["copy_gb_s"] * 1e9)
                rows.append(_row("core-set", f"{label}, {data}, {name}", r["coreset_seconds"], "s",
                                 f"memory-traffic bound ({traffic / 1e9:.0f} GB at the read bandwidth)", bound,
                                 computed_share=round(r["computed_share"], 4), over_bound=round(r["coreset_seconds"] / bound, 2),
                                 over_copy_bound=round(r["coreset_seconds"] / copy_bound, 2),
                                 peak_rss_mb=round(r["peak_rss_mb"]), loadavg_1m=r.get("loadavg_1m"),
                                 same_picks_as_plain=None if name == "plain" else r["first"] == got["plain"]["first"] if "plain" in got else None))
    payload = figures_payload("scale", args, started, load0, rows)
    payload["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    payload["bandwidth"] = bw
    m = payload["machine"]
    write_figures(args.name, payload, rows, args.out,
                  f"Command: `{payload['command']}`  \nMachine: {m.get('cpu_model')} ({m.get('cpus')} CPUs, {m.get('mem_gb')} GB), "
                  f"one thread per case (fresh process each); load average {load0} at start, {payload['loadavg_1m_at_end']} at "
                  f"end; wall time {payload['seconds'] / 60:.1f} min (cases finished by an earlier invocation are "
                  "reused, each with its own load average below). Ratio = baseline / ours (time, memory; > 1: ours is "
                  "better); core-set: baseline = the memory-traffic bound at the read bandwidth. Peak RSS = the "
                  "case process's VmHWM (imports included).")
    _details(args.out / f"{args.name}.md", rows)
    plot(rows, args.out / f"{args.name}.png")
    return payload


def plot(rows: list[dict], path: Path) -> Path | None:
    """Stage cases: time and peak RSS, ours beside naive; core-set: time beside the bound."""
    from activedet.plots import save_png, subplots

    stage = [r for r in rows if r["section"] in ("merge-scores", "select-batch") and r["unit"] in ("s", "MB")]
    cores = [r for r in rows if r["section"] == "core-set"]
    if not stage and not cores:
        return None
    fig, axes = subplots(1, 3, figsize=(14, 4.5))
    for ax, unit, title in ((axes[0], "s", "time (s)"), (axes[1], "MB", "peak RSS (MB)")):
        sel = [r for r in stage if r["unit"] == unit]
        names = [r["name"].split(",")[0] for r in sel]
        ax.barh([i + 0.2 for i in range(len(sel))], [r["value"] for r in sel], 0.4, label="activedet")
        ax.barh([i - 0.2 for i in range(len(sel))], [r["baseline_value"] for r in sel], 0.4, label="naive pandas")
        ax.set_yticks(range(len(sel)), names, fontsize=8)
        ax.set_title(f"10^6 pool: {title}")
        ax.legend(fontsize=7)
    axes[1].axvline(4096, color="k", linestyle="--", linewidth=1)  # the 4 GB goal
    ax = axes[2]
    names = [r["name"].split("), ")[-1] for r in cores]
    ax.barh([i + 0.2 for i in range(len(cores))], [r["value"] for r in cores], 0.4, label="core-set")
    ax.barh([i - 0.2 for i in range(len(cores))], [r["baseline_value"] for r in cores], 0.4, label="memory-traffic bound")
    ax.set_yticks(range(len(cores)), names, fontsize=8)
    ax.set_title("core-set 200k x 128 -> 2k: seconds")
    ax.legend(fontsize=7)
    return save_png(fig, path)


def _details(md: Path, rows: list[dict]) -> None:
    """Append what the figures table has no column for: core-set against the bound, picks."""
    lines = []
    for r in rows:
        if r["section"] == "core-set":
            lines.append(f"| {r['name']} | {r['over_bound']} | {r['over_copy_bound']} | {r['computed_share']} "
                         f"| {r['same_picks_as_plain']} | {r['peak_rss_mb']} | {r['loadavg_1m']} |")
    if lines:
        md.write_text(md.read_text() + "\nCore-set: time / memory-traffic bound at the read bandwidth (goal <= 2) and at "
                      "the copy bandwidth, share of the plain greedy's distances computed, first picks equal to the plain "
                      "greedy's, peak RSS (MB), load average when it ran:\n\n"
                      "| case | time / bound (read) | time / bound (copy) | distances computed | same picks as plain "
                      "| peak RSS MB | load |\n|---|---|---|---|---|---|---|\n"
                      + "\n".join(lines) + "\n")
    loads = [f"{r['name'].split(':')[0]}: {r['loadavg_1m']} (naive {r['baseline_loadavg_1m']})" for r in rows
             if r.get("baseline_loadavg_1m") is not None]
    if loads:
        md.write_text(md.read_text() + "\nLoad average when each stage case ran: " + "; ".join(loads) + "\n")
    same = [f"{r['name'].split(':')[0]}: {r['same_first_picks']}" for r in rows if "same_first_picks" in r]
    if same:
        md.write_text(md.read_text() + "\nselect-batch core-set first picks equal to the naive plain greedy's: " + "; ".join(same) + "\n")


if __name__ == "__main__":
    main()
