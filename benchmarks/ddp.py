"""Data-parallel training speed: 2 DDP ranks vs 1 process, images/s of train-teacher, in one run.

Every case is the real stage (``activedet stage train-teacher``) in its own process, at the same
global batch (``--batch`` images per optimizer step), tiny preset on SynthDrive images:

* ``1 process, 1 thread``   -- the single-device baseline on one core
* ``1 process, 2 threads``  -- the same with torch's intra-op threads on both cores
* ``2 ranks x 1 thread``    -- ``devices: 2``: torch.distributed elastic launch, gloo, DDP,
  ``batch/2`` images per rank

``images/s`` = global batch x optimizer steps / training-loop seconds (the stage's own ``it_per_s``;
process start, rendezvous and model build are in ``wall s``). Cases are interleaved within each
repeat and the best repeat is kept, because the machine's 2 cores are shared: the 1-minute load
average is recorded before every case. Not a test: nothing asserted. ``--device cuda`` measures
NCCL ranks on GPUs instead (one GPU per rank).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ddp.py                 # 64x128, batch 4, 40 steps, 2 repeats
    .venv/bin/python benchmarks/ddp.py --smoke                           # seconds
    .venv/bin/python benchmarks/ddp.py --render                          # PNG + tables from the committed JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, format_table, machine, progress, write_results  # noqa: E402

NAME = "ddp"
COLUMNS = ["case", "devices", "threads", "per_rank_batch", "images_per_s", "images_per_s_all", "vs_1_thread", "wall_s", "loadavg_1m"]
HEADERS = ["case", "ranks", "threads/rank", "batch/rank", "images/s (best)", "images/s (each repeat)", "x 1-thread", "wall s", "load 1m"]


def cases(batch: int, device: str) -> list[dict]:
    if device == "cuda":
        return [{"case": "1 GPU", "devices": 1, "threads": 4, "per_rank_batch": batch},
                {"case": "2 GPUs (NCCL DDP)", "devices": 2, "threads": 4, "per_rank_batch": batch // 2}]
    return [{"case": "1 process, 1 thread", "devices": 1, "threads": 1, "per_rank_batch": batch},
            {"case": "1 process, 2 threads", "devices": 1, "threads": 2, "per_rank_batch": batch},
            {"case": "2 ranks x 1 thread (gloo DDP)", "devices": 2, "threads": 1, "per_rank_batch": batch // 2}]


def run_case(case: dict, dataset: str, out: str, args) -> dict:
    """One train-teacher run in a fresh process; returns its training-loop rate and wall time."""
    lr = 0.02 / case["devices"]  # the stage multiplies by the ranks: every case trains at lr 0.02, global batch args.batch
    cmd = [sys.executable, "-m", "activedet.cli.main", "stage", "train-teacher", "--dataset-uri", dataset, "--output-uri", out,
           "--iterations", str(args.iterations), "--batch-size", str(case["per_rank_batch"]), "--lr", str(lr),
           "--warmup-iters", "2", "--checkpoint-every", "0", "--device", args.device, "--devices", str(case["devices"]), "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(case["threads"]), "MKL_NUM_THREADS": str(case["threads"])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{case['case']} failed:\n{proc.stderr[-3000:]}")
    train = json.loads((Path(out) / "train.json").read_text())
    return {"images_per_s": train["it_per_s"] * args.batch, "wall_s": wall, "final_loss": train["final_loss"]}


def measure(args) -> dict:
    from activedet.data.synth import generate_synthdrive

    started = time.time()
    rows = [dict(c, images_per_s_all=[], wall_all=[], load_all=[], final_loss_all=[]) for c in cases(args.batch, args.device)]
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        dataset = str(Path(tmp) / "ds")
        generate_synthdrive(dataset, sequences=args.sequences, frames=4, seed=0, height=args.height, width=args.width)
        for rep in range(args.repeats):
            for i, row in enumerate(rows):
                load = os.getloadavg()[0]
                got = run_case(row, dataset, str(Path(tmp) / f"out-{rep}-{i}"), args)
                row["images_per_s_all"].append(round(got["images_per_s"], 2))
                row["wall_all"].append(round(got["wall_s"], 1))
                row["load_all"].append(round(load, 2))
                row["final_loss_all"].append(round(got["final_loss"], 4))
                progress(f"repeat {rep + 1}/{args.repeats} {row['case']}: {got['images_per_s']:.1f} img/s, wall {got['wall_s']:.1f} s, load {load:.2f}")
    base = max(rows[0]["images_per_s_all"])
    for row in rows:
        best = max(row["images_per_s_all"])
        k = row["images_per_s_all"].index(best)
        row.update(images_per_s=best, vs_1_thread=round(best / base, 2), wall_s=row["wall_all"][k], loadavg_1m=row["load_all"][k])
    return {"benchmark": NAME, "command": " ".join(["benchmarks/ddp.py", *sys.argv[1:]]), "machine": machine(),
            "seconds": round(time.time() - started, 1), "settings": vars(args), "rows": rows,
            "note": "images/s = global batch x steps / training-loop seconds; best of the repeats; the 2 cores are shared "
                    "with other users (load average before each case in load_all)"}


def render(payload: dict, out_dir: Path) -> str:
    """Markdown table and PNG from a payload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    table_rows = [{**r, "images_per_s_all": " / ".join(f"{v:.1f}" for v in r["images_per_s_all"])} for r in rows]
    table = format_table(table_rows, COLUMNS, HEADERS)
    s = payload["settings"]
    header = (f"# DDP training speed ({s['device']})\n\n`{payload['command']}` -- train-teacher, tiny preset, "
              f"{s['height']}x{s['width']} SynthDrive images, global batch {s['batch']}, {s['iterations']} steps, "
              f"best of {s['repeats']} interleaved repeats; {payload['machine'].get('cpus', '?')} CPU cores shared "
              "with other users (1-minute load average before each case).")
    (out_dir / f"{NAME}.md").write_text(f"{header}\n\n{table}\n")
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["case"] for r in rows]
    ax.barh(names, [r["images_per_s"] for r in rows], color=["#999999", "#6a9fd4", "#d4876a"][: len(rows)])
    for y, r in enumerate(rows):
        ax.plot(r["images_per_s_all"], [y] * len(r["images_per_s_all"]), "k|", markersize=12)
        ax.text(r["images_per_s"], y, f"  {r['images_per_s']:.1f} ({r['vs_1_thread']:.2f}x)", va="center")
    ax.set_xlabel("training images/s (bars: best repeat; ticks: each repeat)")
    ax.set_title(f"train-teacher at global batch {s['batch']}: DDP ranks vs one process")
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(r["images_per_s_all"]) for r in rows) * 1.35)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=120)
    plt.close(fig)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--batch", type=int, default=4, help="global batch (images per optimizer step)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--sequences", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--smoke", action="store_true", help="4 steps, 1 repeat, not written to results/")
    p.add_argument("--render", action="store_true", help="redraw the PNG and table from results/ddp.json")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads((args.out / f"{NAME}.json").read_text()), args.out))
        return 0
    if args.smoke:
        args.iterations, args.repeats, args.sequences = 4, 1, 3
    if args.batch % 2:
        p.error("--batch must be even (2 ranks split it)")
    payload = measure(args)
    payload["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in payload["settings"].items()}
    out = args.out if not args.smoke else Path(tempfile.mkdtemp(prefix="ddp-smoke-"))
    out.mkdir(parents=True, exist_ok=True)
    csv_rows = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in payload["rows"]]
    jpath, cpath = write_results(NAME, payload, csv_rows, out)
    print(render(payload, out))
    print(f"-> {jpath}, {cpath}, {out / (NAME + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
