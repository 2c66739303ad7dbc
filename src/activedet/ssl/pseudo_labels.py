"""The generate-pseudo-labels stage: teacher predictions on the pool -> filtered pseudo boxes.

See :mod:`activedet.stages.generate_pseudo_labels` for the config and outputs. The pieces are
public so benchmarks and tests can reuse them without the store: :func:`split_sets`,
:func:`candidates_from_predictions`, :func:`filter_context`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from activedet import schema, store
from activedet.errors import ActivedetError
from activedet.models.types import ImagePrediction, loc_quality_values
from activedet.ssl.filters import (
    MERGE_IOU,
    MERGE_SCORE,
    FilterContext,
    FilterResult,
    apply_filter,
    merge_stats,
)
from activedet.ssl.quality import flat_metrics, pseudo_label_quality
from activedet.tracking import tracker_for

log = logging.getLogger(__name__)

PSEUDO_BOXES = "pseudo_boxes.parquet"
THRESHOLDS = "thresholds.json"
METRICS = "metrics.json"
POOL_IMAGES = "pool_images.parquet"
#: a generate-pseudo-labels shard's output: its slice's candidates (the filter runs in merge-pseudo-labels)
CANDIDATES = "candidates.parquet"
CANDIDATES_META = "candidates.json"


class EmptyPoolError(ActivedetError):
    """The ledger has no unlabeled train images to pseudo-label."""


def split_sets(dataset, ledger: pa.Table) -> tuple[list[str], list[str]]:
    """``(labeled, pool)``: sorted train image ids in state labeled / unlabeled."""
    from activedet.al.ledger import ids_in_state

    train = set(dataset.split_ids("train"))
    labeled = sorted(i for i in ids_in_state(ledger, "labeled") if i in train)
    pool = sorted(i for i in ids_in_state(ledger, "unlabeled") if i in train)
    return labeled, pool


def filter_context(dataset, labeled: list[str], pool: list[str], seed: int = 0) -> FilterContext:
    """Filter context: labeled GT class counts, ``N_l`` and the pool."""
    lab = set(labeled)
    cats = [c for i, c in zip(dataset.boxes.column("image_id").to_pylist(), dataset.boxes.column("category_id").to_pylist(), strict=True) if i in lab]
    counts = {c: cats.count(c) for c in dataset.category_ids}
    return FilterContext(
        category_ids=dataset.category_ids,
        labeled_counts=counts,
        num_labeled_images=len(labeled),
        pool_image_ids=tuple(pool),
        seed=seed,
    )


def candidates_from_predictions(preds: Iterable[ImagePrediction], *, min_score: float = 0.0, with_merge_stats: bool = False) -> pa.Table:
    """Post-NMS detections as a candidates table (``source = pseudo``, ``class_probs``,
    ``loc_quality``: the certainty head's ``v``, null for the standard head).

    With ``with_merge_stats`` the RPLM columns are computed from each prediction's ``pre_nms``
    candidates and ``merged_into``.
    """
    ids, boxes, cats, scores, probs, quality, m_score, m_iou = [], [], [], [], [], [], [], []
    for p in preds:
        d = p.detections
        ok = (d.scores >= min_score) & (d.boxes[:, 2] > d.boxes[:, 0]) & (d.boxes[:, 3] > d.boxes[:, 1])
        if with_merge_stats:
            if p.pre_nms is None or p.merged_into is None:
                raise ActivedetError(f"prediction of {p.image_id!r} has no pre-NMS candidates (needed by RPLM)")
            ms, mi = merge_stats(d.boxes, p.pre_nms.boxes, p.pre_nms.scores, p.merged_into)
            m_score.append(ms[ok])
            m_iou.append(mi[ok])
        ids += [p.image_id] * int(ok.sum())
        boxes.append(d.boxes[ok])
        cats.append(d.labels[ok])
        scores.append(np.clip(d.scores[ok], 0.0, 1.0))
        probs += [row.tolist() for row in d.class_probs[ok]]
        quality += loc_quality_values(d, ok)
    extra: dict = {"class_probs": probs, "loc_quality": quality}
    if with_merge_stats:
        extra[MERGE_SCORE] = pa.array(np.concatenate(m_score) if m_score else np.zeros(0), pa.float32())
        extra[MERGE_IOU] = pa.array(np.concatenate(m_iou) if m_iou else np.zeros(0), pa.float32())
    return schema.boxes_from_arrays(
        ids,
        np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        np.concatenate(cats) if cats else np.zeros(0, np.int32),
        np.concatenate(scores) if scores else np.zeros(0, np.float32),
        source="pseudo",
        extra=extra,
    )


def pseudo_boxes_table(result: FilterResult, dataset) -> pa.Table:
    """The filter's kept rows as a validated pseudo boxes table (schema columns only)."""
    table, _ = schema.validate_boxes(result.boxes, images=dataset.images, categories=dataset.categories, where=PSEUDO_BOXES)
    return table


def pseudo_pool(dataset, ledger: pa.Table, *, max_pool_images: int | None, seed: int, where: str) -> tuple[list[str], list[str]]:
    """``(labeled, pool)``: the pool to pseudo-label (``max_pool_images`` of it, seeded) and the labeled set.

    Pure in its inputs, so every shard and the merge step compute the same pool.
    """
    labeled, pool = split_sets(dataset, ledger)
    if not pool:
        raise EmptyPoolError(f"{where}: empty pool: no unlabeled train images in the ledger")
    if max_pool_images and len(pool) > max_pool_images:
        rng = np.random.default_rng(seed)
        pool = sorted(np.asarray(pool, dtype=object)[rng.choice(len(pool), max_pool_images, replace=False)].tolist())
    return labeled, pool


def uses_rplm(filter_name: str, params: dict) -> bool:
    """Whether the filter needs the pre-NMS merge statistics (ACT with RPLM)."""
    return filter_name == "act" and bool(params.get("rplm", False))


def predict_candidates(config, dataset, ids: list[str], *, rplm: bool) -> tuple[pa.Table, float]:
    """The teacher's candidates on ``ids`` (``config``: teacher, device, batch size, min_score); and images/s."""
    from activedet.models.checkpoint import load_detector
    from activedet.models.predict import Predictor, resolve_device

    device = resolve_device(config.device)
    teacher = load_detector(config.teacher_checkpoint_uri, dataset=dataset, device=device)
    predictor = Predictor(teacher, device=device, batch_size=config.batch_size, score_floor=config.min_score)
    preds = predictor.predict(dataset, ids, pre_nms=rplm)
    candidates = candidates_from_predictions(preds, min_score=config.min_score, with_merge_stats=rplm)
    return candidates, predictor.images_per_s


def generate_pseudo_labels(config) -> dict:
    """Run the stage (``config``: :class:`activedet.stages.generate_pseudo_labels.Config`).

    Shard ``0/1`` (the default) predicts on the whole pool, filters and writes the pseudo labels.
    Shard ``i/n`` with ``n > 1`` predicts on the ``i``-th slice of the pool only and writes its
    candidates (:data:`CANDIDATES`, :data:`CANDIDATES_META`): the filter needs every candidate of
    the pool (ACT's ranks, the dynamic filter's class sums), so the merge-pseudo-labels stage
    applies it (:func:`merge_pseudo_labels`).
    """
    from activedet.al.ledger import read_ledger
    from activedet.data.dataset import load_dataset
    from activedet.stages.score_unlabeled import parse_shard, pool_digest, shard_slice

    index, count = parse_shard(config.shard)
    dataset = load_dataset(config.dataset_uri)
    ledger, _ = read_ledger(config.ledger_uri)
    labeled, pool = pseudo_pool(dataset, ledger, max_pool_images=config.max_pool_images, seed=config.seed,
                                where=f"generate-pseudo-labels (ledger {config.ledger_uri})")
    context = filter_context(dataset, labeled, pool, seed=config.seed)
    params = dict(config.filter_params)
    # validate the filter name and parameters before the (long) teacher pass
    apply_filter(config.filter, candidates_from_predictions([], with_merge_stats=True), context, params)
    rplm = uses_rplm(config.filter, params)
    tracker = tracker_for(config, run_name="generate-pseudo-labels")
    if count == 1:
        tracker.log_params({"filter": config.filter, **{f"filter_{k}": v for k, v in params.items()}, "pool_images": len(pool)})
        candidates, rate = predict_candidates(config, dataset, pool, rplm=rplm)
        return commit_pseudo_labels(config, dataset, labeled, pool, candidates, teacher_images_per_s=rate, tracker=tracker)
    ids = shard_slice(pool, index, count, align=config.batch_size)
    log.info("generate-pseudo-labels: shard %s: %d of %d pool images", config.shard, len(ids), len(pool))
    candidates, rate = predict_candidates(config, dataset, ids, rplm=rplm) if ids else (candidates_from_predictions([], with_merge_stats=rplm), 0.0)
    meta = {
        "shard": index, "num_shards": count, "pool_size": len(pool), "pool_digest": pool_digest(pool), "images": len(ids),
        "rows": candidates.num_rows, "rplm": rplm, "min_score": config.min_score, "teacher_checkpoint_uri": config.teacher_checkpoint_uri,
        "ledger_uri": config.ledger_uri, "teacher_images_per_s": rate,
    }
    with store.OutputWriter(config.output_uri, meta={"stage": "generate-pseudo-labels", "shard": config.shard}) as out:
        out.write_table(CANDIDATES, candidates)
        out.write_json(CANDIDATES_META, meta)
    tracker.log_metrics({"shard_images": len(ids), "shard_candidates": candidates.num_rows})
    return {"output_uri": config.output_uri, "shard": config.shard, "images": len(ids), "candidates": candidates.num_rows}


def merge_pseudo_labels(config) -> dict:
    """The merge-pseudo-labels stage: every shard's candidates -> the filter over the whole pool -> pseudo labels.

    ``config``: :class:`activedet.stages.merge_pseudo_labels.Config`. Checks the shards are
    complete and were cut from the same pool (digest) by the same teacher; the result (tables,
    thresholds, metrics) is what one unsharded generate-pseudo-labels run writes.
    """
    from activedet.al.ledger import read_ledger
    from activedet.data.dataset import load_dataset
    from activedet.stages.score_unlabeled import pool_digest

    where = "merge-pseudo-labels"
    parts = []
    for uri in config.shard_uris:
        parts.append((store.read_output_json(uri, CANDIDATES_META), store.read_output_table(uri, CANDIDATES)))
    if not parts:
        raise ActivedetError(f"{where}: no shards given")
    parts.sort(key=lambda p: p[0]["shard"])
    count = parts[0][0]["num_shards"]
    got = [m["shard"] for m, _ in parts]
    if got != list(range(count)) or any(m["num_shards"] != count for m, _ in parts):
        raise ActivedetError(f"{where}: expected shards 0..{count - 1} of {count} exactly once, got {got}")
    for key in ("pool_digest", "rplm", "min_score", "teacher_checkpoint_uri", "ledger_uri"):
        values = {str(m.get(key)) for m, _ in parts}
        if len(values) > 1:
            raise ActivedetError(f"{where}: shards disagree on {key!r}: {sorted(values)}")
    dataset = load_dataset(config.dataset_uri)
    ledger, _ = read_ledger(config.ledger_uri)
    labeled, pool = pseudo_pool(dataset, ledger, max_pool_images=config.max_pool_images, seed=config.seed, where=where)
    if pool_digest(pool) != parts[0][0]["pool_digest"]:
        raise ActivedetError(f"{where}: the shards were cut from another pool than ledger {config.ledger_uri} gives")
    candidates = pa.concat_tables([t for _, t in parts], promote_options="permissive").combine_chunks()
    images = sum(m["images"] for m, _ in parts)
    seconds = sum(m["images"] / m["teacher_images_per_s"] for m, _ in parts if m["images"] and m["teacher_images_per_s"])
    tracker = tracker_for(config, run_name=where)
    tracker.log_params({"filter": config.filter, **{f"filter_{k}": v for k, v in config.filter_params.items()},
                        "pool_images": len(pool), "shards": count})
    return commit_pseudo_labels(config, dataset, labeled, pool, candidates, teacher_images_per_s=images / seconds if seconds else 0.0,
                                tracker=tracker, extra_metrics={"shards": count})


def commit_pseudo_labels(config, dataset, labeled: list[str], pool: list[str], candidates: pa.Table, *, teacher_images_per_s: float,
                         tracker, extra_metrics: dict | None = None) -> dict:
    """Filter the pool's candidates with the global context and write the pseudo-label output; the stage result."""
    context = filter_context(dataset, labeled, pool, seed=config.seed)
    result = apply_filter(config.filter, candidates, context, dict(config.filter_params))
    pseudo = pseudo_boxes_table(result, dataset)

    metrics: dict = {
        "pool_images": len(pool),
        "labeled_images": len(labeled),
        "candidates": candidates.num_rows,
        "pseudo_boxes": pseudo.num_rows,
        "reliable_boxes": result.to_json()["reliable"],
        "images_with_pseudo_boxes": len(set(pseudo.column("image_id").to_pylist())),
        "teacher_images_per_s": teacher_images_per_s,
        **(extra_metrics or {}),
    }
    pool_set = set(pool)
    gt = dataset.boxes.filter(pa.array([i in pool_set for i in dataset.boxes.column("image_id").to_pylist()], pa.bool_()))
    if config.quality_report and gt.num_rows:
        metrics["quality"] = pseudo_label_quality(pseudo, gt, dataset.categories)
    with store.OutputWriter(config.output_uri, meta={"stage": "generate-pseudo-labels"}) as out:
        out.write_table(PSEUDO_BOXES, pseudo)
        out.write_json(THRESHOLDS, result.to_json())
        out.write_json(METRICS, metrics)
        # the student trains pool images without pseudo boxes as background: it needs to know
        # which images were pseudo-labeled (max_pool_images may have skipped some)
        out.write_table(POOL_IMAGES, pa.table({"image_id": pa.array(pool, pa.string())}))
    flat = {k: v for k, v in metrics.items() if k != "quality"}
    if "quality" in metrics:
        flat.update(flat_metrics(metrics["quality"]))
    tracker.log_metrics(flat)
    log.info("pseudo-labels: %d of %d candidates kept on %d pool images", pseudo.num_rows, candidates.num_rows, len(pool))
    quality = metrics.get("quality", {})
    return {
        "output_uri": config.output_uri,
        "filter": config.filter,
        "pool_images": len(pool),
        "candidates": candidates.num_rows,
        "pseudo_boxes": pseudo.num_rows,
        "reliable_boxes": metrics["reliable_boxes"],
        "precision": quality.get("precision"),
        "recall": quality.get("recall"),
        "kl_divergence": quality.get("kl_divergence"),
    }


def read_pseudo_labels(uri: str, dataset) -> tuple[pa.Table, dict, list[str] | None]:
    """Read a committed generate-pseudo-labels output.

    Returns ``(pseudo boxes, thresholds document, pseudo-labeled pool image ids or None)``.
    """
    table = store.read_output_table(uri, PSEUDO_BOXES)
    table, _ = schema.validate_boxes(table, images=dataset.images, categories=dataset.categories, where=store.join(uri, PSEUDO_BOXES))
    pool_uri = store.join(uri, POOL_IMAGES)
    pool = store.read_table(pool_uri).column("image_id").to_pylist() if store.exists(pool_uri) else None
    return table, store.read_output_json(uri, THRESHOLDS), pool
