"""Evaluate a detector (or a predictions table) against ground truth with pycocotools.

Runs the checkpoint on the images of ``split`` (or reads ``predictions_uri``), then COCOeval
(bbox): AP, AP50, AP75, APs/m/l, AR@1/10/100, per-class AP/AP50, and ``AP_rare``, the mean AP
of the rare classes. The rare set is the same in every cycle of a run: the ``rare_classes``
given by name, or the ``rare_k`` classes with the fewest ground-truth boxes over the whole train
split (not over the labeled set, which changes every cycle). When ``rare_k`` covers every class,
``AP_rare`` would only repeat AP and is not reported. Writes ``metrics.json``,
``per_class.parquet``, ``per_class.csv``, ``per_class_ap.png`` and, when it ran a model,
``predictions.parquet``; logs ``metrics.<name>`` and ``metrics.AP_class.<class>`` to MLflow when
configured (the names docs/pipeline.md lists).
"""

from __future__ import annotations

import csv
import io
import logging
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from activedet import schema, store
from activedet.config import StageConfig, config_from
from activedet.errors import ActivedetError, ConfigError
from activedet.models.evaluation import STAT_NAMES

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "evaluate"
IMAGE = "gpu"
#: the summary file of the output ({"metrics": {...}, ...}): what select-batch, promote and the
#: cycle end read
METRICS_FILE = "metrics.json"
#: metric names of ``metrics.json`` a run may stop on or promote by (the "AP family")
METRICS = (*STAT_NAMES, "AP_rare")


class Config(StageConfig):
    """Config of the evaluate stage."""

    dataset_uri: str = Field(description="dataset prefix (images, gt boxes, categories)")
    split: str = Field("val", description="split to evaluate on (train, val, test)")
    checkpoint_uri: str | None = Field(None, description="checkpoint to run (exactly one of checkpoint_uri / predictions_uri)")
    predictions_uri: str | None = Field(
        None, description="boxes table to evaluate: a .parquet URI, or an output prefix holding predictions.parquet / boxes.parquet"
    )
    output_uri: str = Field(description="output prefix for metrics.json, per_class.parquet/.csv, per_class_ap.png")
    ledger_uri: str | None = Field(None, description="ledger whose labeled images give per_class's labeled_boxes column")
    rare_k: int = Field(10, ge=0, description="AP_rare over this many rarest classes (fewest ground-truth boxes in the train split)")
    rare_classes: list[str] | None = Field(None, description="the rare classes by name (instead of the rare_k rarest)")
    batch_size: int = Field(8, ge=1, description="inference batch size")
    score_floor: float = Field(0.01, ge=0.0, lt=1.0, description="drop detections scoring at or below this")
    nms_iou: float = Field(0.5, gt=0.0, le=1.0, description="per-class NMS IoU")
    max_dets: int = Field(100, ge=1, description="detections kept per image")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device (auto: cuda when available)")

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        if (self.checkpoint_uri is None) == (self.predictions_uri is None):
            raise ValueError("give exactly one of checkpoint_uri and predictions_uri")
        return self


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int) -> Config:
    """COCO AP of cycle ``cycle``'s model (student with SSL, else teacher) on the val split."""
    return config_from(
        Config, exp, where=f"{NAME} (cycle {cycle})",
        fields={"device": "device", "rare_k": "evaluation.rare_k", "rare_classes": "evaluation.rare_classes"},
        checkpoint_uri=layout.model(cycle), dataset_uri=layout.dataset, ledger_uri=layout.ledger(cycle), output_uri=layout.eval(cycle),
    )


def read_predictions(uri: str):
    """A boxes table from a ``.parquet`` URI or a committed output prefix."""
    if uri.endswith(".parquet"):
        return store.read_table(uri)
    store.require_committed(uri)
    for name in ("predictions.parquet", "boxes.parquet", "pseudo_boxes.parquet"):
        if store.exists(store.join(uri, name)):
            return store.read_table(store.join(uri, name))
    raise ConfigError(f"evaluate: no predictions.parquet or boxes.parquet under {uri}")


def labeled_counts(dataset, ledger_uri: str | None) -> dict[int, int]:
    """Ground-truth boxes per category over the labeled train images."""
    from activedet.stages.train_teacher import labeled_ids

    try:
        ids = set(labeled_ids(dataset, ledger_uri))
    except ActivedetError:  # an empty labeled set: every class counts 0
        log.warning("evaluate: no labeled images found for the rare-class frequency; counting 0 for all")
        ids = set()
    return _box_counts(dataset, ids)


def _box_counts(dataset, ids: set[str]) -> dict[int, int]:
    counts = {int(c): 0 for c in dataset.category_ids}
    for iid, c in zip(dataset.boxes.column("image_id").to_pylist(), dataset.boxes.column("category_id").to_pylist(), strict=False):
        if iid in ids:
            counts[int(c)] += 1
    return counts


def rare_class_ids(dataset, *, k: int, names: list[str] | None) -> list[int] | None:
    """The run's rare classes: ``names`` (by class name), else the ``k`` with fewest train-split boxes.

    ``None`` when there is no distinct rare set (``k`` = 0, or ``k`` covers every class: AP_rare
    would equal AP). Unknown names raise :class:`ConfigError` listing the valid ones.
    """
    from activedet.models.evaluation import rarest_classes

    by_name = dict(zip(dataset.class_names, dataset.category_ids, strict=True))
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"evaluation.rare_classes: unknown class {unknown[0]!r}; valid: {', '.join(by_name)}")
        return [int(by_name[n]) for n in names]
    if k <= 0 or k >= len(by_name):
        return None
    return rarest_classes(_box_counts(dataset, set(dataset.split_ids("train"))), k)


def run(config: Config) -> dict:
    """Evaluate; returns the metrics and the output URI."""
    from activedet.data.dataset import load_dataset
    from activedet.models.evaluation import coco_evaluate, per_class_table, plot_per_class
    from activedet.tracking import tracker_for

    dataset = load_dataset(config.dataset_uri)
    ids = dataset.split_ids(config.split)
    if not ids:
        raise ConfigError(f"evaluate: split {config.split!r} of {config.dataset_uri} has no images")
    images_per_s = None
    if config.checkpoint_uri:
        from activedet.models.checkpoint import load_detector
        from activedet.models.predict import Predictor, predictions_to_boxes_table

        detector = load_detector(config.checkpoint_uri, dataset=dataset, device="cpu")
        predictor = Predictor(
            detector, device=config.device, batch_size=config.batch_size, score_floor=config.score_floor,
            nms_iou=config.nms_iou, max_dets=config.max_dets,
        )
        preds = predictions_to_boxes_table(predictor.predict(dataset, ids), dataset)
        images_per_s = predictor.images_per_s
    else:
        preds, _ = schema.validate_boxes(
            read_predictions(config.predictions_uri), images=dataset.images, categories=dataset.categories,
            where=config.predictions_uri,
        )
    counts = labeled_counts(dataset, config.ledger_uri)
    rare = rare_class_ids(dataset, k=config.rare_k, names=config.rare_classes)
    if rare is None and config.rare_k and not config.rare_classes:
        log.info("evaluate: rare_k %d covers all %d classes: AP_rare not reported (it would equal AP)",
                 config.rare_k, len(dataset.category_ids))
    result = coco_evaluate(dataset.boxes, preds, dataset.images, dataset.categories, image_ids=ids, rare_ids=rare)
    per_class = result["per_class"]
    for r in per_class:
        r["rare"] = rare is not None and r["category_id"] in rare
        r["labeled_boxes"] = counts.get(r["category_id"], 0)
    metrics = dict(result["metrics"])
    if images_per_s is not None:
        metrics["images_per_s"] = images_per_s
    summary = {
        "metrics": metrics,
        "per_class": per_class,
        "rare_classes": rare or [],
        "split": config.split,
        "dataset_uri": config.dataset_uri,
        "checkpoint_uri": config.checkpoint_uri,
        "predictions_uri": config.predictions_uri,
    }
    with store.OutputWriter(config.output_uri, meta={"stage": "evaluate"}) as out:
        out.write_json(METRICS_FILE, summary)
        out.write_table("per_class.parquet", per_class_table(per_class))
        out.write_bytes("per_class.csv", _csv(per_class).encode())
        png = plot_per_class(per_class, out.local_file("per_class_ap.png"), title=f"per-class AP ({config.split})")
        out.add_file("per_class_ap.png", png)
        if config.checkpoint_uri:
            out.write_table("predictions.parquet", preds)
        tracker = tracker_for(config, run_name="evaluate")
        tracker.log_params({"split": config.split, "checkpoint_uri": config.checkpoint_uri, "predictions_uri": config.predictions_uri})
        tracker.log_metrics(mlflow_metrics(metrics, per_class))
        tracker.log_artifact(png, "evaluate")
    log.info("evaluate: AP %.4f AP50 %.4f on %d %s images", metrics["AP"] or 0.0, metrics["AP50"] or 0.0, len(ids), config.split)
    return {"output_uri": config.output_uri, **{k: v for k, v in metrics.items()}}


def mlflow_metrics(metrics: dict, per_class: list[dict]) -> dict[str, float]:
    """The MLflow names of an evaluation: ``metrics.<name>`` and ``metrics.AP_class.<class>`` (one name per quantity)."""
    out = {f"metrics.{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"metrics.AP_class.{r['name']}": float(r["ap"]) for r in per_class if r.get("ap") is not None})
    return out


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["category_id", "name", "ap", "ap50", "num_gt", "num_pred", "labeled_boxes", "rare"]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
