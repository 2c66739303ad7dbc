"""oracle: simulate the annotator -- the pending images of a selection become labeled.

In simulation the ground truth of every train image is already in the dataset; the labeled set a
trainer uses is "ledger-labeled images + their dataset GT boxes", so revealing labels only moves
ledger states. Writes a new ledger version (the input ledger is untouched).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from activedet import store
from activedet.al import ledger as ledger_mod
from activedet.config import StageConfig, config_from
from activedet.errors import ActivedetError
from activedet.tracking import tracker_for

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "oracle"
IMAGE = "cpu"


class Config(StageConfig):
    ledger_uri: str = Field(description="ledger with pending images (the select-batch output)")
    output_uri: str = Field(description="output prefix for the new ledger")
    selection_uri: str | None = Field(None, description="reveal only this selection's images (default: every pending image)")


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int) -> Config:
    """Simulation: reveal the ground truth of the batch select-batch left pending after ``cycle``."""
    sel = layout.selection(cycle)
    return config_from(Config, exp, where=f"{NAME} (cycle {cycle})", ledger_uri=sel, selection_uri=sel,
                       output_uri=layout.ledger(cycle + 1))


class Result(BaseModel):
    ledger_uri: str
    cycle: int
    revealed: int
    labeled: int


def run(config: Config) -> Result:
    ledger, meta = ledger_mod.read_ledger(config.ledger_uri)
    cycle = ledger_mod.ledger_cycle(ledger, meta)
    pending = ledger_mod.ids_in_state(ledger, "pending")
    if config.selection_uri:
        from activedet.al.selection import read_selection

        chosen = read_selection(config.selection_uri).column("image_id").to_pylist()
        not_pending = sorted(set(chosen) - set(pending))
        if not_pending:
            raise ActivedetError(f"oracle: {len(not_pending)} selected image(s) are not pending in {config.ledger_uri}, e.g. {not_pending[0]!r}")
        pending = chosen
    new = ledger_mod.set_state(ledger, pending, "labeled", allowed_from=("pending",))
    with store.OutputWriter(config.output_uri) as out:
        written = ledger_mod.write_ledger(out, new, cycle=cycle, parent=config.ledger_uri, revealed=len(pending))
    log.info("oracle: revealed %d image(s) (cycle %d)", len(pending), cycle)
    tracker_for(config, run_name="oracle").log_metrics({"labeled": written["counts"]["labeled"]}, step=cycle)
    return Result(ledger_uri=config.output_uri, cycle=cycle, revealed=len(pending), labeled=written["counts"]["labeled"])
