"""COCO-style detection metrics with pycocotools, from activedet box tables.

:func:`coco_evaluate` builds pycocotools ``COCO`` objects in memory from a ground-truth boxes table
and a predictions boxes table (xyxy -> xywh, string image ids -> ints), runs ``COCOeval`` (bbox)
and returns AP, AP50, AP75, APs/m/l, AR@1/10/100, per-class AP/AP50 and the AP over the ``k``
rarest classes. No predictions gives 0.0, not a crash.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet(fn, *args):
    """pycocotools prints progress on stdout; keep library output on the logger instead."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = fn(*args)
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("pycocotools: %s", line)
    return out


def to_coco(boxes: pa.Table, images: pa.Table, categories: pa.Table, image_index: dict[str, int], *, predictions: bool) -> dict:
    """A COCO-format dict (``images``, ``annotations``, ``categories``) of a boxes table."""
    ids = images.column("image_id").to_pylist()
    widths, heights = images.column("width").to_pylist(), images.column("height").to_pylist()
    imgs = [{"id": image_index[i], "width": w, "height": h} for i, w, h in zip(ids, widths, heights, strict=False) if i in image_index]
    cats = [{"id": int(c), "name": n} for c, n in zip(categories.column("id").to_pylist(), categories.column("name").to_pylist(), strict=False)]
    anns = []
    keep = [i in image_index for i in boxes.column("image_id").to_pylist()]
    boxes = boxes.filter(pa.array(keep, pa.bool_()))
    cols = {c: boxes.column(c).to_numpy().astype(np.float64) for c in ("x1", "y1", "x2", "y2", "score")}
    crowd = boxes.column("iscrowd").to_pylist() if "iscrowd" in boxes.column_names else [False] * boxes.num_rows
    for k, (iid, cat) in enumerate(zip(boxes.column("image_id").to_pylist(), boxes.column("category_id").to_pylist(), strict=False)):
        w = cols["x2"][k] - cols["x1"][k]
        h = cols["y2"][k] - cols["y1"][k]
        ann = {
            "id": k + 1,
            "image_id": image_index[iid],
            "category_id": int(cat),
            "bbox": [cols["x1"][k], cols["y1"][k], w, h],
            "area": w * h,
            "iscrowd": int(bool(crowd[k])) if not predictions else 0,
        }
        if predictions:
            ann["score"] = cols["score"][k]
        anns.append(ann)
    return {"images": imgs, "annotations": anns, "categories": cats}


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def _mean_valid(x: np.ndarray) -> float | None:
    x = x[x > -1]
    return float(x.mean()) if x.size else None


def rarest_classes(counts: dict[int, int], k: int) -> list[int]:
    """The ``k`` category ids with the fewest labeled boxes (ties broken by id)."""
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:k]]


def coco_evaluate(
    gt: pa.Table,
    preds: pa.Table,
    images: pa.Table,
    categories: pa.Table,
    *,
    image_ids: list[str] | None = None,
    rare_ids: list[int] | None = None,
) -> dict:
    """COCOeval (bbox) of ``preds`` against ``gt`` on ``image_ids`` (default: all of ``images``).

    Returns ``{"metrics": {...}, "per_class": [...]}``. Metrics are in [0, 1]; a metric that is
    undefined (no ground truth at all) is ``None``. ``rare_ids`` adds ``AP_rare`` (mean per-class
    AP over those categories that have ground truth).
    """
    from pycocotools.cocoeval import COCOeval

    ids = list(images.column("image_id").to_pylist() if image_ids is None else image_ids)
    image_index = {iid: k + 1 for k, iid in enumerate(ids)}
    gt_coco = _coco(to_coco(gt, images, categories, image_index, predictions=False))
    dt_coco = _coco(to_coco(preds, images, categories, image_index, predictions=True))
    ev = COCOeval(gt_coco, dt_coco, "bbox")
    ev.params.imgIds = sorted(image_index.values())
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    metrics: dict[str, float | None] = {n: (float(v) if v > -1 else None) for n, v in zip(STAT_NAMES, ev.stats, strict=False)}
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    names = dict(zip(categories.column("id").to_pylist(), categories.column("name").to_pylist(), strict=False))
    gt_counts = _count(gt, image_index)
    pred_counts = _count(preds, image_index)
    per_class = []
    for k, cat in enumerate(ev.params.catIds):
        per_class.append(
            {
                "category_id": int(cat),
                "name": names.get(cat, str(cat)),
                "ap": _mean_valid(precision[:, :, k, 0, -1]),
                "ap50": _mean_valid(precision[0, :, k, 0, -1]),
                "num_gt": gt_counts.get(cat, 0),
                "num_pred": pred_counts.get(cat, 0),
            }
        )
    if rare_ids is not None:
        aps = [r["ap"] for r in per_class if r["category_id"] in set(rare_ids) and r["ap"] is not None]
        metrics["AP_rare"] = float(np.mean(aps)) if aps else None
    metrics["num_images"] = len(ids)
    metrics["num_gt"] = sum(gt_counts.values())
    metrics["num_pred"] = sum(pred_counts.values())
    return {"metrics": metrics, "per_class": per_class, "stats": [float(s) for s in ev.stats]}


def _count(boxes: pa.Table, image_index: dict[str, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for iid, c in zip(boxes.column("image_id").to_pylist(), boxes.column("category_id").to_pylist(), strict=False):
        if iid in image_index:
            out[int(c)] = out.get(int(c), 0) + 1
    return out


def per_class_table(per_class: list[dict]) -> pa.Table:
    """The per-class results as a table (AP columns nullable)."""
    return pa.table(
        {
            "category_id": pa.array([r["category_id"] for r in per_class], pa.int32()),
            "name": pa.array([r["name"] for r in per_class], pa.string()),
            "ap": pa.array([r["ap"] for r in per_class], pa.float64()),
            "ap50": pa.array([r["ap50"] for r in per_class], pa.float64()),
            "num_gt": pa.array([r["num_gt"] for r in per_class], pa.int64()),
            "num_pred": pa.array([r["num_pred"] for r in per_class], pa.int64()),
            "rare": pa.array([bool(r.get("rare", False)) for r in per_class], pa.bool_()),
        }
    )


def plot_per_class(per_class: list[dict], path: str | Path, *, title: str = "per-class AP") -> Path:
    """Bar chart of per-class AP and AP50 (PNG, matplotlib Agg)."""
    from activedet.plots import save_png, subplots

    names = [r["name"] + (" *" if r.get("rare") else "") for r in per_class]
    ap = [r["ap"] if r["ap"] is not None else math.nan for r in per_class]
    ap50 = [r["ap50"] if r["ap50"] is not None else math.nan for r in per_class]
    x = np.arange(len(names))
    fig, ax = subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.5))
    ax.bar(x - 0.2, ap, 0.4, label="AP")
    ax.bar(x + 0.2, ap50, 0.4, label="AP50")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP")
    ax.set_title(title + ("  (* = rare)" if any(r.get("rare") for r in per_class) else ""))
    ax.legend()
    return save_png(fig, path)
