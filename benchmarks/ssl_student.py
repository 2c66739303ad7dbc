"""SSL student vs supervised teacher on SynthDrive, for every pseudo-label filter, over seeds.

Per seed: a random labeled set (``--labeled`` train images) and the rest of the train split as the
unlabeled pool; train-teacher on the labeled set; then for each filter generate-pseudo-labels and
train-student-SSL from the teacher; plus a *control* that continues the teacher for the same
number of iterations on labeled images only (so the gain of pseudo-labels is separated from the
gain of simply training longer). Every model is scored with COCO AP / AP50 (pycocotools) on the
val + test splits. Prints a table of mean +- std over seeds and writes
``benchmarks/results/ssl_student.{json,csv,png}``. Not a test: nothing is asserted.

``--modes offline mean_teacher`` adds the online student (train-student-ssl ``mode: mean_teacher``,
LabelMatch; settings :data:`MEAN_TEACHER_SETTINGS`) trained for the same iterations; its
pseudo-label diagnostics (precision / recall at IoU 0.5, pseudo boxes per image, class KL) are
the means of the stage's per-iteration MLflow metrics over the last quarter of its schedule.
Every student row also gets the paired difference to the supervised control with a 95 %
bootstrap interval over seeds (``activedet.al.budget.paired_bootstrap``).

Resumable with ``--work DIR``: every trained model and every finished row is kept there, a
re-run skips what is done, and a training stage killed mid-way continues from its last
``_resume`` checkpoint (``--checkpoint-every``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ssl_student.py --seeds 0 --modes offline mean_teacher \
        --filters act --work /tmp/w0 --name ssl_student_mt --out /tmp/r0

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
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    fmt_pm,
    format_table,
    machine,
    mean_std,
    paired_bootstrap,
    progress,
    timer,
    verdict,
    write_results,
)

#: filter name -> params used here (paper defaults, except where noted in docs/ssl.md)
FILTER_SETTINGS: dict[str, dict] = {
    "fixed": {"tau": 0.99},
    "fixed@0.7": {"tau": 0.7},
    "per_class_topk": {"k": 30},
    "dynamic": {"tau": 0.7, "gamma1": 0.05, "gamma2": 0.6},
    # Li et al.'s ablation: v = 1 for every box (with the certainty head, the real v vs none)
    "dynamic@v1": {"tau": 0.7, "gamma1": 0.05, "gamma2": 0.6, "use_loc_quality": False},
    "act": {"alpha": 20, "rplm": True},
}

#: train-student-ssl ``mean_teacher`` settings here: ACT every 25 of the ~100-200 iterations on 64
#: pool images (the paper: every 1000 of 180k on 10000); the rest are the stage defaults
MEAN_TEACHER_SETTINGS: dict = {"act_every": 25, "act_images": 64}
TRAFFIC_CAMS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "traffic-cams" / "data.yaml"
MT_DIAGNOSTICS = ("pseudo_precision", "pseudo_recall", "pseudo_per_image", "pseudo_class_kl", "reliable_share")


def _step(root: Path, key: str, fn) -> dict:
    """``fn()`` once: its JSON result is kept as ``root/<key>.json`` and a re-run reads it back."""
    import json

    path = root / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = fn()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


def _run_once(stage, config) -> None:
    """Run a stage unless its output is already committed (a resumed benchmark)."""
    from activedet import store

    if not store.is_committed(config.output_uri):
        stage.run(config)


def mlflow_tail_means(tracking_uri: str, names: tuple[str, ...], *, tail: float = 0.25) -> dict[str, float | None]:
    """Mean of each ``ssl/<name>`` metric over the last ``tail`` of its steps (the one run in the store)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("activedet-stages")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if exp else []
    out: dict[str, float | None] = {n: None for n in names}
    if not runs:
        return out
    for n in names:
        hist = sorted(client.get_metric_history(runs[0].info.run_id, f"ssl/{n}"), key=lambda m: m.step)
        if hist:
            last = hist[-max(1, int(round(tail * len(hist)))):]
            out[n] = float(np.mean([m.value for m in last]))
    return out


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
    n_labeled = labeled_count(args, len(train))
    labeled = sorted(np.asarray(train, dtype=object)[rng.choice(len(train), n_labeled, replace=False)].tolist())
    ledger = str(root / f"s{seed}" / "ledger")
    if not store.is_committed(ledger):
        with store.OutputWriter(ledger) as out:
            write_ledger(out, new_ledger(train, labeled), cycle=0, parent=None)
    common = {"dataset_uri": dataset_uri, "ledger_uri": ledger, "device": "cpu", "seed": seed,
              "checkpoint_every": args.checkpoint_every, "batch_size": args.batch_size,
              **({"crop_size": list(args.crop_size)} if args.crop_size else {})}
    model = {"preset": args.preset, "preset_options": json.loads(args.preset_options)}
    if args.backbone_weights != "none":
        model["backbone_weights"] = args.backbone_weights
    teacher_uri = str(root / f"s{seed}" / "teacher")
    steps = root / f"s{seed}"

    def teacher_row() -> dict:
        with timer() as t:
            _run_once(train_teacher, load_config(train_teacher.Config, {**common, **model, "output_uri": teacher_uri,
                                                                         "iterations": args.teacher_iters, "lr": args.lr}))
        teacher_ap = coco_ap(load_detector(teacher_uri), ds, eval_ids)
        progress(f"seed {seed}: teacher AP {teacher_ap['AP']:.2f} AP50 {teacher_ap['AP50']:.2f} ({t():.0f} s)")
        return {"seed": seed, "model": "teacher", **teacher_ap, "pseudo_boxes": None, "precision": None, "recall": None}

    rows = [_step(steps, "row-teacher", teacher_row)]
    student_common = {**common, "teacher_checkpoint_uri": teacher_uri, "iterations": args.student_iters,
                      "lr": args.student_lr, "warmup_iters": args.student_warmup}

    # control: the same extra iterations on labeled images only (train-teacher warm-started)
    control_uri = str(root / f"s{seed}" / "control")

    def control_row() -> dict:
        _run_once(train_teacher, load_config(train_teacher.Config, {
            **common, "output_uri": control_uri, "preset": args.preset, "preset_options": model["preset_options"],
            "iterations": args.student_iters, "lr": args.student_lr,
            "warmup_iters": args.student_warmup, "init_checkpoint_uri": teacher_uri}))
        ap = coco_ap(load_detector(control_uri), ds, eval_ids)
        progress(f"seed {seed}: supervised control AP {ap['AP']:.2f} AP50 {ap['AP50']:.2f}")
        return {"seed": seed, "model": "control (labeled only)", **ap, "pseudo_boxes": None, "precision": None, "recall": None}

    rows.append(_step(steps, "row-control", control_row))

    def offline_row(label: str) -> dict:
        name = label.split("@")[0]
        pl_uri = str(root / f"s{seed}" / f"pl-{label}")
        with timer() as t:
            gen_cfg = load_config(generate_pseudo_labels.Config, {
                "teacher_checkpoint_uri": teacher_uri, "dataset_uri": dataset_uri, "ledger_uri": ledger, "output_uri": pl_uri,
                "filter": name, "filter_params": FILTER_SETTINGS[label], "device": "cpu", "seed": seed,
            })
            _run_once(generate_pseudo_labels, gen_cfg)
            pl = json.loads(Path(pl_uri, "metrics.json").read_text())
            student_uri = str(root / f"s{seed}" / f"student-{label}")
            _run_once(train_student_ssl, load_config(train_student_ssl.Config, {
                **student_common, "pseudo_labels_uri": pl_uri, "output_uri": student_uri,
            }))
        ap = coco_ap(load_detector(student_uri), ds, eval_ids)
        counts = pl.get("counts", pl)
        quality = pl.get("quality") or {}
        boxes = counts.get("pseudo_boxes", counts.get("kept"))
        prec, rec = quality.get("precision", pl.get("precision")), quality.get("recall", pl.get("recall"))
        progress(f"seed {seed}: {label}: {boxes} pseudo boxes (P {prec}, R {rec}), "
                 f"student AP {ap['AP']:.2f} AP50 {ap['AP50']:.2f} ({t():.0f} s)")
        return {"seed": seed, "model": f"student {label}", **ap, "pseudo_boxes": boxes, "precision": prec, "recall": rec}

    def mean_teacher_row() -> dict:
        student_uri = str(root / f"s{seed}" / "student-mean_teacher")
        tracking = f"sqlite:///{root / f's{seed}' / 'mlflow-mean_teacher.db'}"
        with timer() as t:
            _run_once(train_student_ssl, load_config(train_student_ssl.Config, {
                **student_common, "pseudo_labels_uri": str(root / f"s{seed}" / "unused"), "output_uri": student_uri,
                "mode": "mean_teacher", "mean_teacher": MEAN_TEACHER_SETTINGS, "mlflow_tracking_uri": tracking,
            }))
        ap = coco_ap(load_detector(student_uri), ds, eval_ids)
        diag = mlflow_tail_means(tracking, MT_DIAGNOSTICS)
        progress(f"seed {seed}: mean_teacher: {diag}, EMA teacher AP {ap['AP']:.2f} AP50 {ap['AP50']:.2f} ({t():.0f} s)")
        return {"seed": seed, "model": "student mean_teacher", **ap, "pseudo_boxes": None, "precision": diag["pseudo_precision"],
                "recall": diag["pseudo_recall"], "pseudo_per_image": diag["pseudo_per_image"],
                "pseudo_class_kl": diag["pseudo_class_kl"], "reliable_share": diag["reliable_share"]}

    if "offline" in args.modes:
        for label in args.filters:
            rows.append(_step(steps, f"row-student-{label}", lambda label=label: offline_row(label)))
    if "mean_teacher" in args.modes:
        rows.append(_step(steps, "row-student-mean_teacher", mean_teacher_row))
    return rows


def labeled_count(args, train_images: int) -> int:
    """Labeled images per seed: ``--labeled-pct`` of the train split when given, else ``--labeled``."""
    if args.labeled_pct is None:
        return args.labeled
    return max(2, round(train_images * args.labeled_pct / 100))


def make_dataset(args, root: Path) -> str:
    """The benchmark's dataset: SynthDrive (``--sequences`` x 5 frames), or traffic-cams split by scene
    (70 % train = labeled + unlabeled pool, 30 % val = the evaluation set)."""
    from activedet import store
    from activedet.data.synth import generate_synthdrive

    uri = str(root / args.dataset)
    if store.is_committed(uri):
        return uri
    if args.dataset == "synthdrive":
        generate_synthdrive(uri, sequences=args.sequences, frames=5, seed=0)
        return uri
    from activedet.data.split import SplitSettings, split_dataset
    from activedet.data.yolo import import_yolo

    raw = str(root / "traffic-cams-raw")
    if not store.is_committed(raw):
        import_yolo(str(TRAFFIC_CAMS), out_uri=raw)
    split_dataset(raw, uri, SplitSettings(val_fraction=0.3, seed=0, workers=2))
    return uri


def summarise(rows: list[dict]) -> list[dict]:
    teacher = {r["seed"]: r for r in rows if r["model"] == "teacher"}
    control = {r["seed"]: r for r in rows if r["model"] == "control (labeled only)"}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        ap, ap50 = mean_std([r["AP"] for r in rs]), mean_std([r["AP50"] for r in rs])
        gain = mean_std([r["AP"] - teacher[r["seed"]]["AP"] for r in rs])
        prec = mean_std([r["precision"] for r in rs if r["precision"] is not None])
        out.append({"model": model, "AP": fmt_pm(*ap, 2), "AP50": fmt_pm(*ap50, 2), "AP - teacher": fmt_pm(*gain, 2),
                    "wins": f"{sum(r['AP'] > teacher[r['seed']]['AP'] for r in rs)}/{len(rs)}",
                    "pseudo boxes": fmt_pm(*mean_std([r["pseudo_boxes"] for r in rs if r["pseudo_boxes"] is not None]), 0),
                    "pseudo precision": fmt_pm(*prec, 2),
                    "pseudo recall": fmt_pm(*mean_std([r["recall"] for r in rs if r.get("recall") is not None]), 2)})
        paired = [r["AP"] - control[r["seed"]]["AP"] for r in rs if r["seed"] in control]
        if model.startswith("student") and paired:
            mean, low, high = paired_bootstrap(paired)
            out[-1].update({"AP - control [95% CI]": f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]",
                            "vs control": verdict(low, high, len(paired))})
    return out


def plot(rows: list[dict], path: Path, title: str = "SynthDrive") -> None:
    from activedet.plots import save_png, subplots

    models = list(dict.fromkeys(r["model"] for r in rows))
    means = [np.mean([r["AP"] for r in rows if r["model"] == m]) for m in models]
    stds = [np.std([r["AP"] for r in rows if r["model"] == m], ddof=1) if sum(r["model"] == m for r in rows) > 1 else 0 for m in models]
    fig, ax = subplots(figsize=(8, 4))
    ax.bar(range(len(models)), means, yerr=stds, capsize=4, color=["grey", "silver"] + ["tab:blue"] * (len(models) - 2))
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_ylabel("COCO AP (val + test)")
    ax.set_title(f"{title}: SSL student vs supervised teacher (mean +- std over seeds)")
    save_png(fig, path, dpi=120)


COLUMNS = ["model", "AP", "AP50", "AP - teacher", "wins", "AP - control [95% CI]", "vs control", "pseudo boxes",
           "pseudo precision", "pseudo recall"]


def _title(settings: dict) -> str:
    share = settings.get("labeled_pct")
    labeled = f"{share:g} % labeled" if share is not None else f"{settings.get('labeled')} labeled"
    return f"{settings.get('dataset', 'synthdrive')}, {settings.get('preset', 'tiny')}, {labeled}"


def _union(lists) -> list:
    return list(dict.fromkeys(x for values in lists for x in values))


def _measured(row: dict) -> set[str]:
    """The measured (numeric) fields of a result row: everything but its seed and model name."""
    return {k for k, v in row.items() if k not in ("seed", "model") and (v is None or isinstance(v, (int, float)))}


def _same_number(a, b, tolerance: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tolerance


def merge_rows(runs: list[dict], *, tolerance: float = 1e-6) -> list[dict]:
    """The rows of several results files, one per (seed, model), in first-seen order.

    A later run may add students to seeds an earlier run already has (e.g. more ``--filters``):
    it retrains that seed's teacher and control, which are deterministic on one CPU thread, so the
    repeated rows must agree; if they do not, the new students were trained from a different
    teacher and pairing them with the earlier control would be wrong, so this refuses.
    """
    merged: dict[tuple[int, str], dict] = {}
    for run in runs:
        for row in run["rows"]:
            key = (row["seed"], row["model"])
            if key in merged:
                before = merged[key]
                differ = [m for m in _measured(before) | _measured(row)
                          if not _same_number(before.get(m), row.get(m), tolerance)]
                if differ:
                    m = sorted(differ)[0]
                    raise SystemExit(f"combine: seed {row['seed']} {row['model']!r} differs between runs "
                                     f"({m} {before.get(m)} vs {row.get(m)}); not pairing students with another run's control")
                continue
            merged[key] = row
    return list(merged.values())


def combine(paths: list[Path], out: Path | None, name: str = "ssl_student") -> None:
    """Merge per-seed result files into one table, JSON, CSV and plot (``<out>/<name>.*``)."""
    import json

    runs = [json.loads(Path(p).read_text()) for p in paths]
    rows = merge_rows(runs)
    summary = summarise(rows)
    print(format_table(summary, COLUMNS))
    settings = {**runs[0]["settings"], "seeds": sorted({r["seed"] for r in rows}), "combine": [str(p) for p in paths], "name": name,
                "filters": _union(run["settings"].get("filters", []) for run in runs),
                "modes": _union(run["settings"].get("modes", ["offline"]) for run in runs)}
    filter_params = {k: v for run in runs for k, v in run["filter_params"].items()}
    payload = {"settings": settings, "filter_params": filter_params, "rows": rows, "summary": summary,
               "seconds": [run["seconds"] for run in runs], "machine": runs[0]["machine"]}
    jpath, _ = write_results(name, payload, rows, out)
    plot(rows, jpath.with_suffix(".png"), _title(settings))
    progress(f"combined {len(paths)} runs -> {jpath}")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (also used to render a results file's command back)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sequences", type=int, default=40, help="SynthDrive sequences (5 frames each)")
    ap.add_argument("--dataset", choices=("synthdrive", "traffic-cams"), default="synthdrive",
                    help="synthdrive (generated) or the real frames of ../shared/datasets/traffic-cams (split by scene)")
    ap.add_argument("--labeled", type=int, default=16, help="labeled train images per seed")
    ap.add_argument("--labeled-pct", type=float, default=None, help="labeled share of the train split (overrides --labeled)")
    ap.add_argument("--preset", default="tiny", help="detector preset (lite0_fpn: the pretrained CPU preset)")
    ap.add_argument("--preset-options", default="{}", help="preset options (JSON), e.g. min_size / max_size")
    ap.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="train teacher, control and students on random H x W crops at full resolution (needs "
                         "--preset-options '{\"native_scale\": true}'; for traffic-cams' small boxes)")
    ap.add_argument("--backbone-weights", default="none", help="train-teacher backbone_weights ('none' = from scratch)")
    ap.add_argument("--teacher-iters", type=int, default=240)
    ap.add_argument("--student-iters", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--student-lr", type=float, default=0.01)
    ap.add_argument("--student-warmup", type=int, default=10)
    ap.add_argument("--filters", nargs="+", default=list(FILTER_SETTINGS), choices=list(FILTER_SETTINGS))
    ap.add_argument("--modes", nargs="+", default=["offline"], choices=["offline", "mean_teacher"],
                    help="student trainers: offline (one per --filters entry) and/or mean_teacher")
    ap.add_argument("--work", type=Path, default=None, help="keep models and finished rows here; a re-run resumes (default: a temp dir)")
    ap.add_argument("--checkpoint-every", type=int, default=25, help="resume checkpoints of every training stage")
    ap.add_argument("--name", default="ssl_student", help="results file name (<name>.json/.csv/.png)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None,
                    help="merge the ssl_student.json of runs made with one seed each (run in parallel) and report")
    return ap


#: settings that say where a run wrote, not what it measured: left out of the rendered command
_PLACE_ONLY = ("work", "out", "combine", "name", "checkpoint_every")


def command_line(settings: dict) -> str:
    """The command that reproduces a results file's measurements: every setting that differs from the default.

    Args:
        settings: the ``settings`` of a results file (one run's arguments, or a combined file's).

    Returns:
        ``benchmarks/ssl_student.py --flag value ...`` (shell-quoted where needed).
    """
    import shlex

    defaults = vars(build_parser().parse_args([]))  # every option, in declaration order
    parts = ["benchmarks/ssl_student.py"]
    for key, default in defaults.items():
        if key in _PLACE_ONLY or key not in settings or settings[key] == default:
            continue
        value = settings[key]
        values = value if isinstance(value, list) else [value]
        # each option is spelled --<dest with dashes> (build_parser names no option otherwise)
        parts += [f"--{key.replace('_', '-')}", *(shlex.quote(str(v)) for v in values)]
    return " ".join(parts)


def main() -> None:
    ap = build_parser()
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.combine:
        combine(args.combine, args.out, args.name)
        return

    import torch

    torch.set_num_threads(1)
    rows: list[dict] = []
    work = contextlib.nullcontext(str(args.work)) if args.work else tempfile.TemporaryDirectory(prefix="ssl-bench-")
    with work as tmp, timer() as total:
        root = Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        dataset_uri = make_dataset(args, root)
        for seed in args.seeds:
            rows += run_seed(seed, args, root, dataset_uri)
        elapsed = total()
    summary = summarise(rows)
    print(format_table(summary, COLUMNS))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"settings": settings, "filter_params": FILTER_SETTINGS, "rows": rows, "summary": summary,
               "seconds": elapsed, "machine": machine()}
    jpath, _ = write_results(args.name, payload, rows, args.out)
    plot(rows, jpath.with_suffix(".png"), _title(settings))
    progress(f"done in {elapsed:.0f} s -> {jpath}")


if __name__ == "__main__":
    main()
