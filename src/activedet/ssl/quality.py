"""Pseudo-label quality against ground truth (simulation and benchmarks).

:func:`pseudo_label_quality` compares a pseudo boxes table with the ground truth of the same
images: precision and recall at IoU 0.5 (greedy matching by descending score, class-aware, each
ground-truth box matched at most once) and the KL divergence between the ground-truth and the
pseudo-label class distributions, overall and per class.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pyarrow as pa

from activedet.ssl.filters import box_iou

#: probability floor in the KL divergence so a class missing from the pseudo-labels is finite
KL_EPS = 1e-6


def _by_image_class(table: pa.Table) -> dict[tuple[str, int], np.ndarray]:
    """Row indices grouped by (image_id, category_id)."""
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(table.column("image_id").to_pylist(), table.column("category_id").to_pylist(), strict=True)):
        groups[(key[0], int(key[1]))].append(i)
    return {k: np.asarray(v) for k, v in groups.items()}


def _xyxy(table: pa.Table) -> np.ndarray:
    return np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64) if table.num_rows else np.zeros((0, 4))


def match_tp(pseudo: pa.Table, gt: pa.Table, iou_threshold: float = 0.5) -> np.ndarray:
    """Boolean ``[len(pseudo)]``: whether each pseudo box matches a ground-truth box.

    Greedy per (image, class): pseudo boxes by descending score take the unmatched GT box with the
    highest IoU when that IoU is ``>= iou_threshold``.
    """
    tp = np.zeros(pseudo.num_rows, bool)
    if not pseudo.num_rows or not gt.num_rows:
        return tp
    pboxes, gboxes = _xyxy(pseudo), _xyxy(gt)
    scores = np.asarray(pseudo.column("score").to_numpy(zero_copy_only=False), np.float64)
    gt_groups = _by_image_class(gt)
    for key, pidx in _by_image_class(pseudo).items():
        gidx = gt_groups.get(key)
        if gidx is None:
            continue
        pidx = pidx[np.argsort(-scores[pidx], kind="stable")]
        ious = box_iou(pboxes[pidx], gboxes[gidx])
        taken = np.zeros(len(gidx), bool)
        for row, p in enumerate(pidx):
            cand = np.where(taken, -1.0, ious[row])
            j = int(np.argmax(cand))
            if cand[j] >= iou_threshold:
                taken[j] = True
                tp[p] = True
    return tp


def _kl(p: np.ndarray, q: np.ndarray) -> tuple[float, np.ndarray]:
    """KL(p || q) with both floored at KL_EPS and renormalised; also the per-class terms."""
    p = np.maximum(p, KL_EPS)
    q = np.maximum(q, KL_EPS)
    p, q = p / p.sum(), q / q.sum()
    terms = p * np.log(p / q)
    return float(terms.sum()), terms


def _safe_div(a: float, b: float) -> float | None:
    return a / b if b else None


def pseudo_label_quality(pseudo_boxes: pa.Table, gt_boxes: pa.Table, categories: pa.Table, *, iou_threshold: float = 0.5) -> dict:
    """Quality of pseudo-labels against ground truth on the same images.

    ``gt_boxes`` must be restricted to the pseudo-labeled images (the pool). Returns a JSON-friendly
    dict: ``precision``, ``recall``, ``kl_divergence`` = KL(GT class distribution || pseudo class
    distribution), counts, the same for reliable boxes only (when a ``reliable`` column exists),
    and ``per_class`` keyed by category name with precision, recall, counts, both class shares and
    the class's KL term. Precision/recall are None when undefined (nothing to divide by).
    """
    cat_ids = sorted(int(c) for c in categories.column("id").to_pylist())
    names = dict(zip((int(c) for c in categories.column("id").to_pylist()), categories.column("name").to_pylist(), strict=True))
    tp = match_tp(pseudo_boxes, gt_boxes, iou_threshold)
    p_cats = np.asarray(pseudo_boxes.column("category_id").to_numpy(zero_copy_only=False), np.int64) if pseudo_boxes.num_rows else np.zeros(0, np.int64)
    g_cats = np.asarray(gt_boxes.column("category_id").to_numpy(zero_copy_only=False), np.int64) if gt_boxes.num_rows else np.zeros(0, np.int64)
    p_counts = np.array([(p_cats == c).sum() for c in cat_ids], np.float64)
    g_counts = np.array([(g_cats == c).sum() for c in cat_ids], np.float64)
    p_share = p_counts / p_counts.sum() if p_counts.sum() else np.zeros(len(cat_ids))
    g_share = g_counts / g_counts.sum() if g_counts.sum() else np.zeros(len(cat_ids))
    kl, terms = _kl(g_share, p_share) if p_counts.sum() and g_counts.sum() else (math.nan, np.full(len(cat_ids), math.nan))
    report = {
        "iou_threshold": iou_threshold,
        "num_pseudo": int(pseudo_boxes.num_rows),
        "num_gt": int(gt_boxes.num_rows),
        "true_positives": int(tp.sum()),
        "precision": _safe_div(float(tp.sum()), pseudo_boxes.num_rows),
        "recall": _safe_div(float(tp.sum()), gt_boxes.num_rows),
        "kl_divergence": None if math.isnan(kl) else kl,
        "per_class": {},
    }
    if "reliable" in pseudo_boxes.column_names and pseudo_boxes.num_rows:
        rel = np.asarray(pseudo_boxes.column("reliable").to_numpy(zero_copy_only=False), bool)
        report["reliable_precision"] = _safe_div(float((tp & rel).sum()), float(rel.sum()))
        report["reliable_recall"] = _safe_div(float((tp & rel).sum()), gt_boxes.num_rows)
        report["num_reliable"] = int(rel.sum())
    for k, c in enumerate(cat_ids):
        in_c = p_cats == c
        report["per_class"][names[c]] = {
            "category_id": c,
            "num_pseudo": int(p_counts[k]),
            "num_gt": int(g_counts[k]),
            "precision": _safe_div(float(tp[in_c].sum()), p_counts[k]),
            "recall": _safe_div(float(tp[in_c].sum()), g_counts[k]),
            "pseudo_share": float(p_share[k]),
            "gt_share": float(g_share[k]),
            "kl_term": None if math.isnan(terms[k]) else float(terms[k]),
        }
    return report


def flat_metrics(report: dict, prefix: str = "pseudo_") -> dict[str, float]:
    """Numeric entries of a quality report flattened for MLflow (``pseudo_precision``, ``pseudo_car_recall``...)."""
    out = {}
    for key, value in report.items():
        if key == "per_class":
            for name, stats in value.items():
                for k in ("precision", "recall", "num_pseudo", "kl_term"):
                    if stats.get(k) is not None:
                        out[f"{prefix}{name}_{k}"] = float(stats[k])
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
            out[f"{prefix}{key}"] = float(value)
    return out
