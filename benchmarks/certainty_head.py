"""Certainty-aware box head (Li et al.) vs the standard regression head: teacher AP / AP75, and
whether the localization quality ``v`` tracks the true IoU of a predicted box.

SynthDrive (``--sequences`` x ``--frames``, 128x256, seed 0, its own train/val split by sequence)
or, with ``--dataset traffic-cams``, the real frames of ../shared/datasets/traffic-cams split by
scene (``activedet data split``, as benchmarks/teacher.py does; ``--crop-size H W`` trains on
full-resolution crops of a native-scale model, for its small boxes); preset ``tiny`` from scratch
by default; the same iterations, batch size, lr and seeds for every head:

* ``standard`` -- torchvision's regression head (the product's default);
* ``certainty-K4`` -- ``preset_options: {box_head: certainty, intervals: 4}`` (Li et al. Table 7:
  K = 4 degrades to regression-like 19.7 AP);
* ``certainty-K30`` -- ``{box_head: certainty, intervals: 30}`` (the paper's K).

Each run is the real stages: train-teacher then evaluate (COCO AP, AP50, AP75 on the val split).
From evaluate's ``predictions.parquet`` every val prediction with score >= ``--corr-min-score``
gets its true IoU (the best IoU with a ground-truth box of the same class in the image); the
benchmark reports Pearson and Spearman correlations of ``v`` with that IoU, and of the class
score with it -- the baseline measured in the same run: is ``v`` a better signal of box quality
than the score the standard pipeline already has?

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/certainty_head.py --work /tmp/bench-cert &
    # two processes on disjoint seeds share one --work folder (one JSON per run), then --render
    .venv/bin/python benchmarks/certainty_head.py --work /tmp/bench-cert --render      # tables only
    .venv/bin/python benchmarks/certainty_head.py --work /tmp/c --seeds 0 --iterations 5 --out /tmp/c/res  # smoke

Resumable: every finished run is a JSON file under ``--work/runs/``; a re-run skips them. Runs go
seed by seed (every head of seed 0 first), so a partial run stays balanced. Writes
``benchmarks/results/certainty_head.{json,csv,png,md}`` and (with the default ``--out``) the block
between the ``certainty_head`` markers of ``benchmarks/README.md``, rendered from the JSON. The SSL student with ``dynamic`` using real ``v`` vs ``v = 1`` is
benchmarks/ssl_student.py's (``--filters dynamic dynamic@v1``).
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

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- certainty_head:begin (rendered by benchmarks/certainty_head.py --render) -->", "<!-- certainty_head:end -->"

#: head name -> preset options
HEADS: dict[str, dict] = {
    "standard": {},
    "certainty-K4": {"box_head": "certainty", "intervals": 4},
    "certainty-K30": {"box_head": "certainty", "intervals": 30},
}


def run_tag(args) -> str:
    """What sets a run apart besides head, seed and iterations (empty for the original tiny SynthDrive runs)."""
    tag = "" if args.preset == "tiny" and args.backbone_weights == "none" else f"-{args.preset}-{args.backbone_weights}"
    if args.dataset != "synthdrive":
        tag += f"-{args.dataset}"
    if args.crop_size:
        tag += f"-crop{args.crop_size[0]}x{args.crop_size[1]}"
    return tag


def head_options(head: str, args) -> dict:
    """The head's preset options, native-scale when training on crops."""
    return {**HEADS[head], **({"native_scale": True} if args.crop_size else {})}


def prepare_dataset(args) -> str:
    if args.dataset == "traffic-cams":
        from teacher import prepare_traffic_cams

        return prepare_traffic_cams(args.work)[0]
    return prepare_synthdrive(args.work, args.sequences, args.frames)


def dataset_label(s: dict) -> str:
    if s.get("dataset", "synthdrive") == "traffic-cams":
        crop = s.get("crop_size")
        return "traffic-cams (real frames, split by scene" + (f"; {crop[0]}x{crop[1]} full-resolution crops, native-scale "
                                                             "inference)" if crop else ")")
    return f"SynthDrive {s['sequences']}x{s['frames']}"


def prepare_synthdrive(work: Path, sequences: int, frames: int) -> str:
    from activedet.data.synth import generate_synthdrive

    uri = work / f"synthdrive-{sequences}x{frames}"
    if not (uri / "_MANIFEST.json").exists():
        generate_synthdrive(str(uri), sequences=sequences, frames=frames, seed=0)
    return str(uri)


# --------------------------------------------------------------------------- IoU vs v


def true_iou(preds, gt) -> np.ndarray:
    """Per prediction row: the best IoU with a ground-truth box of its class in its image (0 if none)."""
    from activedet.ssl.filters import box_iou

    out = np.zeros(preds.num_rows)
    p_ids = np.asarray(preds.column("image_id").to_pylist(), dtype=object)
    g_ids = np.asarray(gt.column("image_id").to_pylist(), dtype=object)
    p_cat = preds.column("category_id").to_numpy()
    g_cat = gt.column("category_id").to_numpy()
    p_xy = np.stack([preds.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")], 1)
    g_xy = np.stack([gt.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")], 1)
    for iid in set(p_ids.tolist()):
        pi, gi = np.flatnonzero(p_ids == iid), np.flatnonzero(g_ids == iid)
        if not len(gi):
            continue
        iou = box_iou(p_xy[pi], g_xy[gi])
        iou[p_cat[pi][:, None] != g_cat[gi][None, :]] = 0.0
        out[pi] = iou.max(axis=1)
    return out


def correlations(x: np.ndarray, y: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"pearson": None, "spearman": None, "n": int(len(x))}
    return {"pearson": round(float(pearsonr(x, y)[0]), 4), "spearman": round(float(spearmanr(x, y)[0]), 4), "n": int(len(x))}


# --------------------------------------------------------------------------- runs


def run_one(work: Path, dataset_uri: str, head: str, seed: int, args) -> dict:
    """train-teacher + evaluate + IoU correlations of one (head, seed); cached under ``work/runs``."""
    record = work / "runs" / f"{head}-s{seed}-it{args.iterations}{run_tag(args)}.json"
    if record.exists():
        return json.loads(record.read_text())
    from activedet import store
    from activedet.data.dataset import load_dataset
    from activedet.stages import evaluate, train_teacher

    out = work / "models" / f"{head}-s{seed}-it{args.iterations}{run_tag(args)}"
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    tres = train_teacher.run(train_teacher.Config(
        dataset_uri=dataset_uri, output_uri=str(out / "teacher"), preset=args.preset, preset_options=head_options(head, args),
        crop_size=tuple(args.crop_size) if args.crop_size else None,
        backbone_weights=None if args.backbone_weights == "none" else args.backbone_weights,
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, warmup_iters=min(50, args.iterations // 5),
        seed=seed, device="cpu", checkpoint_every=0,
    ))
    train_s = time.monotonic() - t0
    eres = evaluate.run(evaluate.Config(
        dataset_uri=dataset_uri, split="val", checkpoint_uri=str(out / "teacher"), output_uri=str(out / "eval"), device="cpu",
    ))
    preds = store.read_table(str(out / "eval" / "predictions.parquet"))
    ds = load_dataset(dataset_uri)
    val = set(ds.split_ids("val"))
    gt = ds.boxes.filter(np.array([i in val for i in ds.boxes.column("image_id").to_pylist()]))
    iou = true_iou(preds, gt)
    score = preds.column("score").to_numpy().astype(np.float64)
    keep = score >= args.corr_min_score
    quality = np.asarray(preds.column("loc_quality").to_pylist(), dtype=np.float64)
    has_v = np.isfinite(quality).any()
    result = {
        "head": head, "preset": args.preset, "backbone_weights": args.backbone_weights, "preset_options": head_options(head, args),
        "dataset": args.dataset, "crop_size": args.crop_size, "seed": seed, "iterations": args.iterations,
        "batch_size": args.batch_size, "lr": args.lr, "train_s": round(train_s, 1), "it_per_s": round(tres.it_per_s, 3),
        "final_loss": round(tres.final_loss, 4), "AP": eres["AP"], "AP50": eres["AP50"], "AP75": eres.get("AP75"),
        "predictions": int(keep.sum()), "mean_iou": round(float(iou[keep].mean()), 4) if keep.any() else None,
        "corr_score_iou": correlations(score[keep], iou[keep]),
        "corr_v_iou": correlations(quality[keep], iou[keep]) if has_v else None,
        "mean_v": round(float(np.nanmean(quality[keep])), 4) if has_v and keep.any() else None,
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    if has_v:  # a sample for the scatter plot
        rng = np.random.default_rng(0)
        idx = np.flatnonzero(keep)
        idx = rng.choice(idx, size=min(400, len(idx)), replace=False) if len(idx) else idx
        result["scatter"] = {"v": quality[idx].round(4).tolist(), "iou": iou[idx].round(4).tolist()}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- summary


def summarise(runs: list[dict]) -> list[dict]:
    """Mean +- std over seeds per head."""
    rows = []
    for head in HEADS:
        rs = [r for r in runs if r["head"] == head]
        if not rs:
            continue
        row: dict = {"head": head, "seeds": len(rs), "iterations": rs[0]["iterations"], "preset": rs[0].get("preset", "tiny")}
        values = {
            "AP": [r["AP"] for r in rs], "AP50": [r["AP50"] for r in rs], "AP75": [r["AP75"] for r in rs],
            "train_s": [r["train_s"] for r in rs], "mean_iou": [r["mean_iou"] for r in rs],
            "corr_score_iou": [r["corr_score_iou"]["pearson"] for r in rs],
            "spearman_score_iou": [r["corr_score_iou"]["spearman"] for r in rs],
            "corr_v_iou": [(r["corr_v_iou"] or {}).get("pearson") for r in rs],
            "spearman_v_iou": [(r["corr_v_iou"] or {}).get("spearman") for r in rs],
        }
        for k, v in values.items():
            m, s = mean_std([x for x in v if x is not None])
            row[k], row[f"{k}_std"] = (round(m, 4), round(s, 4)) if not np.isnan(m) else (None, None)
        rows.append(row)
    return rows


def plot(rows: list[dict], runs: list[dict], path: Path, dataset: str = "SynthDrive") -> Path:
    from activedet.plots import save_png, subplots

    fig, (ax, ax2) = subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(rows))
    for off, metric in ((-0.27, "AP"), (0.0, "AP50"), (0.27, "AP75")):
        ax.bar(x + off, [r[metric] for r in rows], 0.27, yerr=[r[f"{metric}_std"] for r in rows], capsize=3, label=metric)
    ax.set_xticks(x, [r["head"] for r in rows])
    ax.set_title(f"{rows[0].get('preset', 'tiny')} teacher, {dataset} val ({rows[0]['iterations']} it, mean +- std over seeds)",
                 fontsize=9)
    ax.legend()
    for r in runs:
        if r.get("scatter") and r["seed"] == min(q["seed"] for q in runs):
            ax2.scatter(r["scatter"]["iou"], r["scatter"]["v"], s=6, alpha=0.5,
                        label=f"{r['head']} (Pearson {r['corr_v_iou']['pearson']})")
    ax2.set_xlabel("true IoU (best same-class GT box)")
    ax2.set_ylabel("v = mean_s max_k sigmoid(t)")
    ax2.set_title("localization quality vs true IoU (first seed)")
    ax2.legend(fontsize=8)
    return save_png(fig, path)


def paired_difference(runs: list[dict], head: str, metric: str) -> str:
    """``head`` minus ``standard`` on ``metric``, paired by seed: mean [95 % bootstrap interval] and verdict."""
    from activedet.al.budget import paired_bootstrap, verdict

    by = {(r["head"], r["seed"]): r[metric] for r in runs if r.get(metric) is not None}
    seeds = sorted(sd for h, sd in by if h == head and ("standard", sd) in by)
    mean, lo, hi = paired_bootstrap([by[(head, sd)] - by[("standard", sd)] for sd in seeds])
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict(lo, hi, len(seeds))}"


def render(payload: dict) -> str:
    rows = payload["summary"]

    def pm(r, k, d=3):
        return fmt_pm(r[k], r[f"{k}_std"], d) if r[k] is not None else "n/a"

    table = [{"head": r["head"], "seeds": r["seeds"], "iterations": r["iterations"], "train_s": f"{r['train_s']:.0f}",
              "AP": pm(r, "AP"), "AP50": pm(r, "AP50"), "AP75": pm(r, "AP75"), "mean_iou": pm(r, "mean_iou"),
              "score_iou": pm(r, "corr_score_iou", 2), "v_iou": pm(r, "corr_v_iou", 2),
              "v_iou_s": pm(r, "spearman_v_iou", 2)} for r in rows]
    s = payload["settings"]
    lines = [
        f"Certainty-aware vs standard box head: preset {s.get('preset', 'tiny')} "
        + ("from scratch" if s.get("backbone_weights", "none") == "none" else f"with {s['backbone_weights']} backbone weights")
        + f" on {dataset_label(s)} "
        f"(val split), {s['iterations']} iterations, batch {s['batch_size']}, lr {s['lr']}, seeds {payload['seeds']}; "
        f"correlations over val predictions with score >= {s['corr_min_score']}; machine load average "
        f"{payload['loadavg_range'][0]}-{payload['loadavg_range'][1]}. Command: `{payload['command']}`. "
        f"Source: `benchmarks/results/{s.get('name') or 'certainty_head'}.json`.",
        "",
        format_table(table, ["head", "seeds", "iterations", "train_s", "AP", "AP50", "AP75", "mean_iou", "score_iou", "v_iou", "v_iou_s"],
                     ["head", "seeds", "iterations", "train s", "AP", "AP50", "AP75", "mean IoU", "Pearson(score, IoU)",
                      "Pearson(v, IoU)", "Spearman(v, IoU)"]),
        "",
    ]
    base = next((r for r in rows if r["head"] == "standard"), None)
    for r in rows:
        if base is None or r is base:
            continue
        diffs = [f"{k} {paired_difference(payload['runs'], r['head'], k)}" for k in ("AP", "AP50", "AP75")]
        v, sc = r["corr_v_iou"], r["corr_score_iou"]
        signal = "" if v is None else (f"; Pearson(v, IoU) {v:.2f} vs Pearson(score, IoU) {sc:.2f}: v is "
                                       + ("the stronger" if v > sc else "the weaker") + " signal of box quality here")
        lines.append(f"- {r['head']} vs standard, mean paired difference over seeds [95 % bootstrap interval]: "
                     + ", ".join(diffs) + signal + ".")
    lines += ["", "Not measured here: schedules longer than the iterations above (Li et al. train "
              "teachers for 6k-180k iterations). The SSL student with `dynamic` on the head's v vs v = 1: `ssl_student.py --filters dynamic dynamic@v1` "
              "(results `ssl_student_certainty_v.json` on SynthDrive, `ssl_student_certainty_v_traffic_cams.json` "
              "on traffic-cams)."]
    return "\n".join(lines) + "\n"


def write_readme_block(text: str, readme: Path = README) -> None:
    """Replace the block between the certainty_head markers of ``readme`` (append a section when absent)."""
    body = readme.read_text()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in body and END in body:
        head, rest = body.split(BEGIN, 1)
        body = head + block + rest.split(END, 1)[1]
    else:
        body = body.rstrip() + "\n\n## Certainty-aware box head (`certainty_head.py`)\n\n" + block + "\n"
    readme.write_text(body)


def build_payload(runs: list[dict], args, started: float) -> dict:
    loads = [x for r in runs for x in r["loadavg_1m"]]
    return {
        "benchmark": "certainty_head", "command": " ".join(["benchmarks/certainty_head.py", *sys.argv[1:]]),
        "machine": machine(), "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": sorted({r["seed"] for r in runs}), "loadavg_range": [min(loads), max(loads)] if loads else [None, None],
        "seconds_this_invocation": round(time.time() - started, 1), "summary": summarise(runs),
        "runs": [{k: v for k, v in r.items() if k != "scatter"} for r in runs], "scatter": [r for r in runs if r.get("scatter")],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-certainty"))
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--preset", default="tiny", help="detector preset (lite0_fpn: the pretrained CPU preset)")
    p.add_argument("--backbone-weights", default="none", help="train-teacher backbone_weights ('none' = from scratch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.04)
    p.add_argument("--sequences", type=int, default=40)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--corr-min-score", type=float, default=0.3)
    p.add_argument("--dataset", choices=("synthdrive", "traffic-cams"), default="synthdrive")
    p.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="train on random H x W full-resolution crops (adds preset option native_scale)")
    p.add_argument("--render", action="store_true", help="only rebuild the tables and plot from finished runs")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the benchmarks/README.md block")
    p.add_argument("--name", default="certainty_head", help="results file name (other than the default: no README block)")
    args = p.parse_args(argv)
    started = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    if args.render:
        for f in sorted((args.work / "runs").glob(f"*-it{args.iterations}{run_tag(args)}.json")):
            runs.append(json.loads(f.read_text()))
    else:
        uri = prepare_dataset(args)
        for seed in args.seeds:
            for head in args.heads:
                progress(f"{head} seed {seed}")
                r = run_one(args.work, uri, head, seed, args)
                progress(f"  AP {r['AP']:.3f} AP75 {r['AP75']:.3f} corr(v, IoU) {r['corr_v_iou']} ({r['train_s']:.0f} s)")
                runs.append(r)
    if not runs:
        raise SystemExit(f"no finished runs under {args.work / 'runs'}")
    payload = build_payload(runs, args, started)
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.name, payload, payload["runs"], args.out)
    short = "traffic-cams" + (f", {args.crop_size[0]}x{args.crop_size[1]} crops" if args.crop_size else "") \
        if args.dataset == "traffic-cams" else "SynthDrive"
    plot(payload["summary"], payload["scatter"], args.out / f"{args.name}.png", short)
    md = render(payload).replace("benchmarks/results/certainty_head.json", f"benchmarks/results/{args.name}.json")
    (args.out / f"{args.name}.md").write_text(md)
    if args.out.resolve() == RESULTS_DIR.resolve() and args.name == "certainty_head" and not args.no_readme:
        write_readme_block(md + "\n![certainty vs standard head](results/certainty_head.png)\n")
    print(md)


if __name__ == "__main__":
    main()
