"""merge-pseudo-labels: the generate-pseudo-labels shards' candidates -> one filtered pseudo-label output.

Runs after the ``pseudo_labels.shards`` generate-pseudo-labels shards (a ``dsl.ParallelFor`` on a
cluster). The filters need statistics of the whole pool's candidates -- ACT ranks each class's
candidates against its expected count ``n_c * N_u / N_l``, the dynamic filter divides each
class's confidence sum by the mean over classes -- so no shard can filter its own slice. This
stage checks the shards are complete and cut from the same pool by the same teacher, concatenates
their candidates in pool order, applies the filter once with the global context and writes
exactly what an unsharded generate-pseudo-labels run writes (``pseudo_boxes.parquet``,
``thresholds.json``, ``metrics.json``, ``pool_images.parquet``) where train-student-ssl reads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from activedet.config import StageConfig, config_from

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

NAME = "merge-pseudo-labels"
IMAGE = "cpu"


class Config(StageConfig):
    """Config of the merge-pseudo-labels stage."""

    dataset_uri: str = Field(description="dataset prefix (images, gt boxes, categories)")
    ledger_uri: str = Field(description="the ledger the shards pseudo-labeled (pool and labeled set)")
    shard_uris: list[str] = Field(description="output URIs of the generate-pseudo-labels shards (all n of them, any order)")
    output_uri: str = Field(description="output prefix for pseudo_boxes.parquet, thresholds.json, metrics.json")
    filter: str = Field("fixed", description="pseudo-label filter: fixed, per_class_topk, dynamic, act")
    filter_params: dict[str, Any] = Field({}, description="filter parameters (as for generate-pseudo-labels)")
    max_pool_images: int | None = Field(None, ge=1, description="the shards' pool subsample (must match theirs)")
    quality_report: bool = Field(True, description="compare pseudo-labels with the pool's ground truth when it has any")
    seed: int = Field(0, description="seed of the pool subsample and the filter's estimation subsets")


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int) -> Config:
    """The ``pseudo_labels.shards`` candidate shards of ``cycle`` into its pseudo labels."""
    from activedet.stages.generate_pseudo_labels import check_filter

    check_filter(exp.pseudo_labels.filter, exp.pseudo_labels.params)
    return config_from(
        Config, exp, where=f"{NAME} (cycle {cycle})",
        fields={"filter": "pseudo_labels.filter", "filter_params": "pseudo_labels.params",
                "max_pool_images": "pseudo_labels.max_pool_images"},
        dataset_uri=layout.dataset, ledger_uri=layout.ledger(cycle),
        shard_uris=[layout.pseudo_candidates(cycle, i) for i in range(exp.pseudo_labels.shards)],
        output_uri=layout.pseudo_labels(cycle), seed=exp.seed + cycle,
    )


def run(config: Config) -> dict:
    """Filter all shards' candidates together; returns what generate-pseudo-labels returns."""
    from activedet.ssl.pseudo_labels import merge_pseudo_labels

    return merge_pseudo_labels(config)
