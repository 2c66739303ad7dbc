"""What safe outputs cost: staged commit and manifest verification beside plain store calls.

Cases, each measured in this run beside its baseline:

* ``commit``       -- OutputWriter (ownership check, staging, manifest, atomic swap) of a boxes
  table vs one plain ``store.write_table`` of the same table.
* ``read-table``   -- ``store.read_output_table`` (sizes + sha256 checked) vs ``store.read_table``.
* ``checkpoint``   -- ``read_state`` of a committed checkpoint of ``--ckpt-mb`` MB of tensors
  (sha256 checked) vs safetensors' ``load_file`` on the same file.
* ``dataset-open`` -- ``require_committed`` of a dataset prefix holding ``--images`` image files
  (every file's size checked; images are not hashed) vs reading the manifest alone.

    .venv/bin/python benchmarks/verify_cost.py            # ~1 min on 2 CPU cores
    .venv/bin/python benchmarks/verify_cost.py --smoke    # seconds

Writes benchmarks/results/verify_cost.{json,csv,md}. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from activedet import store  # noqa: E402
from common import RESULTS_DIR, format_table, machine, progress, timer, write_results  # noqa: E402


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        with timer() as t:
            fn()
        best = min(best, t())
    return best


def _boxes(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, (rows, 4)).astype(np.float32)
    return pa.table({"image_id": [f"img-{i // 8:07d}" for i in range(rows)], "x1": xy[:, 0], "y1": xy[:, 1],
                     "x2": xy[:, 2], "y2": xy[:, 3], "category_id": rng.integers(1, 6, rows).astype(np.int32)})


def _row(case: str, size: str, ours: float, base: float, what: str) -> dict:
    return {"case": case, "size": size, "activedet_s": round(ours, 4), "baseline_s": round(base, 4),
            "overhead_x": round(ours / max(base, 1e-9), 2), "baseline": what}


def run(args: argparse.Namespace, root: Path) -> list[dict]:
    rows = []
    table = _boxes(args.rows)
    mb = table.nbytes / 1e6
    counter = iter(range(10**6))
    progress(f"commit: {args.rows} rows ({mb:.0f} MB Arrow)")

    def commit():
        with store.OutputWriter(str(root / f"out-{next(counter)}")) as out:
            out.write_table("boxes.parquet", table)

    ours = _best_of(commit, args.repeats)
    base = _best_of(lambda: store.write_table(table, str(root / f"plain-{next(counter)}.parquet")), args.repeats)
    rows.append(_row("commit", f"{mb:.0f} MB", ours, base, "store.write_table"))

    progress("read-table")
    committed = str(root / "committed")
    with store.OutputWriter(committed) as out:
        out.write_table("boxes.parquet", table)
    ours = _best_of(lambda: store.read_output_table(committed, "boxes.parquet"), args.repeats)
    base = _best_of(lambda: store.read_table(store.join(committed, "boxes.parquet")), args.repeats)
    rows.append(_row("read-table", f"{mb:.0f} MB", ours, base, "store.read_table (no checks)"))

    progress(f"checkpoint: {args.ckpt_mb} MB")
    import torch
    from safetensors.torch import load_file, save_file

    from activedet.models.checkpoint import read_state

    ckpt = root / "ckpt"
    with store.OutputWriter(str(ckpt)) as out:
        path = out.local_file("model.safetensors")
        save_file({"w": torch.zeros(int(args.ckpt_mb * 1e6 / 4))}, str(path))
        out.add_file("model.safetensors", path)
        out.write_json("meta.json", {"preset": "tiny", "category_ids": [1], "class_names": ["x"]})
    ours = _best_of(lambda: read_state(str(ckpt)), args.repeats)
    base = _best_of(lambda: load_file(str(ckpt / "model.safetensors")), args.repeats)
    rows.append(_row("checkpoint", f"{args.ckpt_mb} MB", ours, base, "safetensors load_file"))

    progress(f"dataset-open: {args.images} image files")
    ds = str(root / "dataset")
    with store.OutputWriter(ds) as out:
        for i in range(args.images):
            out.write_bytes(f"images/{i:07d}.png", b"\x89PNG" + bytes(2000))
    ours = _best_of(lambda: store.require_committed(ds), args.repeats)
    base = _best_of(lambda: store.read_json(store.join(ds, store.MANIFEST)), args.repeats)
    rows.append(_row("dataset-open", f"{args.images} files", ours, base, "read the manifest only"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000, help="boxes table rows")
    p.add_argument("--ckpt-mb", type=int, default=160, help="checkpoint size (R50-FPN is ~160 MB)")
    p.add_argument("--images", type=int, default=20_000, help="image files in the dataset prefix")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.ckpt_mb, args.images, args.repeats = 10_000, 2, 200, 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args, Path(tmp))
    table = format_table(rows, ["case", "size", "activedet_s", "baseline_s", "overhead_x", "baseline"])
    print(table)
    write_results("verify_cost", {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                  rows, args.out)
    (args.out / "verify_cost.md").write_text(
        "# Cost of safe outputs (benchmarks/verify_cost.py)\n\n" + table + "\n\n"
        "Best of the repeats, this machine, one run. safetensors' `load_file` maps the file and reads\n"
        "pages lazily, so the checkpoint baseline is near zero; the absolute figure (the sha256 of the\n"
        "whole file) is the cost that matters. `dataset-open` stats every image file once per open;\n"
        "images are never hashed.\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
