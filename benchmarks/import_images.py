"""Import speed with every image header checked (issue 11), beside serial baselines from the same run.

``data import-coco`` opens every image's header (Pillow, no pixel decoding) and checks its end
marker, in parallel threads (:func:`activedet.data.checks.probe_images`). Sections:

* ``local`` -- ``--images`` (default 100,000) small JPEGs of 4 sizes on the local disk, one COCO
  JSON with a box per image: probe images/s with ``--workers`` threads vs one thread; the whole
  ``import_coco`` (JSON checks, probes, tables, commit) with threads vs one thread; and, on
  ``--decode-images`` of them, header probes vs decoding every image (what checking by loading
  the pixels would cost).
* ``s3`` -- ``--s3-images`` objects on a loopback S3 server (moto's ThreadedMotoServer in its own
  process; some larger than the 64 KiB header read, so ranged GETs are exercised): probes with
  threads vs one thread, and the whole import.

    .venv/bin/python benchmarks/import_images.py            # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/import_images.py --smoke    # seconds

Writes benchmarks/results/import_images.json, .csv and .md (``--out`` to change). Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, figures_payload, progress, timer, write_figures  # noqa: E402
from throughput import _row, _start_moto  # noqa: E402

SIZES = ((64, 48), (320, 240), (640, 480), (1280, 720))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=("local", "s3"), default=["local", "s3"])
    p.add_argument("--images", type=int, default=100_000, help="local images (default 100,000)")
    p.add_argument("--s3-images", type=int, default=2_000, help="images on the loopback S3 server")
    p.add_argument("--decode-images", type=int, default=2_000, help="images decoded for the full-decode baseline")
    p.add_argument("--workers", type=int, default=None, help="probe threads (default: activedet's default)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="import_images")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.s3_images, args.decode_images = 600, 100, 100
    if args.workers is None:
        from activedet.data.checks import DEFAULT_WORKERS

        args.workers = DEFAULT_WORKERS
    return args


def templates(large: bool) -> list[tuple[tuple[int, int], bytes]]:
    """One JPEG per size (smooth gradients: small files). ``large`` adds a noisy 800x600 one (>64 KiB)."""
    from PIL import Image

    out = []
    for w, h in SIZES + (((800, 600),) if large else ()):
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 128 // (w + h)], -1).astype(np.uint8)
        if (w, h) == (800, 600):
            rgb = np.random.default_rng(0).integers(0, 256, rgb.shape, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=60)
        out.append(((w, h), buf.getvalue()))
    return out


def coco_json(n: int, tpl: list) -> dict:
    images, anns = [], []
    for i in range(n):
        (w, h), _ = tpl[i % len(tpl)]
        images.append({"id": i + 1, "file_name": f"d{i % 100:02d}/img{i:07d}.jpg", "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 3, w / 4, h / 4], "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def _timed(fn, *args, **kwargs) -> float:
    with timer() as t:
        fn(*args, **kwargs)
    return t()


def _decode_all(paths: list[str]) -> None:
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            im.load()


def bench_local(args, tmp: Path) -> list[dict]:
    from activedet.data.checks import probe_images
    from activedet.data.coco import import_coco

    tpl = templates(large=False)
    root = tmp / "images"
    data = coco_json(args.images, tpl)
    with timer() as t:
        for d in range(100):
            (root / f"d{d:02d}").mkdir(parents=True)
        for i, im in enumerate(data["images"]):
            (root / im["file_name"]).write_bytes(tpl[i % len(tpl)][1])
    progress(f"local: wrote {args.images} images in {t():.1f} s")
    ann = tmp / "ann.json"
    ann.write_text(json.dumps(data))
    uris = [str(root / im["file_name"]) for im in data["images"]]
    n = len(uris)
    params = {"images": n, "workers": args.workers, "sizes": [list(s) for s, _ in tpl], "mean_kb": round(
        sum(len(b) for _, b in tpl) / len(tpl) / 1024, 1)}
    probe_images(str(root), uris[:1000], workers=args.workers)  # imports, thread start-up: untimed
    serial = _timed(probe_images, str(root), uris, workers=1)
    threaded = _timed(probe_images, str(root), uris, workers=args.workers)
    progress(f"local: probes {n / threaded:.0f} img/s with {args.workers} threads, {n / serial:.0f} img/s serial")
    warm = tmp / "warm.json"  # first-call costs (Arrow, Parquet writer): untimed
    warm.write_text(json.dumps({**data, "images": data["images"][:200], "annotations": data["annotations"][:200]}))
    import_coco(str(warm), images=str(root), out_uri=str(tmp / "ds-warm"), workers=args.workers)
    imp_threads = _timed(import_coco, str(ann), images=str(root), out_uri=str(tmp / "ds-threads"), workers=args.workers)
    imp_serial = _timed(import_coco, str(ann), images=str(root), out_uri=str(tmp / "ds-serial"), workers=1)
    progress(f"local: import_coco {n / imp_threads:.0f} img/s with threads, {n / imp_serial:.0f} img/s serial")
    k = min(args.decode_images, n)
    header_k = _timed(probe_images, str(root), uris[:k], workers=1)
    decode_k = _timed(_decode_all, uris[:k])
    return [
        _row("local", f"probe headers ({args.workers} threads)", n / threaded, "img/s", "probe headers, 1 thread", n / serial, **params),
        _row("local", f"import_coco ({args.workers} threads)", n / imp_threads, "img/s", "import_coco, 1 thread", n / imp_serial, **params),
        _row("local", "probe headers, 1 thread", k / header_k, "img/s", "decode every image (PIL load), 1 thread", k / decode_k,
             **{**params, "images": k}),
    ]


@contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    for k in (k for k, v in values.items() if v is None):
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_s3(args, tmp: Path) -> list[dict]:
    import boto3

    from activedet import store
    from activedet.data.checks import HEAD_BYTES, probe_images
    from activedet.data.coco import import_coco

    proc, endpoint = _start_moto()
    try:
        with _env(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                  AWS_DEFAULT_REGION="us-east-1", AWS_PROFILE=None):
            store._clients.clear()
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket=bucket)
            tpl = templates(large=True)
            data = coco_json(args.s3_images, tpl)

            def put(i: int) -> None:
                client.put_object(Bucket=bucket, Key=f"imgs/{data['images'][i]['file_name']}", Body=tpl[i % len(tpl)][1])

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(put, range(args.s3_images)))
            root = f"s3://{bucket}/imgs"
            uris = [f"{root}/{im['file_name']}" for im in data["images"]]
            ann = tmp / "ann-s3.json"
            ann.write_text(json.dumps(data))
            n = len(uris)
            probe_images(root, uris[:50], workers=args.workers)  # client and connections: untimed
            serial = _timed(probe_images, root, uris, workers=1)
            threaded = _timed(probe_images, root, uris, workers=args.workers)
            imp = _timed(import_coco, str(ann), images=root, out_uri=f"s3://{bucket}/ds", workers=args.workers)
            imp_serial = _timed(import_coco, str(ann), images=root, out_uri=f"s3://{bucket}/ds1", workers=1)
            progress(f"s3: probes {n / threaded:.0f} img/s with threads, {n / serial:.0f} img/s serial")
            big = sum(len(b) > HEAD_BYTES for _, b in tpl) / len(tpl)
    finally:
        proc.kill()
        proc.wait()
        store._clients.clear()
    params = {"images": n, "workers": args.workers, "share_over_64KiB": round(big, 2),
              "server": "moto ThreadedMotoServer, 127.0.0.1, own process"}
    return [
        _row("s3", f"probe headers ({args.workers} threads)", n / threaded, "img/s", "probe headers, 1 thread", n / serial, **params),
        _row("s3", f"import_coco ({args.workers} threads)", n / imp, "img/s", "import_coco, 1 thread", n / imp_serial, **params),
    ]


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.getLogger("activedet").setLevel(logging.WARNING)
    started, load0 = time.time(), round(os.getloadavg()[0], 2)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="activedet-import-bench-") as tmpdir:
        for section in args.only:
            progress(f"== {section}")
            rows += (bench_local if section == "local" else bench_s3)(args, Path(tmpdir))
    payload = figures_payload("import_images", args, started, load0, rows)
    m = payload["machine"]
    write_figures(args.name, payload, rows, args.out,
                  f"Command: `{payload['command']}`  \nMachine: {m.get('cpu_model')} ({m.get('cpus')} CPUs, {m.get('mem_gb')} GB); "
                  f"load average at start {load0}; wall time {payload['seconds'] / 60:.1f} min. Ratio = ours / baseline. "
                  "Local files were in the page cache (just written); where each probe waits on I/O (the s3 rows, network file systems) threads help most.")
    return payload


if __name__ == "__main__":
    main()
