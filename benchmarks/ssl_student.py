"""SSL student vs supervised teacher on SynthDrive, for every pseudo-label filter, over seeds.

Per seed: a random labeled set (``--labeled`` train images) and the rest of the train split as the
unlabeled pool; train-teacher on the labeled set; then for each filter generate-pseudo-labels and
train-student-SSL from the teacher; plus a *control* that continues the teacher for the same
number of iterations on labeled images only (so the gain of pseudo-labels is separated from the
gain of simply training longer). Every model is scored with COCO AP / AP50 (pycocotools) on the
val + test splits. Prints a table of mean +- std over seeds and writes
``benchmarks/results/ssl_student.{json,csv,png}``. Not a test: nothing is asserted.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ssl_student.py                  # ~15 min, 2 cores
    # or one seed per process, then merge:
    .venv/bin/python benchmarks/ssl_student.py --seeds 1 --out /tmp/r1   # (x3, in parallel)
    .venv/bin/python benchmarks/ssl_student.py --combine /tmp/r0/ssl_student.json /tmp/r1/ssl_student.json ...
    .venv/bin/python benchmarks/ssl_student.py --seeds 0 --teacher-iters 60 --student-iters 30  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fmt_pm, format_table, machine, mean_std, progress, timer, write_results  # noqa: E402

#: filter name -> params used here (paper defaults, except where noted in docs/ssl.md)
FILTER_SETTINGS: dict[str, dict] = {
    "fixed": {"tau": 0.99},
    "fixed@0.7": {"tau": 0.7},
    "per_class_topk": {"k": 30},
    "dynamic": {"tau": 0.7, "gamma1": 0.05, "gamma2": 0.6},
    "act": {"alpha": 20, "rplm": True},
}


def coco_ap(detector, dataset, image_ids: list[str]) -> dict[str, float]:
    """COCO AP and AP50 of ``detector`` on ``image_ids`` (pycocotools)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from activedet.models.predict import Predictor

    ids = set(image_ids)
    index = {iid: k for k, iid in enumerate(image_ids)}
    images = [{"id": k, "width": 0, "height": 0} for k in range(len(image_ids))]
    gt = dataset.boxes
    anns = []
    for n, (iid, x1, y1, x2, y2, c) in enumerate(
        zip(*(gt.column(col).to_pylist() for col in ("image_id", "x1", "y1", "x2", "y2", "category_id")), strict=True)
    ):
        if iid in ids:
            anns.append({"id": n + 1, "image_id": index[iid], "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco_gt = COCO()
    coco_gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in dataset.category_ids]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    dets = []
    for p in Predictor(detector, device="cpu", batch_size=8, score_floor=0.01).predict(dataset, image_ids):
        for b, c, s in zip(p.detections.boxes, p.detections.labels, p.detections.scores, strict=True):
            dets.append({"image_id": index[p.image_id], "category_id": int(c), "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    if not dets:
        return {"AP": 0.0, "AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": 100 * float(ev.stats[0]), "AP50": 100 * float(ev.stats[1])}


def run_seed(seed: int, args, root: Path, dataset_uri: str) -> list[dict]:
    from activedet import store
    from activedet.al.ledger import new_ledger, write_ledger
    from activedet.config import load_config
    from activedet.data.dataset import load_dataset
    from activedet.models.checkpoint import load_detector
    from activedet.stages import generate_pseudo_labels, train_student_ssl, train_teacher

    ds = load_dataset(dataset_uri)
    train = ds.split_ids("train")
    eval_ids = ds.split_ids("val") + ds.split_ids("test")
    rng = np.random.default_rng(seed)
    labeled = sorted(np.asarray(train, dtype=object)[rng.choice(len(train), args.labeled, replace=False)].tolist())
    ledger = str(root / f"s{seed}" / "ledger")
    with store.OutputWriter(ledger) as out:
        write_ledger(out, new_ledger(train, labeled), cycle=0, parent=None)
    common = {"dataset_uri": dataset_uri, "ledger_uri": ledger, "device": "cpu", "seed": seed, "checkpoint_every": 0,
              "batch_size": args.batch_size}
    teacher_uri = str(root / f"s{seed}" / "teacher")
    with timer() as t:
        train_teacher.run(load_config(train_teacher.Config, {**common, "output_uri": teacher_uri, "preset": "tiny",
                                                              "iterations": args.teacher_iters, "lr": args.lr}))
    teacher_ap = coco_ap(load_detector(teacher_uri), ds, eval_ids)
    progress(f"seed {seed}: teacher AP {teacher_ap['AP']:.2f} AP50 {teacher_ap['AP50']:.2f} ({t():.0f} s)")
    rows = [{"seed": seed, "model": "teacher", **teacher_ap, "pseudo_boxes": None, "precision": None, "recall": None}]
    student_common = {**common, "teacher_checkpoint_uri": teacher_uri, "iterations": args.student_iters,
                      "lr": args.student_lr, "warmup_iters": args.student_warmup}

    # control: the same extra iterations on labeled images only (train-teacher warm-started)
    control_uri = str(root / f"s{seed}" / "control")
    train_teacher.run(load_config(train_teacher.Config, {**common, "output_uri": control_uri, "preset": "tiny",
                                                          "iterations": args.student_iters, "lr": args.student_lr,
                                                          "warmup_iters": args.student_warmup, "init_checkpoint_uri": teacher_uri}))
    ap = coco_ap(load_detector(control_uri), ds, eval_ids)
    progress(f"seed {seed}: supervised control AP {ap['AP']:.2f} AP50 {ap['AP50']:.2f}")
    rows.append({"seed": seed, "model": "control (labeled only)", **ap, "pseudo_boxes": None, "precision": None, "recall": None})

    for label in args.filters:
        name = label.split("@")[0]
        pl_uri = str(root / f"s{seed}" / f"pl-{label}")
        with timer() as t:
            pl = generate_pseudo_labels.run(load_config(generate_pseudo_labels.Config, {
                "teacher_checkpoint_uri": teacher_uri, "dataset_uri": dataset_uri, "ledger_uri": ledger, "output_uri": pl_uri,
                "filter": name, "filter_params": FILTER_SETTINGS[label], "device": "cpu", "seed": seed,
            }))
            student_uri = str(root / f"s{seed}" / f"student-{label}")
            train_student_ssl.run(load_config(train_student_ssl.Config, {
                **student_common, "pseudo_labels_uri": pl_uri, "output_uri": student_uri,
            }))
        ap = coco_ap(load_detector(student_uri), ds, eval_ids)
        progress(f"seed {seed}: {label}: {pl['pseudo_boxes']} pseudo boxes (P {pl['precision']}, R {pl['recall']}), "
                 f"student AP {ap['AP']:.2f} AP50 {ap['AP50']:.2f} ({t():.0f} s)")
        rows.append({"seed": seed, "model": f"student {label}", **ap, "pseudo_boxes": pl["pseudo_boxes"],
                     "precision": pl["precision"], "recall": pl["recall"]})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    teacher = {r["seed"]: r for r in rows if r["model"] == "teacher"}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        ap, ap50 = mean_std([r["AP"] for r in rs]), mean_std([r["AP50"] for r in rs])
        gain = mean_std([r["AP"] - teacher[r["seed"]]["AP"] for r in rs])
        prec = mean_std([r["precision"] for r in rs if r["precision"] is not None])
        out.append({"model": model, "AP": fmt_pm(*ap, 2), "AP50": fmt_pm(*ap50, 2), "AP - teacher": fmt_pm(*gain, 2),
                    "wins": f"{sum(r['AP'] > teacher[r['seed']]['AP'] for r in rs)}/{len(rs)}",
                    "pseudo boxes": fmt_pm(*mean_std([r["pseudo_boxes"] for r in rs if r["pseudo_boxes"] is not None]), 0),
                    "pseudo precision": fmt_pm(*prec, 2)})
    return out


def plot(rows: list[dict], path: Path) -> None:
    from activedet.plots import save_png, subplots

    models = list(dict.fromkeys(r["model"] for r in rows))
    means = [np.mean([r["AP"] for r in rows if r["model"] == m]) for m in models]
    stds = [np.std([r["AP"] for r in rows if r["model"] == m], ddof=1) if sum(r["model"] == m for r in rows) > 1 else 0 for m in models]
    fig, ax = subplots(figsize=(8, 4))
    ax.bar(range(len(models)), means, yerr=stds, capsize=4, color=["grey", "silver"] + ["tab:blue"] * (len(models) - 2))
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_ylabel("COCO AP (val + test)")
    ax.set_title("SynthDrive: SSL student vs supervised teacher (mean +- std over seeds)")
    save_png(fig, path, dpi=120)


COLUMNS = ["model", "AP", "AP50", "AP - teacher", "wins", "pseudo boxes", "pseudo precision"]


def combine(paths: list[Path], out: Path | None) -> None:
    """Merge per-seed result files into one table, JSON, CSV and plot."""
    import json

    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for run in runs for r in run["rows"]]
    summary = summarise(rows)
    print(format_table(summary, COLUMNS))
    settings = {**runs[0]["settings"], "seeds": sorted({r["seed"] for r in rows}), "combine": [str(p) for p in paths]}
    payload = {"settings": settings, "filter_params": runs[0]["filter_params"], "rows": rows, "summary": summary,
               "seconds": [run["seconds"] for run in runs], "machine": runs[0]["machine"]}
    jpath, _ = write_results("ssl_student", payload, rows, out)
    plot(rows, jpath.with_suffix(".png"))
    progress(f"combined {len(paths)} runs -> {jpath}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sequences", type=int, default=40, help="SynthDrive sequences (5 frames each)")
    ap.add_argument("--labeled", type=int, default=16, help="labeled train images per seed")
    ap.add_argument("--teacher-iters", type=int, default=240)
    ap.add_argument("--student-iters", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--student-lr", type=float, default=0.01)
    ap.add_argument("--student-warmup", type=int, default=10)
    ap.add_argument("--filters", nargs="+", default=list(FILTER_SETTINGS), choices=list(FILTER_SETTINGS))
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None,
                    help="merge the ssl_student.json of runs made with one seed each (run in parallel) and report")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.combine:
        combine(args.combine, args.out)
        return

    import torch

    torch.set_num_threads(1)
    from activedet.data.synth import generate_synthdrive

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ssl-bench-") as tmp, timer() as total:
        root = Path(tmp)
        dataset_uri = str(root / "synthdrive")
        generate_synthdrive(dataset_uri, sequences=args.sequences, frames=5, seed=0)
        for seed in args.seeds:
            rows += run_seed(seed, args, root, dataset_uri)
        elapsed = total()
    summary = summarise(rows)
    print(format_table(summary, COLUMNS))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"settings": settings, "filter_params": FILTER_SETTINGS, "rows": rows, "summary": summary,
               "seconds": elapsed, "machine": machine()}
    jpath, _ = write_results("ssl_student", payload, rows, args.out)
    plot(rows, jpath.with_suffix(".png"))
    progress(f"done in {elapsed:.0f} s -> {jpath}")


if __name__ == "__main__":
    main()
