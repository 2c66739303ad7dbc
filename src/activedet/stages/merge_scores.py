"""merge-scores: combine score-unlabeled shards into the table one shard would give.

Takes the outputs of shards ``0/n .. n-1/n`` (any order), checks they are complete, come from
the same pool (digest) and score the same columns, and concatenates them in shard order, which
is the pool's image_id order: the result equals a single ``0/1`` run row for row.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa
from pydantic import BaseModel, Field

from activedet import schema, store
from activedet.config import StageConfig, config_from
from activedet.errors import ActivedetError
from activedet.stages.score_unlabeled import SCORES_FILE, SCORES_META

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "merge-scores"
IMAGE = "cpu"


class Config(StageConfig):
    shard_uris: list[str] = Field(description="output URIs of the score-unlabeled shards (all n of them, any order)")
    output_uri: str = Field(description="output prefix for the merged scores.parquet / scores.json")


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int) -> Config:
    """The ``acquisition.shards`` score tables of ``cycle`` into one."""
    shards = [layout.scores_shard(cycle, i) for i in range(exp.acquisition.shards)]
    return config_from(Config, exp, where=f"{NAME} (cycle {cycle})", shard_uris=shards, output_uri=layout.scores(cycle))


class Result(BaseModel):
    scores_uri: str
    rows: int
    shards: int


def merge_tables(parts: list[tuple[dict, pa.Table]], where: str = "merge-scores") -> tuple[pa.Table, dict]:
    """Merge ``(meta, table)`` shard outputs; returns the merged table and its meta."""
    if not parts:
        raise ActivedetError(f"{where}: no shards given")
    parts = sorted(parts, key=lambda p: p[0]["shard"])
    count = parts[0][0]["num_shards"]
    got = [m["shard"] for m, _ in parts]
    if got != list(range(count)) or any(m["num_shards"] != count for m, _ in parts):
        raise ActivedetError(f"{where}: expected shards 0..{count - 1} of {count} exactly once, got {got}")
    for key in ("pool_digest", "scores", "embedding", "ledger_uri", "include_labeled", "checkpoint_uri", "batch_size", "seed"):
        values = {str(m.get(key)) for m, _ in parts}
        if len(values) > 1:
            raise ActivedetError(f"{where}: shards disagree on {key!r}: {sorted(values)}")
    nonempty = [t for _, t in parts if t.num_rows]
    table = pa.concat_tables(nonempty) if nonempty else parts[0][1]
    table = schema.validate_scores(table.combine_chunks(), where=where)
    meta = {**parts[0][0], "shard": 0, "num_shards": 1, "rows": table.num_rows, "merged_from": count}
    return table, meta


def run(config: Config) -> Result:
    parts = []
    for uri in config.shard_uris:
        meta = store.read_output_json(uri, SCORES_META)
        parts.append((meta, store.read_output_table(uri, SCORES_FILE)))
    table, meta = merge_tables(parts)
    with store.OutputWriter(config.output_uri) as out:
        out.write_table(SCORES_FILE, table)
        out.write_json(SCORES_META, {**meta, "shard_uris": list(config.shard_uris)})
    log.info("merge-scores: %d shard(s), %d rows", len(parts), table.num_rows)
    return Result(scores_uri=config.output_uri, rows=table.num_rows, shards=len(parts))
