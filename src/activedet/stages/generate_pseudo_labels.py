"""Run the teacher on the unlabeled pool and keep pseudo-labels with a registered filter.

Reads a teacher checkpoint, a dataset and a ledger (pool = train images in state ``unlabeled``),
predicts on every pool image (weak view: the original image, no augmentation), keeps the
detector's post-NMS detections as candidates and applies a filter from
:data:`activedet.ssl.filters.FILTERS` (``fixed``, ``per_class_topk``, ``dynamic``, ``act``).
Writes, atomically under ``output_uri``:

* ``pseudo_boxes.parquet`` -- boxes table (source = pseudo) with ``score``, ``category_id``,
  ``reliable``, ``class_probs`` (and ``loc_quality`` when the detector gives it);
* ``thresholds.json`` -- the filter, its parameters and per-class thresholds / loss weights;
* ``metrics.json`` -- counts and, where the pool has ground truth, the pseudo-label quality
  report (precision / recall at IoU 0.5, KL divergence of class distributions).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from activedet.config import StageConfig


class Config(StageConfig):
    """Config of the generate-pseudo-labels stage."""

    teacher_checkpoint_uri: str = Field(description="teacher checkpoint (output prefix of train-teacher)")
    dataset_uri: str = Field(description="dataset prefix (images, gt boxes, categories)")
    ledger_uri: str = Field(
        description="committed ledger output (ledger.parquet); pool = train images in state 'unlabeled', labeled set = state 'labeled'"
    )
    output_uri: str = Field(description="output prefix for pseudo_boxes.parquet, thresholds.json, metrics.json")
    filter: str = Field("fixed", description="pseudo-label filter: fixed, per_class_topk, dynamic, act")
    filter_params: dict[str, Any] = Field(
        {},
        description="filter parameters, e.g. {tau: 0.99} (fixed), {k: 20} (per_class_topk), "
        "{tau: 0.7, gamma1: 0.05, gamma2: 0.6} (dynamic), {alpha: 20, rplm: true} (act)",
    )
    min_score: float = Field(0.05, ge=0.0, le=1.0, description="teacher detections below this score are not candidates")
    batch_size: int = Field(8, ge=1, description="images per teacher forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device for the teacher (auto: cuda when available)")
    max_pool_images: int | None = Field(
        None, ge=1, description="pseudo-label at most this many pool images (random, seeded); all when unset"
    )
    quality_report: bool = Field(True, description="compare pseudo-labels with the pool's ground truth when it has any")
    seed: int = Field(0, description="seed for pool subsampling and filter estimation subsets")


def run(config: Config) -> dict:
    """Pseudo-label the pool; returns counts, thresholds and (when GT exists) quality metrics."""
    from activedet.ssl.pseudo_labels import generate_pseudo_labels

    return generate_pseudo_labels(config)
