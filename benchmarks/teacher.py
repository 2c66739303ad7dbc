"""Benchmark: train the ``tiny`` teacher on SynthDrive, evaluate it, report AP and speed.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/teacher.py --out /tmp/bench-teacher [--iterations 300] [--sequences 40]

Steps (each printed with the equivalent ``activedet`` command): render SynthDrive, train-teacher
on all train images, evaluate on val. Prints val AP50 / AP, train it/s and inference images/s, and
writes ``results.json`` under ``--out``. Figures depend on the machine and its load: compare runs
on the same machine (and one torch thread is faster than two on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path


def _cmd(parts: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="work folder (dataset, checkpoint, evaluation)")
    p.add_argument("--sequences", type=int, default=40)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.04)
    p.add_argument("--warmup-iters", type=int, default=50)
    p.add_argument("--preset-options", default="{}", help="JSON preset options for tiny")
    p.add_argument("--num-workers", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from activedet.data.synth import generate_synthdrive
    from activedet.stages import evaluate, train_teacher

    out = Path(args.out)
    ds, ckpt, ev = str(out / "synthdrive"), str(out / "teacher"), str(out / "eval")
    import os

    import torch

    results: dict = {
        "settings": vars(args),
        "command": _cmd(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", ""), sys.executable, *sys.argv]),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0],
    }

    t0 = time.monotonic()
    summary = generate_synthdrive(ds, sequences=args.sequences, frames=args.frames, seed=args.seed)
    results["data"] = {
        "command": _cmd(["activedet", "data", "synth", "--out", ds, "--sequences", str(args.sequences),
                         "--frames", str(args.frames), "--seed", str(args.seed)]),
        "images_per_split": summary["images_per_split"],
        "seconds": round(time.monotonic() - t0, 1),
    }

    options = json.loads(args.preset_options)
    tcfg = train_teacher.Config(
        dataset_uri=ds, output_uri=ckpt, preset="tiny", preset_options=options, iterations=args.iterations,
        batch_size=args.batch_size, lr=args.lr, warmup_iters=args.warmup_iters, seed=args.seed,
        device="cpu", num_workers=args.num_workers, checkpoint_every=0,
    )
    t0 = time.monotonic()
    tres = train_teacher.run(tcfg)
    train_s = time.monotonic() - t0
    results["train"] = {
        "command": _cmd(["activedet", "stage", "train-teacher", "--dataset-uri", ds, "--output-uri", ckpt,
                         "--preset", "tiny", "--preset-options", json.dumps(options), "--iterations", str(args.iterations),
                         "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-iters", str(args.warmup_iters),
                         "--device", "cpu", "--checkpoint-every", "0"]),
        "seconds": round(train_s, 1),
        "it_per_s": round(tres.it_per_s, 3),
        "s_per_it": round(1 / tres.it_per_s, 3) if tres.it_per_s else None,
        "final_loss": round(tres.final_loss, 4),
    }

    ecfg = evaluate.Config(dataset_uri=ds, split="val", checkpoint_uri=ckpt, output_uri=ev, device="cpu", rare_k=2)
    t0 = time.monotonic()
    eres = evaluate.run(ecfg)
    results["evaluate"] = {
        "command": _cmd(["activedet", "stage", "evaluate", "--dataset-uri", ds, "--checkpoint-uri", ckpt,
                         "--output-uri", ev, "--device", "cpu", "--rare-k", "2"]),
        "seconds": round(time.monotonic() - t0, 1),
        "AP50": eres["AP50"],
        "AP": eres["AP"],
        "AP_rare2": eres.get("AP_rare"),
        "images_per_s": round(eres["images_per_s"], 2),
    }
    results["load_average_at_end"] = os.getloadavg()[0]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    sys.stdout.write(
        f"\ntiny on SynthDrive: val AP50 {eres['AP50']:.3f}  AP {eres['AP']:.3f}  "
        f"train {tres.it_per_s:.2f} it/s ({train_s:.0f} s for {args.iterations} it)  "
        f"inference {eres['images_per_s']:.1f} images/s\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
