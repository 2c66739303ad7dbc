"""init: cycle 0 -- label a seeded random initial set of the train split and write the first ledger.

The initial set depends only on the dataset's train ids and the seed (never on the acquisition
strategy), so every strategy of a comparison starts from the same cycle-0 set.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from activedet import store
from activedet.al import ledger as ledger_mod
from activedet.config import StageConfig, config_from
from activedet.data.dataset import load_dataset
from activedet.errors import ActivedetError
from activedet.tracking import tracker_for

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "init"
IMAGE = "cpu"


class Config(StageConfig):
    dataset_uri: str = Field(description="dataset URI (committed output with images/boxes/categories)")
    output_uri: str = Field(description="output prefix for the cycle-0 ledger (ledger.parquet, ledger.json)")
    initial_size: int = Field(ge=0, description="number of train images labeled in cycle 0 (I)")
    seed: int = Field(0, description="random seed of the initial draw")
    split: str = Field("train", description="dataset split forming the active-learning pool")


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int = 0) -> Config:
    """The random initial labeled set of size I (cycle 0's ledger)."""
    return config_from(Config, exp, where=NAME, fields={"initial_size": "initial_size", "seed": "seed"},
                       dataset_uri=layout.dataset, output_uri=layout.ledger(0))


class Result(BaseModel):
    ledger_uri: str
    cycle: int
    labeled: int
    unlabeled: int


def initial_set(train_ids: list[str], size: int, seed: int) -> list[str]:
    """A seeded sample of ``size`` ids; depends only on the sorted ids and the seed."""
    ids = sorted(train_ids)
    if size > len(ids):
        raise ActivedetError(f"init: initial_size {size} exceeds the {len(ids)} images of the split")
    order = np.random.default_rng(seed).permutation(len(ids))[:size]
    return sorted(ids[i] for i in order)


def run(config: Config) -> Result:
    dataset = load_dataset(config.dataset_uri)
    train = dataset.split_ids(config.split)
    if not train:
        raise ActivedetError(f"init: dataset {config.dataset_uri} has no images in split {config.split!r}")
    labeled = initial_set(train, config.initial_size, config.seed)
    table = ledger_mod.new_ledger(train, labeled, cycle=0)
    with store.OutputWriter(config.output_uri) as out:
        meta = ledger_mod.write_ledger(out, table, cycle=0, parent=None, dataset_uri=config.dataset_uri, seed=config.seed)
    tracker_for(config, run_name="init").log_metrics({"labeled": meta["counts"]["labeled"], "pool": len(train)}, step=0)
    return Result(ledger_uri=config.output_uri, cycle=0, labeled=meta["counts"]["labeled"], unlabeled=meta["counts"]["unlabeled"])
