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

Sharded (``shard: i/n`` with ``n > 1``, from ``pseudo_labels.shards``): the stage predicts on the
``i``-th contiguous slice of the sorted pool only (cut at multiples of ``batch_size``, like
score-unlabeled) and writes that slice's candidates (``candidates.parquet`` + ``candidates.json``)
under ``output_uri``; the merge-pseudo-labels stage then filters all candidates together, since
ACT's ranks and the dynamic filter's class sums are statistics of the whole pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from activedet.config import StageConfig, config_from
from activedet.errors import ConfigError

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

NAME = "generate-pseudo-labels"
IMAGE = "gpu"


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
    shard: str = Field("0/1", description="'i/n': predict on the i-th of n slices of the pool and write its candidates "
                       "(n > 1: merge-pseudo-labels filters them); 0/1: the whole pool, filtered")

    @field_validator("shard")
    @classmethod
    def _shard_format(cls, value: str) -> str:
        from activedet.stages.score_unlabeled import parse_shard

        parse_shard(value)
        return value


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int, shard: int = 0) -> Config:
    """Cycle ``cycle``'s pseudo-labels: the teacher on the pool, the experiment's filter.

    With ``pseudo_labels.shards`` > 1: shard ``shard``'s candidates (merge-pseudo-labels filters them).
    """
    check_filter(exp.pseudo_labels.filter, exp.pseudo_labels.params)
    shards = exp.pseudo_labels.shards
    output = layout.pseudo_labels(cycle) if shards == 1 else layout.pseudo_candidates(cycle, shard)
    return config_from(
        Config, exp, where=f"{NAME} (cycle {cycle})",
        fields={"filter": "pseudo_labels.filter", "filter_params": "pseudo_labels.params", "min_score": "pseudo_labels.min_score",
                "max_pool_images": "pseudo_labels.max_pool_images", "device": "device"},
        teacher_checkpoint_uri=layout.teacher(cycle), dataset_uri=layout.dataset, ledger_uri=layout.ledger(cycle),
        output_uri=output, seed=exp.seed + cycle, shard=f"{shard}/{shards}",
    )


def check_filter(name: str, params: dict[str, Any]) -> None:
    """Fail at load on an unknown filter or bad filter parameters: a dry run on no candidates."""
    from activedet.ssl.filters import FILTERS, FilterContext, apply_filter
    from activedet.ssl.pseudo_labels import candidates_from_predictions

    if name not in FILTERS:
        raise ConfigError(f"pseudo_labels.filter: unknown pseudo-label filter {name!r}; valid: {', '.join(FILTERS.names())}")
    context = FilterContext(category_ids=[1], labeled_counts={1: 1}, num_labeled_images=1)
    try:
        apply_filter(name, candidates_from_predictions([], with_merge_stats=True), context, params)
    except ConfigError as exc:
        raise ConfigError(f"pseudo_labels.params: {exc}") from None
    except TypeError as exc:  # e.g. tau: high
        raise ConfigError(f"pseudo_labels.params: filter {name!r}: bad parameter value ({exc})") from None


def run(config: Config) -> dict:
    """Pseudo-label the pool; returns counts, thresholds and (when GT exists) quality metrics."""
    from activedet.ssl.pseudo_labels import generate_pseudo_labels

    return generate_pseudo_labels(config)
