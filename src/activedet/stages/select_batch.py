"""select-batch: choose the next batch to label and write a new ledger version.

Pool = the ledger's unlabeled images of the split (labeled and pending images are never
selected; their embeddings are core-set's initial centers). Strategies: see
:mod:`activedet.al.selection` (random, uniform, topk, coreset, uniform_topk, prefilter_coreset,
unified, class_balanced, auto). What a strategy measured or decided (``auto``: the pool's
redundancy, the labeled share and the strategy it chose) goes into ``selection.json``, the result,
the log and the stage's MLflow run.

Output (``output_uri``): ``selection.parquet`` (schema.SELECTION, rank from 0),
``selection.json`` and a new ledger (``ledger.parquet`` / ``ledger.json``) in which the selected
images are ``pending`` with cycle = ``cycle``; the input ledger is untouched.

Edge cases: a budget larger than the pool selects the whole pool (logged). An empty pool is not
an error: the selection is empty, the ledger is carried over, and the result says
``exhausted: true`` so a pipeline can stop the loop gracefully.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from activedet import schema, store
from activedet.al import ledger as ledger_mod
from activedet.al.scores import SCORES
from activedet.al.selection import (  # noqa: F401 (read_selection: re-exported for callers of the stage)
    RANKS_BY_SCORE,
    READS_MODEL_QUALITY,
    SELECTION_FILE,
    STRATEGIES,
    SelectionInput,
    SelectionParams,
    read_selection,
    required_columns,
    select,
)
from activedet.config import StageConfig, config_from
from activedet.errors import ActivedetError, ConfigError
from activedet.stages.evaluate import METRICS_FILE
from activedet.stages.score_unlabeled import SCORES_FILE
from activedet.tracking import tracker_for

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "select-batch"
IMAGE = "cpu"

SELECTION_META = "selection.json"


class Config(StageConfig):
    dataset_uri: str = Field(description="dataset URI (images table: sequences and frames for uniform)")
    ledger_uri: str = Field(description="current ledger URI")
    output_uri: str = Field(description="output prefix: selection.parquet and the new ledger")
    strategy: str = Field("random", description="selection strategy: " + ", ".join(STRATEGIES.names()))
    budget: int = Field(ge=0, description="number of images to select (B)")
    scores_uri: str | None = Field(None, description="score-unlabeled (or merge-scores) output; not needed by random/uniform")
    score: str = Field(SelectionParams.score, description="score column for topk, uniform_topk, prefilter_coreset, class_balanced")
    seed: int = Field(0, description="random seed (combined with the cycle)")
    cycle: int | None = Field(None, description="cycle number of this selection (default: the ledger's cycle + 1)")
    uniform_n: int | None = Field(None, ge=1, description="uniform: every n-th frame (default pool // budget); uniform_topk: default 5")
    prefilter_factor: float = Field(SelectionParams.prefilter_factor, ge=1.0, description="prefilter_coreset: keep the top factor * budget by score")
    unified_factor: float = Field(SelectionParams.unified_factor, ge=1.0, description="unified: keep the top factor * budget by entropy")
    device: str = Field(SelectionParams.device, description="core-set device: auto, cpu, cuda")
    auto_redundant_at: float = Field(
        SelectionParams.auto_redundant_at, ge=0.0, le=1.0,
        description="auto: a pool is redundant when at least this share of images has a near-duplicate nearest neighbour",
    )
    auto_low_budget_pct: float = Field(
        SelectionParams.auto_low_budget_pct, ge=0.0, le=100.0, description="auto: the low-budget strategy while under this % is labeled"
    )
    auto_near_dup_ratio: float = Field(
        SelectionParams.auto_near_dup_ratio, gt=0.0, le=1.0,
        description="auto: near-duplicate when closer than this x the median distance to the nearest other-sequence image",
    )
    auto_redundant_strategy: str = Field(SelectionParams.auto_redundant_strategy, description="auto: the strategy on a redundant pool")
    auto_diverse_strategy: str = Field(SelectionParams.auto_diverse_strategy, description="auto: the strategy on a diverse pool")
    auto_low_budget_strategy: str = Field(SelectionParams.auto_low_budget_strategy, description="auto: the strategy at low budget")
    auto_min_ap50: float = Field(
        SelectionParams.auto_min_ap50, ge=0.0, le=1.0,
        description="auto: the low-budget strategy while the model's held-out AP50 (eval_uri) is under this (0: never)",
    )
    eval_uri: str | None = Field(None, description="evaluate's output for the scoring model (metrics.json: AP50); read by auto")
    split: str = Field("train", description="dataset split of the pool")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown selection strategy {value!r}; valid: {', '.join(STRATEGIES.names())}")
        return value

    @field_validator("auto_redundant_strategy", "auto_diverse_strategy", "auto_low_budget_strategy")
    @classmethod
    def _known_auto_choice(cls, value: str) -> str:
        valid = [name for name in STRATEGIES.names() if name != "auto"]
        if value not in valid:
            raise ValueError(f"unknown selection strategy {value!r} for auto to choose; valid: {', '.join(valid)}")
        return value


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int, budget: int | None = None) -> Config:
    """The batch selected after cycle ``cycle`` (``budget``: the cycle summary's, default B)."""
    acq = exp.acquisition
    if acq.strategy in RANKS_BY_SCORE and acq.score not in SCORES:
        raise ConfigError(
            f"acquisition.score: strategy {acq.strategy!r} ranks by a score column and {acq.score!r} is not one "
            f"(columns: {', '.join(SCORES.names())}; Elezi's combined score is strategy: unified)"
        )
    return config_from(
        Config, exp, where=f"{NAME} (cycle {cycle})",
        fields={"strategy": "acquisition.strategy", "score": "acquisition.score", "seed": "seed", "device": "device"},
        spread=("acquisition.strategy_params",),
        dataset_uri=layout.dataset, ledger_uri=layout.ledger(cycle),
        scores_uri=layout.scores(cycle) if required_columns(acq.strategy, acq.score, SelectionParams.from_strategy_params(
            acq.strategy_params)) else None,
        eval_uri=layout.eval(cycle) if acq.strategy in READS_MODEL_QUALITY else None,  # the cycle's model, which scored the pool
        output_uri=layout.selection(cycle), budget=exp.budget if budget is None else budget, cycle=cycle + 1,
    )


def read_model_ap50(eval_uri: str) -> float:
    """The AP50 (0-1) in the ``metrics.json`` of evaluate's committed output ``eval_uri``."""
    uri = store.join(eval_uri, METRICS_FILE)
    if not store.is_committed(eval_uri):
        raise ActivedetError(f"{uri}: no evaluate output (eval_uri must be an evaluate stage's committed output prefix)")
    data = store.read_output_json(eval_uri, METRICS_FILE)  # sha256-checked against the output's manifest
    value = (data.get("metrics") or {}).get("AP50") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ActivedetError(f"{uri}: metrics.AP50 is {value!r}, not a number in [0, 1]")
    return float(value)


class Result(BaseModel):
    selection_uri: str
    ledger_uri: str
    cycle: int
    selected: int
    pool_size: int
    exhausted: bool
    info: dict[str, float | str | None] = Field(default_factory=dict, description="what the strategy measured or decided (auto.*)")


def selection_table(ids: list[str], scores: list[float | None], strategy: str) -> pa.Table:
    return schema.validate_selection(
        pa.table(
            {
                "image_id": pa.array(ids, pa.string()),
                "rank": pa.array(np.arange(len(ids), dtype=np.int32)),
                "strategy": pa.array([strategy] * len(ids), pa.string()),
                "score": pa.array(scores, pa.float64()),
            },
            schema=schema.SELECTION,
        )
    )


def run(config: Config) -> Result:
    from activedet.data.dataset import load_dataset

    dataset = load_dataset(config.dataset_uri)
    ledger, meta = ledger_mod.read_ledger(config.ledger_uri)
    cycle = config.cycle if config.cycle is not None else ledger_mod.ledger_cycle(ledger, meta) + 1
    in_split = set(dataset.split_ids(config.split))
    pool = sorted(i for i in ledger_mod.ids_in_state(ledger, "unlabeled") if i in in_split)
    labeled = sorted(ledger_mod.ids_in_state(ledger, "labeled", "pending"))
    scores = None
    if config.scores_uri:
        scores = schema.validate_scores(store.read_output_table(config.scores_uri, SCORES_FILE),
                                        where=store.join(config.scores_uri, SCORES_FILE))
    seed = int(np.random.SeedSequence([config.seed, cycle]).generate_state(1)[0])
    params = SelectionParams.from_strategy_params(config.model_dump())  # every strategy option the config holds
    inp = SelectionInput(pool=pool, budget=config.budget, seed=seed, scores=scores, images=dataset.images,
                         labeled=labeled, params=params, model_ap50=read_model_ap50(config.eval_uri) if config.eval_uri else None)
    picked = select(config.strategy, inp)
    table = selection_table(picked.ids, picked.scores, config.strategy)
    new_ledger = ledger_mod.set_state(ledger, picked.ids, "pending", cycle=cycle, allowed_from=("unlabeled",))
    exhausted = not pool
    with store.OutputWriter(config.output_uri) as out:
        out.write_table(SELECTION_FILE, table)
        out.write_json(SELECTION_META, {"strategy": config.strategy, "budget": config.budget, "cycle": cycle,
                                        "selected": table.num_rows, "pool_size": len(pool), "exhausted": exhausted,
                                        "ledger_uri": config.ledger_uri, "scores_uri": config.scores_uri, **picked.info})
        ledger_mod.write_ledger(out, new_ledger, cycle=cycle, parent=config.ledger_uri, selection=config.strategy)
    log.info("select-batch: %s picked %d of %d pool images (cycle %d)", config.strategy, table.num_rows, len(pool), cycle)
    tracker = tracker_for(config, run_name="select-batch")
    numbers = {k: v for k, v in picked.info.items() if isinstance(v, (int, float))}
    tracker.log_metrics({"selected": table.num_rows, "pool_size": len(pool), **numbers}, step=cycle)
    tracker.log_params({k: v for k, v in picked.info.items() if isinstance(v, str)})
    return Result(selection_uri=config.output_uri, ledger_uri=config.output_uri, cycle=cycle, selected=table.num_rows,
                  pool_size=len(pool), exhausted=exhausted, info=picked.info)
