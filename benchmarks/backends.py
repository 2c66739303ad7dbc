"""Detector backends side by side: torchvision R50-FPN vs detectron2 R50-FPN, same data, iterations, seeds.

``resnet50_fpn`` (torchvision backend) and ``d2_faster_rcnn_R_50_FPN`` (detectron2's model-zoo
config) from scratch (random init, trainable BatchNorm, nothing frozen: both presets' from-scratch
defaults) at the same small input size on CPU. For each seed both train the same number of
iterations with the same lr, batch and augmentation through the real train-teacher stage, then the
evaluate stage gives COCO AP on the val split. The train step time is measured round-robin under
the same load (after warm-up steps, the median of interleaved single steps), like
benchmarks/teacher.py does. ``--device cuda`` runs the same on a GPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/backends.py --work /tmp/bench-backends       # a few minutes on CPU
    .venv/bin/python benchmarks/backends.py --work /tmp/bench-backends --render                # tables from the JSON
    .venv/bin/python benchmarks/backends.py --work /tmp/b --iterations 2 --seeds 0 --out /tmp/b/res   # smoke

Differences the comparison keeps (each backend's own defaults): torchvision's box head trains with
activedet's dropout 0.1, detectron2's trains without (its MC-dropout layer is on only in MC
passes); detectron2 pads images to a multiple of 32 and resizes them itself in activedet's
wrapper, torchvision in its GeneralizedRCNNTransform. Writes ``benchmarks/results/backends.{json,csv,md,png}``
(``benchmarks/render_results.py`` puts the table into the README and docs/results.md). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, fmt_pm, format_table, machine, mean_std, progress, write_results  # noqa: E402

#: model name -> preset
MODELS = {"torchvision R50-FPN": "resnet50_fpn", "detectron2 R50-FPN": "d2_faster_rcnn_R_50_FPN"}


def prepare(work: Path, sequences: int, frames: int) -> str:
    from activedet.data.synth import generate_synthdrive

    uri = work / f"synthdrive-{sequences}x{frames}"
    if not (uri / "_MANIFEST.json").exists():
        generate_synthdrive(str(uri), sequences=sequences, frames=frames, seed=0, height=128, width=256)
    return str(uri)


def step_times(dataset_uri: str, options: dict, batch: int, device: str, rounds: int, warmup: int = 2) -> dict[str, dict]:
    """Seconds per training step of each model: warm-up, then one step each in turn for ``rounds`` rounds."""
    import torch

    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset
    from activedet.models.data import DetectionDataset, endless_batches
    from activedet.models.train import Trainer

    ds = load_dataset(dataset_uri)
    trainers = {}
    for name, preset in MODELS.items():
        torch.manual_seed(0)
        det = detector_for_dataset(preset, ds, **options)
        data = DetectionDataset(ds, ds.split_ids("train"), category_ids=det.category_ids, train=True)
        det.model.to(device)
        trainers[name] = Trainer(det.model, endless_batches(data, batch_size=batch, seed=0), iterations=10**6, lr=0.01,
                                 warmup_iters=0, device=device)
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for _ in range(warmup + rounds):
        for name, trainer in trainers.items():
            images, targets = next(trainer.batches)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.step(images, targets)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {m: {"median_s": float(np.median(t[warmup:])), "all_s": [round(x, 4) for x in t]} for m, t in times.items()}


def run_one(work: Path, dataset_uri: str, name: str, seed: int, args) -> dict:
    """train-teacher + evaluate of one (model, seed); cached under ``work/runs``."""
    record = work / "runs" / f"{MODELS[name]}-{args.min_size}-it{args.iterations}-s{seed}-{args.device}.json"
    if record.exists():
        return json.loads(record.read_text())
    from activedet.stages import evaluate, train_teacher

    out = work / "models" / record.stem
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    tres = train_teacher.run(train_teacher.Config(
        dataset_uri=dataset_uri, output_uri=str(out / "teacher"), preset=MODELS[name], preset_options=options(args),
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, warmup_iters=min(20, args.iterations // 5),
        seed=seed, device=args.device, checkpoint_every=0,
    ))
    train_s = time.monotonic() - t0
    eres = evaluate.run(evaluate.Config(dataset_uri=dataset_uri, split="val", checkpoint_uri=str(out / "teacher"),
                                        output_uri=str(out / "eval"), device=args.device))
    result = {
        "model": name, "preset": MODELS[name], "seed": seed, "iterations": args.iterations, "batch_size": args.batch_size,
        "lr": args.lr, "preset_options": options(args), "train_s": round(train_s, 1), "it_per_s": round(tres.it_per_s, 3),
        "final_loss": round(tres.final_loss, 4), "AP": eres["AP"], "AP50": eres["AP50"],
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=2) + "\n")
    return result


def options(args) -> dict:
    return {"min_size": args.min_size, "max_size": 2 * args.min_size}


def summarise(runs: list[dict], steps: dict[str, dict]) -> list[dict]:
    rows = []
    for name in MODELS:
        rs = [r for r in runs if r["model"] == name]
        if not rs:
            continue
        ap, ap_sd = mean_std([100 * float(r["AP"] or 0.0) for r in rs])
        ap50, ap50_sd = mean_std([100 * float(r["AP50"] or 0.0) for r in rs])
        loss, loss_sd = mean_std([float(r["final_loss"]) for r in rs])
        rows.append({
            "model": name, "preset": MODELS[name], "seeds": len(rs), "iterations": rs[0]["iterations"],
            "AP": round(ap, 2), "AP_std": round(ap_sd, 2), "AP50": round(ap50, 2), "AP50_std": round(ap50_sd, 2),
            "final_loss": round(loss, 3), "final_loss_std": round(loss_sd, 3),
            "step_s": round(steps[name]["median_s"], 3), "train_s_mean": round(float(np.mean([r["train_s"] for r in rs])), 1),
        })
    return rows


def render(payload: dict) -> str:
    """The summary table (markdown) from the results JSON."""
    s = payload["settings"]
    table = format_table(
        [{**r, "AP": fmt_pm(r["AP"], r["AP_std"], 2), "AP50": fmt_pm(r["AP50"], r["AP50_std"], 2),
          "final loss": fmt_pm(r["final_loss"], r["final_loss_std"], 3), "step": f"{r['step_s']:.3f} s"} for r in payload["summary"]],
        ["model", "preset", "seeds", "iterations", "AP", "AP50", "final loss", "step"],
        ["model", "preset", "seeds", "iterations", "AP x100", "AP50 x100", "final loss", "train step (median)"],
    )
    return (
        f"SynthDrive {s['sequences']}x{s['frames']} (128x256, val split), short side {s['min_size']}, batch {s['batch_size']}, "
        f"lr {s['lr']}, {s['iterations']} iterations from scratch, seeds {s['seeds']}, {s['device']}; mean +- std over seeds; "
        f"train step = median of {s['rounds']} interleaved steps after warm-up (load average {payload['loadavg_1m_at_start']} "
        f"at start). {_reading(payload['summary'])}\n\n" + table + "\n"
    )


def _reading(rows: list[dict]) -> str:
    """What the table can and cannot say, from its numbers."""
    if all(r["AP50"] == 0 for r in rows):
        return ("AP is 0 for both at this schedule (R50-FPN from scratch needs far more iterations than a CPU run affords): "
                "the table shows that both backends train and evaluate through the same stages and what a step costs, "
                "not which detector is better.")
    return "Few iterations from scratch: both detectors are barely trained; a difference within the std says nothing."


def plot(payload: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    names = [r["model"] for r in rows]
    axes[0].bar(names, [r["step_s"] for r in rows], color=["tab:blue", "tab:orange"][: len(rows)])
    axes[0].set_ylabel("train step (s)")
    axes[1].bar(names, [r["AP50"] for r in rows], yerr=[r["AP50_std"] for r in rows], color=["tab:blue", "tab:orange"][: len(rows)])
    axes[1].set_ylabel("AP50 x100 (val)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="work folder (data, models, cached runs)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--min-size", type=int, default=128, help="short side (max side = 2x)")
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing steps per model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--render", action="store_true", help="only re-render the tables from the results JSON")
    args = p.parse_args(argv)
    name = "backends" if args.device == "cpu" else "backends_cuda"
    if args.render:
        payload = json.loads((args.out / f"{name}.json").read_text())
        (args.out / f"{name}.md").write_text(render(payload))
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    started = time.time()
    dataset_uri = prepare(args.work, args.sequences, args.frames)
    progress("timing train steps")
    steps = step_times(dataset_uri, options(args), args.batch_size, args.device, args.rounds)
    runs = []
    for seed in args.seeds:
        for model in MODELS:
            progress(f"{model} seed {seed}")
            runs.append(run_one(args.work, dataset_uri, model, seed, args))
    summary = summarise(runs, steps)
    payload = {
        "benchmark": "backends", "command": "benchmarks/backends.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"seeds": args.seeds, "iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr,
                     "min_size": args.min_size, "sequences": args.sequences, "frames": args.frames, "rounds": args.rounds,
                     "device": args.device},
        "machine": machine(), "loadavg_1m_at_start": round(load0, 2), "wall_s": round(time.time() - started, 1),
        "step_times": steps, "runs": runs, "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(name, payload, summary, args.out)
    (args.out / f"{name}.md").write_text(render(payload))
    plot(payload, args.out / f"{name}.png")
    sys.stdout.write(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
