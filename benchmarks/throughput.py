"""Throughput of the data path and the model path, every figure beside a naive baseline.

Sections (``--only`` picks some; sizes are flags):

* ``parquet``   -- boxes table (activedet.schema.BOXES, ``--images`` x ``--boxes-per-image`` rows)
  written / read through activedet.store (Parquet, zstd) vs Python's ``csv`` module row by row
  (measured on ``--csv-images`` images; rates are per MB of Arrow data, so sizes compare).
* ``s3``        -- store.upload / store.download of a ``--s3-mb`` MB object against a loopback S3
  server (moto's ThreadedMotoServer on 127.0.0.1, in its own process) vs one single-part
  ``put_object`` / ``get_object().read()`` of the whole object held in memory.
* ``coreset``   -- k-center greedy (activedet.al.coreset, O(N d) memory) time and peak memory
  against N, each case in a fresh process, beside the full-matrix version at the largest N whose
  distance matrix fits ``--full-matrix-gb``.
* ``inference`` -- images/s of Predictor (batched) for presets tiny and resnet50_fpn at several
  batch sizes vs a per-image Python loop calling the torchvision model on one image at a time.
* ``scoring``   -- images/s of acquisition scoring with flip TTA (entropy + inconsistency +
  embedding, as score-unlabeled computes them) batched vs per image.

Models are randomly initialised (no downloads), so they emit many low-score boxes: post-processing
costs are, if anything, overstated. On CPU resnet50_fpn runs at ``--r50-min-size`` (default 256,
not the papers' 800) so the section finishes in minutes; ``--device cuda`` uses 800.

    .venv/bin/python benchmarks/throughput.py                     # ~10 min on 2 CPU cores
    .venv/bin/python benchmarks/throughput.py --smoke             # seconds, tiny sizes
    .venv/bin/python benchmarks/throughput.py --device cuda       # absolute GPU figures

Writes benchmarks/results/throughput.json and .csv (``--out`` to change). Not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    figures_payload,
    peak_rss_mb,
    progress,
    rate,
    rss_mb,
    timer,
    write_figures,
)

SECTIONS = ("parquet", "s3", "coreset", "inference", "scoring")
MB = 1e6


def _row(section: str, name: str, value: float, unit: str, baseline: str, baseline_value: float, **params) -> dict:
    ratio = value / baseline_value if baseline_value and baseline_value > 0 else float("nan")
    return {"section": section, "name": name, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio, "params": params}


# --------------------------------------------------------------------------- parquet


def boxes_table(num_images: int, per_image: int, seed: int = 0):
    """A valid boxes table (schema.BOXES) of ``num_images * per_image`` ground-truth boxes."""
    import pyarrow as pa

    from activedet import schema

    rng = np.random.default_rng(seed)
    n = num_images * per_image
    ids = pa.array([f"img{i:08d}" for i in range(num_images)], pa.string())
    image_ids = ids.take(pa.array(np.repeat(np.arange(num_images), per_image)))
    x1 = rng.uniform(0, 1800, n).astype(np.float32)
    y1 = rng.uniform(0, 1000, n).astype(np.float32)
    w = rng.uniform(4, 120, n).astype(np.float32)
    h = rng.uniform(4, 80, n).astype(np.float32)
    cols = {
        "image_id": image_ids, "x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h,
        "category_id": rng.integers(1, 6, n).astype(np.int32), "score": np.ones(n, np.float32),
        "source": pa.array(["gt"]).take(pa.array(np.zeros(n, np.int64))),
    }
    return pa.table(cols, schema=schema.BOXES)


def bench_parquet(args, tmp: Path) -> list[dict]:
    from activedet import schema, store

    rows = []
    progress(f"parquet: building a boxes table of {args.images:,} images x {args.boxes_per_image} boxes")
    table = boxes_table(args.images, args.boxes_per_image)
    data_mb = table.nbytes / MB
    uri = str(tmp / "boxes.parquet")
    with timer() as t:
        store.write_table(table, uri)
    write_s = t()
    file_mb = os.path.getsize(uri) / MB
    with timer() as t:
        back = store.read_table(uri)
        _ = back.column("x1").to_numpy()  # make sure the data is really there
    read_s = t()
    assert back.num_rows == table.num_rows
    with timer() as t:
        schema.validate_boxes(back, where="benchmark")
    validate_s = t()
    progress(f"parquet: {data_mb:.0f} MB of Arrow data ({table.num_rows:,} rows) -> {file_mb:.0f} MB file; "
             f"write {write_s:.2f} s, read {read_s:.2f} s, validate {validate_s:.2f} s")
    del back

    # baseline: Python's csv module, one row at a time, on a slice of the images
    sub = boxes_table(args.csv_images, args.boxes_per_image)
    sub_mb = sub.nbytes / MB
    pyrows = list(zip(*(sub.column(c).to_pylist() for c in sub.column_names), strict=True))
    path = tmp / "boxes.csv"
    with timer() as t:
        with open(path, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(sub.column_names)
            for r in pyrows:
                wr.writerow(r)
    csv_write_s = t()
    csv_mb = path.stat().st_size / MB
    with timer() as t:
        out = []
        with open(path, newline="") as fh:
            rd = csv.reader(fh)
            next(rd)
            for r in rd:
                out.append((r[0], float(r[1]), float(r[2]), float(r[3]), float(r[4]), int(r[5]), float(r[6]), r[7]))
    csv_read_s = t()
    assert len(out) == sub.num_rows
    progress(f"parquet: csv baseline {sub_mb:.0f} MB ({sub.num_rows:,} rows) -> {csv_mb:.0f} MB file; "
             f"write {csv_write_s:.2f} s, read {csv_read_s:.2f} s")
    params = {"images": args.images, "boxes": table.num_rows, "arrow_mb": round(data_mb, 1), "file_mb": round(file_mb, 1),
              "csv_rows": sub.num_rows, "csv_file_mb": round(csv_mb, 1)}
    rows.append(_row("parquet", "write boxes table (store.write_table)", rate(data_mb, write_s), "MB/s",
                     "csv.writer row by row", rate(sub_mb, csv_write_s), **params))
    rows.append(_row("parquet", "read boxes table (store.read_table)", rate(data_mb, read_s), "MB/s",
                     "csv.reader row by row + type conversion", rate(sub_mb, csv_read_s), **params))
    rows.append(_row("parquet", "validate boxes table (schema.validate_boxes)", rate(table.num_rows, validate_s) / 1e6,
                     "M rows/s", "csv.reader row by row + type conversion",
                     rate(sub.num_rows, csv_read_s) / 1e6, **params))
    return rows


# --------------------------------------------------------------------------- s3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MOTO_CHILD = """
import sys, time
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def _start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", MOTO_CHILD, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # the server logs every request
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise RuntimeError("moto server did not start")
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    return proc, endpoint


def bench_s3(args, tmp: Path) -> list[dict]:
    import boto3

    from activedet import store

    proc, endpoint = _start_moto()
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE"]}
    os.environ.update(env)
    os.environ.pop("AWS_PROFILE", None)
    store._clients.clear()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        size = int(args.s3_mb * MB)
        data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()  # incompressible
        src = tmp / "object.bin"
        src.write_bytes(data)
        small = tmp / "warmup.bin"
        small.write_bytes(b"x" * 1024)
        store.upload(small, f"s3://{bucket}/warmup.bin")  # client creation and first connection, untimed
        client.put_object(Bucket=bucket, Key="warmup.bin", Body=b"x")
        best = {"up": 1e9, "down": 1e9, "put": 1e9, "get": 1e9}
        for rep in range(args.repeats):
            with timer() as t:
                store.upload(src, f"s3://{bucket}/store/object.bin")
            best["up"] = min(best["up"], t())
            dst = tmp / f"down{rep}.bin"
            with timer() as t:
                store.download(f"s3://{bucket}/store/object.bin", dst)
            best["down"] = min(best["down"], t())
            assert dst.stat().st_size == size
            dst.unlink()
            with timer() as t:
                client.put_object(Bucket=bucket, Key="naive/object.bin", Body=data)
            best["put"] = min(best["put"], t())
            with timer() as t:
                got = client.get_object(Bucket=bucket, Key="naive/object.bin")["Body"].read()
            best["get"] = min(best["get"], t())
            assert len(got) == size
            del got
            progress(f"s3: repeat {rep + 1}/{args.repeats}: upload {rate(args.s3_mb, best['up']):.0f} MB/s, "
                     f"download {rate(args.s3_mb, best['down']):.0f} MB/s (best so far)")
    finally:
        proc.kill()
        proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        store._clients.clear()
    params = {"object_mb": args.s3_mb, "repeats": args.repeats, "server": "moto ThreadedMotoServer, 127.0.0.1, own process",
              "multipart_threshold_mb": store.MULTIPART_THRESHOLD / 2**20, "chunk_mb": store.MULTIPART_CHUNK / 2**20}
    return [
        _row("s3", "upload (store.upload, multipart)", rate(args.s3_mb, best["up"]), "MB/s",
             "single put_object from memory", rate(args.s3_mb, best["put"]), **params),
        _row("s3", "download (store.download, one GET into a reused buffer)", rate(args.s3_mb, best["down"]), "MB/s",
             "single get_object().read() into memory", rate(args.s3_mb, best["get"]), **params),
    ]


# --------------------------------------------------------------------------- core-set


def _coreset_case(kind: str, n: int, d: int, k: int, labeled: int, device: str, threads: int, queue) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from activedet.al.coreset import k_center_greedy, k_center_greedy_full_matrix

    base = rss_mb()
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((n, d), dtype=np.float32)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    centers = rng.standard_normal((labeled, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    cuda = device.startswith("cuda")
    if cuda:
        k_center_greedy(pts[:1000], 2, device=device)  # CUDA context and kernels outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with timer() as t:
        if kind == "chunked":
            res = k_center_greedy(pts, k, centers=centers, device=device)
        else:
            res = k_center_greedy_full_matrix(pts, k, centers=centers)
        if cuda:
            torch.cuda.synchronize()
    secs = t()
    queue.put({"kind": kind, "n": n, "seconds": secs, "peak_mb": peak_rss_mb() - base,
               "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
               "radius": res.radius, "first": res.indices[:8].tolist()})


def _run_case(*args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_coreset_case, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def bench_coreset(args) -> list[dict]:
    d, k, labeled = args.coreset_d, args.coreset_k, args.coreset_labeled
    dev = "cuda" if args.device == "cuda" else "cpu"
    # the full-matrix baseline builds an N x (N + L) float32 matrix (and a few temporaries of that size)
    n_full = int(((args.full_matrix_gb * 2**30 / 4) ** 0.5) // 1000 * 1000)
    n_full = max(1000, min(n_full, max(args.coreset_n)))
    rows = []
    progress(f"coreset: full-matrix baseline at N={n_full:,} (matrix <= {args.full_matrix_gb} GB), d={d}, k={k}, L={labeled}")
    full = _run_case("full", n_full, d, k, labeled, "cpu", args.threads)
    same = _run_case("chunked", n_full, d, k, labeled, dev, args.threads)
    agree = full["first"] == same["first"]
    progress(f"coreset: N={n_full:,}: chunked {same['seconds']:.2f} s {same['peak_mb']:.0f} MB, "
             f"full-matrix {full['seconds']:.2f} s {full['peak_mb']:.0f} MB (same picks: {agree})")
    params = {"n": n_full, "d": d, "k": k, "labeled": labeled, "device": dev, "same_first_picks": agree}
    rows.append(_row("coreset", f"time at N={n_full:,} (chunked, s)", same["seconds"], "s", "full matrix", full["seconds"], **params))
    rows[-1]["ratio"] = full["seconds"] / max(same["seconds"], 1e-9)  # speed-up: baseline time / ours
    rows.append(_row("coreset", f"peak memory at N={n_full:,} (chunked, MB)", same["peak_mb"], "MB", "full matrix",
                     full["peak_mb"], **params, gpu_peak_mb=same["gpu_peak_mb"]))
    rows[-1]["ratio"] = full["peak_mb"] / max(same["peak_mb"], 1e-9)  # memory saving factor
    per_point = full["peak_mb"] / n_full**2  # extrapolate the quadratic baseline
    for n in args.coreset_n:
        if n == n_full:
            continue
        r = _run_case("chunked", n, d, k, labeled, dev, args.threads)
        est = per_point * n**2
        progress(f"coreset: N={n:,}: chunked {r['seconds']:.2f} s, peak {r['peak_mb']:.0f} MB "
                 f"(full matrix would need ~{est / 1024:.1f} GB)")
        p = {"n": n, "d": d, "k": k, "labeled": labeled, "device": dev, "gpu_peak_mb": r["gpu_peak_mb"]}
        rows.append(_row("coreset", f"time at N={n:,} (chunked, s)", r["seconds"], "s", "full matrix (does not fit)",
                         float("nan"), **p))
        rows.append(_row("coreset", f"peak memory at N={n:,} (chunked, MB)", r["peak_mb"], "MB",
                         "full matrix, extrapolated N^2", est, **p))
        rows[-1]["ratio"] = est / max(r["peak_mb"], 1e-9)
    return rows


# --------------------------------------------------------------------------- inference and scoring


def _dataset(args, tmp: Path):
    from activedet.data.dataset import load_dataset
    from activedet.data.synth import generate_synthdrive

    uri = str(tmp / "synth")
    frames = 8
    generate_synthdrive(uri, sequences=max(1, -(-args.infer_images // frames)), frames=frames, seed=0,
                        val_fraction=0.0, test_fraction=0.0)
    ds = load_dataset(uri)
    return ds, ds.images.column("image_id").to_pylist()[: args.infer_images]


def _detector(preset: str, ds, args):
    from activedet.models.checkpoint import detector_for_dataset
    from activedet.models.train import seed_everything

    seed_everything(0)
    opts = {}
    if preset == "resnet50_fpn":
        opts = {"min_size": args.r50_min_size, "max_size": 2 * args.r50_min_size}
    return detector_for_dataset(preset, ds, **opts), opts


def _device(args):
    import torch

    return torch.device("cuda" if args.device == "cuda" else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _per_image_loop(det, ds, ids, device, reps: int = 2) -> float:
    """Naive baseline: decode one image, call the torchvision model on it, next image (best of ``reps``)."""
    import torch

    from activedet.models.data import read_image

    uris = _uris(ds)
    model = det.model.to(device).eval()
    with torch.no_grad():
        for iid in ids[:4]:  # warm-up: allocator, kernels, page cache
            model([read_image(ds, iid, uris[iid]).to(device).float() / 255])
        _sync(device)
        best = 0.0
        for _ in range(reps):
            with timer() as t:
                for iid in ids:
                    im = read_image(ds, iid, uris[iid]).to(device).float() / 255
                    out = model([im])
                    _ = out[0]["boxes"].cpu()
                _sync(device)
            best = max(best, rate(len(ids), t()))
    return best


def _predictor_rate(det, ds, ids, device, batch_size: int, reps: int = 2, **kw) -> tuple[float, list]:
    """Images/s of Predictor.predict over ``ids`` (best of ``reps``, after a warm-up batch)."""
    from activedet.models.predict import Predictor

    pred = Predictor(det, device=device, batch_size=batch_size)
    list(pred.predict(ds, ids[:batch_size], **kw))  # warm-up
    _sync(device)
    best, out = 0.0, []
    for _ in range(reps):
        with timer() as t:
            out = list(pred.predict(ds, ids, **kw))
            _sync(device)
        best = max(best, rate(len(ids), t()))
    return best, out


def bench_inference(args, tmp: Path, ds_ids) -> list[dict]:
    ds, ids = ds_ids
    device = _device(args)
    rows = []
    for preset in args.presets:
        det, opts = _detector(preset, ds, args)
        n = args.infer_images if preset == "tiny" else args.r50_images
        sub = ids[:n]
        base = _per_image_loop(det, ds, sub, device)
        progress(f"inference: {preset} {opts or ''}: per-image loop {base:.1f} img/s ({len(sub)} images)")
        sizes = args.batch_sizes if preset == "tiny" else args.r50_batch_sizes
        for bs in sizes:
            r, _ = _predictor_rate(det, ds, sub, device, bs)
            progress(f"inference: {preset} batch {bs}: {r:.1f} img/s ({r / base:.2f}x the per-image loop)")
            rows.append(_row("inference", f"{preset} Predictor batch {bs}", r, "img/s", "per-image loop (torchvision model)",
                             base, preset=preset, batch_size=bs, images=len(sub), device=str(device), **opts))
    return rows


def _uris(ds) -> dict[str, str]:
    return dict(zip(ds.images.column("image_id").to_pylist(), ds.images.column("uri").to_pylist(), strict=True))


def _score_batched(det, ds, ids, device, bs, scorers):
    """Flip-TTA scoring the way score-unlabeled does it: Predictor batches -> scores table."""
    from activedet.models.predict import Predictor
    from activedet.stages.score_unlabeled import score_predictions

    _predictor_rate(det, ds, ids[:bs], device, bs, reps=1, flip_tta=True, embeddings=True)  # warm-up
    with timer() as t:
        p = Predictor(det, device=device, batch_size=bs)
        table = score_predictions(p.predict(ds, ids, flip_tta=True, embeddings=True), scorers,
                                  with_embedding=True, score_floor=0.05, expected_ids=ids)
        _sync(device)
    return rate(len(ids), t()), table


def _score_per_image(det, ds, ids, device, scorers):
    """Baseline: the same scoring, one image (and its flip) per forward pass."""
    from activedet.models.data import read_image
    from activedet.models.predict import Predictor
    from activedet.stages.score_unlabeled import score_predictions

    uris = _uris(ds)
    p = Predictor(det, device=device, batch_size=1)

    def gen():
        for iid in ids:
            yield from p.predict_images([read_image(ds, iid, uris[iid])], [iid], flip_tta=True, embeddings=True)

    with timer() as t:
        table = score_predictions(gen(), scorers, with_embedding=True, score_floor=0.05, expected_ids=ids)
        _sync(device)
    return rate(len(ids), t()), table


def bench_scoring(args, tmp: Path, ds_ids) -> list[dict]:
    from activedet.al.scores import build_scorers

    ds, ids = ds_ids
    device = _device(args)
    scorers = build_scorers(["entropy", "inconsistency"])
    rows = []
    bs = args.score_batch_size
    for preset in args.presets:
        det, opts = _detector(preset, ds, args)
        sub = ids[: args.infer_images if preset == "tiny" else args.r50_images]
        r, table = _score_batched(det, ds, sub, device, bs, scorers)
        b, table1 = _score_per_image(det, ds, sub, device, scorers)
        same = np.allclose(table.column("entropy").to_numpy(), table1.column("entropy").to_numpy(), atol=1e-4)
        plain, _ = _predictor_rate(det, ds, sub, device, bs)
        progress(f"scoring: {preset}: flip-TTA scoring batch {bs}: {r:.1f} img/s; per image {b:.1f} img/s; "
                 f"plain inference {plain:.1f} img/s (same entropy batched/per-image: {same})")
        rows.append(_row("scoring", f"{preset} entropy+inconsistency+embedding, flip TTA, batch {bs}", r, "img/s",
                         "same, one image at a time", b, preset=preset, batch_size=bs, images=len(sub),
                         plain_inference_img_s=plain, tta_cost=plain / r if r else None, device=str(device),
                         batched_equals_per_image=bool(same), **opts))
    return rows


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device for models and core-set")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes everywhere (a few seconds per section)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--images", type=int, default=1_000_000, help="parquet: images in the boxes table")
    p.add_argument("--boxes-per-image", type=int, default=10)
    p.add_argument("--csv-images", type=int, default=100_000, help="parquet: images in the csv baseline")
    p.add_argument("--s3-mb", type=float, default=256.0, help="s3: object size in MB")
    p.add_argument("--repeats", type=int, default=2, help="s3: repeats (best kept)")
    p.add_argument("--coreset-n", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--coreset-d", type=int, default=128)
    p.add_argument("--coreset-k", type=int, default=500)
    p.add_argument("--coreset-labeled", type=int, default=500)
    p.add_argument("--full-matrix-gb", type=float, default=0.5, help="core-set baseline: largest distance matrix to build")
    p.add_argument("--presets", nargs="+", default=["tiny", "resnet50_fpn"])
    p.add_argument("--infer-images", type=int, default=256, help="inference/scoring images (tiny)")
    p.add_argument("--r50-images", type=int, default=8, help="inference/scoring images (resnet50_fpn)")
    p.add_argument("--r50-min-size", type=int, default=None, help="resnet50_fpn short side (default 256 on CPU, 800 on CUDA)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="tiny batch sizes (default 1 4 8; CUDA 1 8 32)")
    p.add_argument("--r50-batch-sizes", type=int, nargs="+", default=None, help="resnet50_fpn batch sizes (default 1 4; CUDA 1 8)")
    p.add_argument("--score-batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    p.add_argument("--name", default=None, help="results file stem (default throughput[_cuda][_smoke])")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of the sections not run (--only) from the existing results file")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if args.r50_min_size is None:
        args.r50_min_size = 800 if cuda else 256
    if args.batch_sizes is None:
        args.batch_sizes = [1, 8, 32] if cuda else [1, 4, 8]
    if args.r50_batch_sizes is None:
        args.r50_batch_sizes = [1, 8] if cuda else [1, 4]
    if cuda and args.r50_images == 8:
        args.r50_images = 64
    if args.smoke:
        args.images, args.csv_images, args.s3_mb, args.repeats = 20_000, 5_000, 8.0, 1
        args.coreset_n, args.coreset_k, args.coreset_labeled, args.full_matrix_gb = [2_000, 5_000], 50, 50, 0.01
        args.infer_images, args.r50_images, args.r50_min_size = 8, 2, 128
        args.batch_sizes, args.r50_batch_sizes, args.score_batch_size = [1, 4], [2], 4
    if args.name is None:
        args.name = "throughput" + ("_cuda" if cuda else "") + ("_smoke" if args.smoke else "")
    return args


def _merge_earlier(args, payload: dict) -> list[dict]:
    """The rows of this run plus the earlier results file's rows of every section not run now; the
    payload records which sections came from which earlier command."""
    path = Path(args.out) / f"{args.name}.json"
    if not path.exists():
        return payload["rows"]
    earlier = json.loads(path.read_text())
    kept = [r for r in earlier["rows"] if r["section"] not in args.only]
    payload["earlier"] = {"command": earlier.get("command"), "sections": sorted({r["section"] for r in kept}),
                          "machine": earlier.get("machine"), "loadavg_1m_at_start": earlier.get("loadavg_1m_at_start")}
    payload["rows"] = sorted(kept + payload["rows"], key=lambda r: SECTIONS.index(r["section"]))
    return payload["rows"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    load0 = round(os.getloadavg()[0], 2)  # the machine may be shared: say how busy it was
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="activedet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ.setdefault("ACTIVEDET_CACHE_DIR", str(tmp / "cache"))
        ds_ids = None
        for section in args.only:
            progress(f"== {section}")
            with timer() as t:
                if section == "parquet":
                    rows += bench_parquet(args, tmp)
                elif section == "s3":
                    rows += bench_s3(args, tmp)
                elif section == "coreset":
                    rows += bench_coreset(args)
                else:
                    ds_ids = ds_ids or _dataset(args, tmp)
                    rows += (bench_inference if section == "inference" else bench_scoring)(args, tmp, ds_ids)
            progress(f"== {section} done in {t():.1f} s")
    payload = figures_payload("throughput", args, started, load0, rows)
    if args.merge:
        rows = _merge_earlier(args, payload)
    m = payload["machine"]
    write_figures(args.name, payload, rows, args.out,
                  f"Command: `{payload['command']}`  \nMachine: {m.get('cpu_model')} ({m.get('cpus')} CPUs, {m.get('mem_gb')} GB), "
                  f"torch {m.get('torch')} ({m.get('torch_threads')} threads), CUDA: {m.get('cuda')}; load average at start "
                  f"{load0}; wall time {payload['seconds'] / 60:.1f} min. Ratio = ours / baseline (core-set: baseline / ours).")
    return payload


if __name__ == "__main__":
    main()
