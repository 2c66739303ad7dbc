"""Teacher initialisation at equal wall time: from-scratch ``tiny``, from-scratch Lite0, ImageNet Lite0.

Two datasets: SynthDrive (40 sequences x 10 frames, 128x256, seed 0; its own train/val split by
sequence) and ``../shared/datasets/traffic-cams`` (real camera frames, imported from YOLO, split
by scene with ``activedet data split``: see :func:`prepare_traffic_cams`). For each dataset the training step time of every model is measured
once, round-robin under the same load (:func:`calibrate`), and the schedule gets
``iterations = budget / step time``, so every model trains for about the same wall time; seeds
vary initialisation, sampling and augmentation. Each run is the real stages: train-teacher then
evaluate (COCO AP, AP50, per-class AP on the val split).

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/teacher.py --work /tmp/bench-teacher &   # ~40 min
    .venv/bin/python benchmarks/teacher.py --work /tmp/bench-teacher --render                     # tables only
    .venv/bin/python benchmarks/teacher.py --work /tmp/t --seeds 0 --budget-synth 5 --budget-cams 5 --out /tmp/t/res  # smoke

Resumable: every finished run is a JSON file under ``--work/runs/``; a re-run skips them (and the
calibrations under ``--work/calibration/``). Writes ``benchmarks/results/teacher.{json,csv,png,md}``
and the summary block of ``benchmarks/README.md`` between its ``teacher`` markers, both rendered
from the JSON (``benchmarks/render_results.py`` puts the compact version into the top-level README
and docs/results.md). Figures depend on the machine's load: the JSON records it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, fmt_pm, format_table, machine, mean_std, progress, write_results  # noqa: E402

TRAFFIC_CAMS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "traffic-cams"
README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- teacher:begin (rendered by benchmarks/teacher.py --render) -->", "<!-- teacher:end -->"

#: model name -> (preset, backbone_weights, lr)
MODELS: dict[str, tuple[str, str | None, float]] = {
    "tiny-scratch": ("tiny", None, 0.04),
    "lite0-scratch": ("lite0_fpn", None, 0.04),
    "lite0-imagenet": ("lite0_fpn", "imagenet", 0.02),
}
#: below this AP for every model, a comparison says nothing
MIN_LEARNED_AP = 0.02
#: dataset name -> (preset options per preset, batch size)
DATASETS: dict[str, tuple[dict[str, dict], int]] = {
    "synthdrive": ({"tiny": {}, "lite0_fpn": {}}, 8),
    # 640x360 frames: short side 224 keeps cars >= ~8 px at a CPU cost near SynthDrive's batch 8
    "traffic-cams": ({"tiny": {"min_size": 224, "max_size": 400}, "lite0_fpn": {"min_size": 224, "max_size": 400}}, 4),
}


# --------------------------------------------------------------------------- data


def prepare_traffic_cams(work: Path) -> tuple[str, dict]:
    """Import traffic-cams (YOLO) and split it by scene with ``activedet data split`` (near-duplicate
    thumbnail clusters, rare classes stratified into val); returns (dataset URI, split summary)."""
    from activedet.data.split import SplitSettings, split_dataset
    from activedet.data.yolo import import_yolo

    raw, uri = work / "traffic-cams-raw", work / "traffic-cams"
    summary_file = work / "traffic-cams-split.json"
    if (uri / "_MANIFEST.json").exists() and summary_file.exists():
        return str(uri), json.loads(summary_file.read_text())
    if not (TRAFFIC_CAMS / "data.yaml").is_file():
        raise SystemExit(f"traffic-cams not found at {TRAFFIC_CAMS} (see ../shared/datasets/README.md)")
    if not (raw / "_MANIFEST.json").exists():
        import_yolo(str(TRAFFIC_CAMS / "data.yaml"), out_uri=str(raw))
    summary = split_dataset(str(raw), str(uri), SplitSettings(val_fraction=0.25, group_by="similarity", seed=0))
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    return str(uri), summary


def prepare_synthdrive(work: Path) -> str:
    from activedet.data.synth import generate_synthdrive

    uri = work / "synthdrive"
    if not (uri / "_MANIFEST.json").exists():
        generate_synthdrive(str(uri), sequences=40, frames=10, seed=0)
    return str(uri)


# --------------------------------------------------------------------------- runs


def calibrate(work: Path, dataset_uri: str, dataset: str, rounds: int = 5, warmup: int = 2) -> dict[str, float]:
    """Seconds per training step of every model on ``dataset``: after ``warmup`` steps each, the
    models take one step in turn for ``rounds`` rounds (so a burst of load on the shared machine
    hits them alike); the median per model. Cached under ``work/calibration``."""
    cache = work / "calibration" / f"{dataset}.json"
    if cache.exists():
        return json.loads(cache.read_text())["s_per_it"]
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import detector_for_dataset
    from activedet.models.data import DetectionDataset, endless_batches
    from activedet.models.init import load_backbone_weights, pretrained_options
    from activedet.models.train import Trainer

    options_by_preset, batch = DATASETS[dataset]
    ds = load_dataset(dataset_uri)
    trainers = {}
    for model, (preset, weights, lr) in MODELS.items():
        options = pretrained_options(preset, options_by_preset[preset], backbone_weights=weights, init_checkpoint=None)
        det = detector_for_dataset(preset, ds, **options)
        if weights:
            load_backbone_weights(det, weights)
        data = DetectionDataset(ds, ds.split_ids("train"), category_ids=det.category_ids, train=True)
        trainers[model] = Trainer(det.model, endless_batches(data, batch_size=batch, seed=0), iterations=10**6, lr=lr, warmup_iters=0)
    times: dict[str, list[float]] = {m: [] for m in trainers}
    for _ in range(warmup + rounds):
        for model, trainer in trainers.items():
            images, targets = next(trainer.batches)
            t0 = time.perf_counter()
            trainer.step(images, targets)
            times[model].append(time.perf_counter() - t0)
    s_per_it = {m: float(np.median(t[warmup:])) for m, t in times.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"s_per_it": s_per_it, "times": times, "loadavg_1m": os.getloadavg()[0]}, indent=1) + "\n")
    return s_per_it


def run_one(work: Path, dataset_uri: str, dataset: str, model: str, seed: int, budget_s: float) -> dict:
    """train-teacher + evaluate of one (dataset, model, seed); cached under ``work/runs``."""
    record = work / "runs" / f"{dataset}-{model}-s{seed}.json"
    if record.exists():
        return json.loads(record.read_text())
    from activedet.stages import evaluate, train_teacher

    preset, weights, lr = MODELS[model]
    options_by_preset, batch = DATASETS[dataset]
    s_per_it = calibrate(work, dataset_uri, dataset)[model]
    iterations = max(10, int(budget_s / s_per_it))
    out = work / "models" / f"{dataset}-{model}-s{seed}"
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    tres = train_teacher.run(train_teacher.Config(
        dataset_uri=dataset_uri, output_uri=str(out / "teacher"), preset=preset, preset_options=options_by_preset[preset],
        backbone_weights=weights, iterations=iterations, batch_size=batch, lr=lr, warmup_iters=min(50, iterations // 5),
        seed=seed, device="cpu", checkpoint_every=0,
    ))
    train_s = time.monotonic() - t0
    eres = evaluate.run(evaluate.Config(
        dataset_uri=dataset_uri, split="val", checkpoint_uri=str(out / "teacher"), output_uri=str(out / "eval"), device="cpu",
    ))
    per_class = json.loads((out / "eval" / "metrics.json").read_text())["per_class"]
    result = {
        "dataset": dataset, "model": model, "preset": preset, "backbone_weights": weights, "seed": seed, "lr": lr,
        "batch_size": batch, "preset_options": options_by_preset[preset], "budget_s": budget_s,
        "calibrated_s_per_it": round(s_per_it, 4), "iterations": iterations, "train_s": round(train_s, 1),
        "it_per_s": round(tres.it_per_s, 3), "final_loss": round(tres.final_loss, 4),
        "AP": eres["AP"], "AP50": eres["AP50"], "AP75": eres.get("AP75"),
        "per_class_AP": {r["name"]: r["ap"] for r in per_class}, "per_class_AP50": {r["name"]: r.get("ap50") for r in per_class},
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- summary


def summarise(runs: list[dict]) -> list[dict]:
    """Mean +- std over seeds per (dataset, model)."""
    rows = []
    for dataset in DATASETS:
        for model in MODELS:
            rs = [r for r in runs if r["dataset"] == dataset and r["model"] == model]
            if not rs:
                continue
            row = {"dataset": dataset, "model": model, "seeds": len(rs)}
            for k in ("AP", "AP50", "train_s", "iterations"):
                m, s = mean_std([float(r[k]) for r in rs])
                row[k], row[f"{k}_std"] = round(m, 4), round(s, 4)
            classes = sorted({c for r in rs for c in r["per_class_AP"]})
            for c in classes:
                m, _ = mean_std([r["per_class_AP"].get(c) if r["per_class_AP"].get(c) is not None else math.nan for r in rs])
                row[f"AP[{c}]"] = round(m, 4) if not math.isnan(m) else None
            rows.append(row)
    return rows


def verdicts(rows: list[dict]) -> dict[str, dict]:
    """Per dataset: ImageNet Lite0 vs from-scratch tiny, AP and AP50 differences of the means; it
    *beats* tiny when the mean minus one std is above tiny's mean plus one std, and only when some
    model reached :data:`MIN_LEARNED_AP` (below that every model is noise)."""
    out = {}
    for dataset in DATASETS:
        by = {r["model"]: r for r in rows if r["dataset"] == dataset}
        if "tiny-scratch" in by and "lite0-imagenet" in by:
            a, b = by["lite0-imagenet"], by["tiny-scratch"]
            learned = max(r["AP"] for r in by.values()) >= MIN_LEARNED_AP
            out[dataset] = {
                "AP_gain": round(a["AP"] - b["AP"], 4), "AP50_gain": round(a["AP50"] - b["AP50"], 4),
                "learned": learned, "beats_tiny": learned and a["AP"] - a["AP_std"] > b["AP"] + b["AP_std"],
            }
    return out


def plot(rows: list[dict], path: Path) -> Path:
    from activedet.plots import save_png, subplots

    fig, axes = subplots(1, len(DATASETS), figsize=(5 * len(DATASETS), 3.6))
    for ax, dataset in zip(np.atleast_1d(axes), DATASETS, strict=True):
        rs = [r for r in rows if r["dataset"] == dataset]
        x = np.arange(len(rs))
        for off, metric in ((-0.2, "AP"), (0.2, "AP50")):
            ax.bar(x + off, [r[metric] for r in rs], 0.4, yerr=[r[f"{metric}_std"] for r in rs], capsize=3, label=metric)
        ax.set_xticks(x, [r["model"] for r in rs], rotation=15)
        ax.set_title(f"{dataset}: val AP at equal wall time")
        ax.set_ylim(0, 1)
        ax.legend()
    return save_png(fig, path)


def render(payload: dict, *, compact: bool = False, image: str | None = None) -> str:
    """The Markdown summary (results/teacher.md, benchmarks/README.md; ``compact``, without the
    per-class tables: the top-level README and docs/results.md via render_results.py), from the JSON."""
    rows = payload["summary"]
    cols = ["dataset", "model", "seeds", "iterations", "train_s", "AP", "AP50"]
    table = [{**r, "AP": fmt_pm(r["AP"], r["AP_std"], 3), "AP50": fmt_pm(r["AP50"], r["AP50_std"], 3),
              "train_s": f"{r['train_s']:.0f}", "iterations": f"{r['iterations']:.0f}"} for r in rows]
    classes = [k for k in rows[0] if k.startswith("AP[")] if rows else []
    lines = [
        "Teacher init at equal wall time ("
        + ", ".join(f"{s:.0f} s of training on {d}" for d, s in payload["budget_s"].items())
        + f"), {len(payload['seeds'])} seeds, val split; "
        f"machine load average {payload['loadavg_range'][0]}-{payload['loadavg_range'][1]}, "
        f"{payload['machine'].get('torch_threads')} torch thread(s). Source: `benchmarks/results/teacher.json`.",
        "",
        format_table(table, cols, ["dataset", "model", "seeds", "iterations", "train s", "AP", "AP50"]),
        "",
    ]
    for dataset in [] if compact else DATASETS:
        rs = [r for r in rows if r["dataset"] == dataset]
        ks = [k for k in classes if any(r.get(k) is not None for r in rs)]
        if rs and ks:
            lines += [f"Per-class AP, {dataset} (mean over seeds):", "",
                      format_table(rs, ["model", *ks], ["model", *[k[3:-1] for k in ks]]), ""]
    for dataset, v in payload["verdicts"].items():
        if not v.get("learned", True):
            why = f"no verdict: no model reaches AP {MIN_LEARNED_AP} at this budget"
        else:
            why = "beats tiny beyond one std" if v["beats_tiny"] else "does not beat tiny beyond one std"
        lines.append(f"- {dataset}: ImageNet Lite0 vs tiny: AP {v['AP_gain']:+.3f}, AP50 {v['AP50_gain']:+.3f} ({why}).")
    split = payload.get("traffic_cams_split")
    if split:
        n = {r["split"]: r for r in split["splits"]}
        lines.append(
            f"- traffic-cams split (`activedet data split`, {split['group_by']} >= {split.get('similarity')}): "
            f"{split['scenes']} scenes; train {n['train']['images']} images / {n['train']['scenes']} scenes, "
            f"val {n['val']['images']} images / {n['val']['scenes']} scenes."
        )
    if image:
        lines += ["", f"![teacher initialisation at equal wall time]({image})"]
    return "\n".join(lines) + "\n"


def write_readme_block(text: str, readme: Path = README) -> None:
    """Replace the block between the teacher markers of ``readme`` (append a section when absent)."""
    body = readme.read_text()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in body and END in body:
        head, rest = body.split(BEGIN, 1)
        body = head + block + rest.split(END, 1)[1]
    else:
        body = body.rstrip() + "\n\n## Teacher initialisation (`teacher.py`)\n\n" + block + "\n"
    readme.write_text(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="work folder (datasets, models, per-run records; resumable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget-synth", type=float, default=90.0, help="training seconds per SynthDrive run")
    p.add_argument("--budget-cams", type=float, default=110.0, help="training seconds per traffic-cams run")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    p.add_argument("--render", action="store_true", help="only rebuild the results files from the finished runs")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README block")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    work = args.work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    budgets = {"synthdrive": args.budget_synth, "traffic-cams": args.budget_cams}
    split_summary = None
    if not args.render:
        for dataset in args.datasets:
            if dataset == "synthdrive":
                uri = prepare_synthdrive(work)
            else:
                uri, split_summary = prepare_traffic_cams(work)
            for seed in args.seeds:
                for model in MODELS:
                    r = run_one(work, uri, dataset, model, seed, budgets[dataset])
                    progress(f"{dataset} {model} seed {seed}: {r['iterations']} it in {r['train_s']:.0f} s, AP {r['AP']:.3f} AP50 {r['AP50']:.3f}")
    if split_summary is None and (work / "traffic-cams-split.json").exists():
        split_summary = json.loads((work / "traffic-cams-split.json").read_text())
    runs = [json.loads(f.read_text()) for f in sorted((work / "runs").glob("*.json"))]
    runs = [r for r in runs if r["seed"] in args.seeds and r["dataset"] in args.datasets]
    if not runs:
        raise SystemExit(f"no finished runs under {work / 'runs'}")
    rows = summarise(runs)
    loads = [v for r in runs for v in r["loadavg_1m"]]
    payload = {
        "benchmark": "teacher",
        "command": f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/teacher.py --work {work} --seeds {' '.join(map(str, args.seeds))} "
                   f"--budget-synth {args.budget_synth:g} --budget-cams {args.budget_cams:g} --datasets {' '.join(args.datasets)}",
        "rendered_by": " ".join(["python", *sys.argv]),
        "machine": machine(), "budget_s": {d: budgets[d] for d in args.datasets}, "seeds": args.seeds,
        "models": {k: {"preset": v[0], "backbone_weights": v[1], "lr": v[2]} for k, v in MODELS.items()},
        "datasets": {k: {"preset_options": v[0], "batch_size": v[1]} for k, v in DATASETS.items() if k in args.datasets},
        "traffic_cams_split": split_summary, "loadavg_range": [min(loads), max(loads)],
        "summary": rows, "verdicts": verdicts(rows), "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_results("teacher", payload, [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in runs], args.out)
    plot(rows, args.out / "teacher.png")
    text = render(payload, image="teacher.png")
    (args.out / "teacher.md").write_text(text)
    if not args.no_readme and args.out == RESULTS_DIR:
        write_readme_block(render(payload, image="results/teacher.png"))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
