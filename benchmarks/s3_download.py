"""S3 download MB/s per object size: store.download beside a single get, ranged gets and boto3's
transfer manager, against a loopback S3 server (moto's, in its own process).

For each size (default 1, 64 and 512 MB, incompressible) every method downloads the same object;
methods are interleaved within each repeat (the machine may be shared) and the best of
``--repeats`` (five times as many up to 8 MB) is kept. Methods:

* ``store.download``               -- the product: one GET read from the socket into a reused buffer, to a file
* ``single get .read()``           -- ``get_object()["Body"].read()`` into memory (the baseline)
* ``single get -> file``           -- one GET streamed into a file
* ``transfer manager 16 MiB x 8``  -- ``download_file`` with store's former config (ranged parts)
* ``transfer manager 64 MiB x 4``  -- the same with larger parts, fewer threads
* ``transfer manager, one GET``    -- its threshold above the size: one GET, writes on its IO thread
* ``ranged 64 MiB x 4 (pwrite)``   -- our own parallel ranged GETs written in place

Loopback moto is not AWS: it is one Python process, and it answers each ranged GET by reading
the object, so many parts cost it more than one stream; a real S3 endpoint caps the throughput
of each connection instead, which is what ranged parallel parts win against (see
``ACTIVEDET_S3_RANGED_MIN_MB`` in docs/data.md). Not a test: nothing asserted.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/s3_download.py            # 1, 64, 512 MB
    .venv/bin/python benchmarks/s3_download.py --smoke                      # 1 and 4 MB, seconds
    .venv/bin/python benchmarks/s3_download.py --endpoint '' --bucket B --out /tmp/s3   # your S3 (AWS: '')
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, figures_payload, progress, rate, timer, write_figures  # noqa: E402
from throughput import _start_moto  # noqa: E402

MB = 1 << 20


def _single_read(client, bucket, key, dst):
    return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def _single_file(client, bucket, key, dst):
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with open(dst, "wb") as fh:
        shutil.copyfileobj(body, fh, 8 * MB)
    return dst.stat().st_size


def _transfer_manager(chunk_mb: int, threads: int, threshold_mb: int | None = None):
    def run(client, bucket, key, dst):
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(multipart_threshold=(threshold_mb or chunk_mb) * MB, multipart_chunksize=chunk_mb * MB,
                             max_concurrency=threads)
        client.download_file(bucket, key, str(dst), Config=cfg)
        return dst.stat().st_size

    return run


def _ranged_pwrite(chunk_mb: int, threads: int):
    def run(client, bucket, key, dst):
        size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)

            def part(start: int) -> None:
                end = min(start + chunk_mb * MB, size) - 1
                body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
                for chunk in body.iter_chunks(MB):
                    os.pwrite(fd, chunk, start)
                    start += len(chunk)

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(part, range(0, size, chunk_mb * MB)))
        finally:
            os.close(fd)
        return size

    return run


def _store_download(client, bucket, key, dst):
    from activedet import store

    store.download(f"s3://{bucket}/{key}", dst)
    return dst.stat().st_size


METHODS = {
    "store.download": _store_download,
    "single get .read()": _single_read,
    "single get -> file": _single_file,
    "transfer manager 16 MiB x 8": _transfer_manager(16, 8),
    "transfer manager 64 MiB x 4": _transfer_manager(64, 4),
    "transfer manager, one GET": _transfer_manager(64, 4, threshold_mb=1 << 20),
    "ranged 64 MiB x 4 (pwrite)": _ranged_pwrite(64, 4),
}
BASELINE = "single get .read()"
PREFIX = "activedet-s3-bench/"  # every object the benchmark writes (deleted at the end)


def bench(args, tmp: Path) -> list[dict]:

    from activedet import store

    proc, env = None, {}
    if args.endpoint is None:  # loopback moto; else the endpoint and credentials of the environment
        proc, endpoint = _start_moto()
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}
    elif args.endpoint:
        env = {"AWS_ENDPOINT_URL": args.endpoint}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE"]}
    os.environ.update(env)
    if proc is not None:
        os.environ.pop("AWS_PROFILE", None)
    store._clients.clear()
    rows = []
    try:
        client = store.s3_client()  # the product's client (timeouts, pool) for every method alike
        bucket = args.bucket or f"bench-{uuid.uuid4().hex[:8]}"
        if proc is not None:
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=f"{PREFIX}warmup", Body=b"x")
        client.get_object(Bucket=bucket, Key=f"{PREFIX}warmup")["Body"].read()  # first connection, untimed
        for mb in args.sizes:
            key = f"{PREFIX}object-{mb}MB.bin"
            size = int(mb * MB)
            client.put_object(Bucket=bucket, Key=key,
                              Body=np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
            best = dict.fromkeys(METHODS, float("inf"))
            repeats = args.repeats * (5 if mb <= 8 else 1)  # small objects: noisy, and cheap to repeat
            for rep in range(repeats):
                for name, method in METHODS.items():
                    dst = tmp / "download.bin"
                    with timer() as t:
                        got = method(client, bucket, key, dst)
                    best[name] = min(best[name], t())
                    assert got == size, (name, got, size)
                    dst.unlink(missing_ok=True)
                progress(f"s3 {mb:g} MB: repeat {rep + 1}/{repeats}: " +
                         ", ".join(f"{n} {rate(mb, s):.0f}" for n, s in best.items()) + " MB/s (best so far)")
            client.delete_object(Bucket=bucket, Key=key)
            base = rate(mb, best[BASELINE])
            for name, secs in best.items():
                if name == BASELINE:
                    continue
                value = rate(mb, secs)
                rows.append({"section": "s3 download", "name": f"{name}, {mb:g} MB", "value": round(value, 1), "unit": "MB/s",
                             "baseline": f"{BASELINE}, {mb:g} MB", "baseline_value": round(base, 1),
                             "ratio": round(value / base, 2), "object_mb": mb, "method": name, "repeats": repeats})
        client.delete_object(Bucket=bucket, Key=f"{PREFIX}warmup")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        store._clients.clear()
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    """MB/s per method, grouped by object size, the single get as a dashed line per size."""
    from activedet.plots import save_png, subplots

    sizes = sorted({r["object_mb"] for r in rows})
    methods = [m for m in METHODS if m != BASELINE]
    fig, ax = subplots(figsize=(9, 4))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        vals = [next((r["value"] for r in rows if r["object_mb"] == mb and r["method"] == method), 0) for mb in sizes]
        ax.bar([i + j * width for i in range(len(sizes))], vals, width, label=method)
    for i, mb in enumerate(sizes):
        base = next(r["baseline_value"] for r in rows if r["object_mb"] == mb)
        ax.hlines(base, i - width / 2, i + 0.8 - width / 2, colors="k", linestyles="--",
                  label=BASELINE if i == 0 else None)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], [f"{mb:g} MB" for mb in sizes])
    ax.set_ylabel("MB/s")
    ax.set_title("S3 download (loopback server)")
    ax.legend(fontsize=7)
    return save_png(fig, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1, 64, 512], help="object sizes in MB")
    p.add_argument("--repeats", type=int, default=3, help="repeats per size (best kept)")
    p.add_argument("--smoke", action="store_true", help="1 and 4 MB, one repeat")
    p.add_argument("--endpoint", default=None,
                   help="measure against this S3 endpoint ('' = AWS) with the environment's credentials, not loopback moto")
    p.add_argument("--bucket", default=None, help="with --endpoint: an existing bucket to write test objects into")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    p.add_argument("--name", default=None, help="results file stem (default s3_download[_smoke])")
    args = p.parse_args(argv)
    if args.endpoint is not None and not args.bucket:
        p.error("--endpoint needs --bucket (an existing bucket; objects go under activedet-s3-bench/)")
    if args.smoke:
        args.sizes, args.repeats = [1, 4], 1
    if args.name is None:
        args.name = "s3_download" + ("_smoke" if args.smoke else "")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started, load0 = time.time(), round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="activedet-s3-") as tmp:
        rows = bench(args, Path(tmp))
    payload = figures_payload("s3_download", args, started, load0, rows)
    payload["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    m = payload["machine"]
    write_figures(args.name, payload, rows, args.out,
                  f"Command: `{payload['command']}`  \nMachine: {m.get('cpu_model')} ({m.get('cpus')} CPUs), "
                  + ("loopback moto server in its own process" if args.endpoint is None else f"endpoint {args.endpoint or 'AWS'}")
                  + f"; load average {load0} at start, {payload['loadavg_1m_at_end']} at end; "
                  f"best of {args.repeats} interleaved repeats (5x that up to 8 MB); wall time {payload['seconds'] / 60:.1f} min. "
                  f"Ratio = method / {BASELINE} of the same object.")
    if rows:
        plot(rows, args.out / f"{args.name}.png")
    return payload


if __name__ == "__main__":
    main()
