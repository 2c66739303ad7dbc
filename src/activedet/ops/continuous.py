"""Continuous mode: each scheduled run is one active-learning cycle on persistent state.

One cycle (:mod:`activedet.ops.pipeline` wires these steps and the shared stages as the KFP DAG,
which kfp.local runs locally and in the tests)::

    begin -> ingest -> import-labels -> train-teacher (warm start from the champion)
      -> generate-pseudo-labels -> train-student-ssl -> evaluate (fixed val split) -> promote
      -> score-unlabeled -> merge-scores -> select-batch -> export + commit state

Layout under ``state_root``::

    state/                     versioned state (:mod:`activedet.ops.state`)
    base/dataset, base/ledger  the bootstrap dataset (SynthDrive when configured) and cycle-0 ledger
    cycles/cycle-KKKK/         the run root of cycle K: the shared stages use
                               :class:`activedet.pipeline.layout.RunLayout` with cycle 0 inside it
    exports/cycle-KKKK/        the batch exported for labeling (COCO + manifest)
    returns/cycle-KKKK.json    where annotators put the labeled COCO back (``returns_uri``)

The shared stages (teacher, pseudo labels, student, evaluate, score, merge, select) run through
:func:`activedet.pipeline.steps.run_stage` with a per-cycle experiment whose dataset is the
cycle's ingested dataset and whose ``training.init_checkpoint`` is the champion's checkpoint.
:func:`commit` records the new state with the version read in :func:`begin`: a run that
overlapped another one fails with :class:`~activedet.errors.ConcurrentUpdateError`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from activedet import store
from activedet.ops.state import Champion, StateStore
from activedet.pipeline.experiment import ExperimentConfig, experiment_from_json
from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

BEGIN_FILE = "begin.json"


def default_state_root(exp: ExperimentConfig) -> str:
    return store.join(exp.store_root or "runs", exp.name, "continuous")


def _run_root(state_root: str, cycle: int) -> str:
    return store.join(state_root, "cycles", f"cycle-{cycle:04d}")


def _export_uri(state_root: str, cycle: int) -> str:
    return store.join(state_root, "exports", f"cycle-{cycle:04d}")


def _return_uri(returns_uri: str, export_uri: str) -> str:
    return store.join(returns_uri, export_uri.rstrip("/").rsplit("/", 1)[-1] + ".json")


def _tracking_uri(exp: ExperimentConfig, state_root: str) -> str:
    from activedet.pipeline.steps import tracking_uri

    uri = tracking_uri(exp)
    if uri:
        return uri
    if store.is_s3(state_root):
        from activedet.errors import ConfigError

        raise ConfigError("continuous mode on S3 needs mlflow.tracking_uri (the Model Registry keeps the champion)")
    path = store.local_path(state_root)
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve() / 'mlflow.db'}"


def begin(experiment_json: str, state_root: str) -> str:
    """Read the state, bootstrap the base dataset/ledger on the first run; returns the cycle's run root."""
    from activedet.pipeline.steps import setup_logging
    from activedet.stages import init

    setup_logging()
    exp = experiment_from_json(experiment_json)
    states = StateStore(state_root)
    state = states.read()
    cycle = state.cycle + 1
    run_root = _run_root(state_root, cycle)
    dataset_uri, ledger_uri = state.dataset_uri, state.ledger_uri
    if dataset_uri is None:
        dataset_uri = exp.dataset.uri or store.join(state_root, "base", "dataset")
        if exp.dataset.synth is not None and not store.is_committed(dataset_uri):
            from activedet.data.synth import generate_synthdrive

            generate_synthdrive(dataset_uri, exp.dataset.synth)
    if ledger_uri is None:
        ledger_uri = store.join(state_root, "base", "ledger")
        if not store.is_committed(ledger_uri):
            init.run(init.Config(dataset_uri=dataset_uri, output_uri=ledger_uri, initial_size=exp.initial_size, seed=exp.seed))
    store.write_json(store.join(run_root, BEGIN_FILE), {
        "state_version": state.version, "cycle": cycle, "dataset_uri": dataset_uri, "ledger_uri": ledger_uri,
    })
    log.info("continuous cycle %d: state version %d, run root %s", cycle, state.version, run_root)
    return run_root


def ingest_step(experiment_json: str, run_root: str, source_uri: str) -> str:
    """The ingest stage on the state's dataset and ledger; writes run_root/ingested/."""
    from activedet.stages import ingest

    b = store.read_json(store.join(run_root, BEGIN_FILE))
    if not store.list_uris(source_uri):
        log.info("ingest: nothing under %s", source_uri)
    result = ingest.run(ingest.Config(
        source_uri=source_uri, dataset_uri=b["dataset_uri"], ledger_uri=b["ledger_uri"],
        out_dataset_uri=store.join(run_root, "ingested", "dataset"), out_ledger_uri=store.join(run_root, "ingested", "ledger"),
    ))
    return json.dumps(result)


def import_labels_step(experiment_json: str, run_root: str, state_root: str, returns_uri: str) -> str:
    """Import returned labels of earlier exports; returns the cycle's experiment JSON.

    The cycle's experiment has ``dataset.uri`` = the cycle's dataset and
    ``training.init_checkpoint`` = the champion (warm start), so the shared stages need no
    knowledge of continuous mode.
    """
    from activedet.stages import import_labels

    exp = experiment_from_json(experiment_json)
    state = StateStore(state_root).read(store.read_json(store.join(run_root, BEGIN_FILE))["state_version"])
    lay = RunLayout(run_root, exp)
    returns = []
    for export in state.exports:
        ret = _return_uri(returns_uri, export)
        if ret in state.imported or not store.exists(ret):
            continue
        meta = store.read_output_json(export, "export.json")
        returns.append(import_labels.LabelReturn(coco_uri=ret, selection_uri=meta["selection_uri"]))
    labels_uri = state.lineage[-1].get("labels_uri") if state.lineage else None
    result = import_labels.run(import_labels.Config(
        dataset_uri=store.join(run_root, "ingested", "dataset"), ledger_uri=store.join(run_root, "ingested", "ledger"),
        returns=returns, labels_uri=labels_uri, output_uri=store.join(run_root, "labels"),
        out_dataset_uri=store.join(run_root, "dataset"), out_ledger_uri=lay.ledger(0),
    ))
    training = exp.training.model_copy(update={"init_checkpoint": state.champion.checkpoint_uri if state.champion else exp.training.init_checkpoint,
                                               "warm_start": False})
    cycle_exp = exp.model_copy(update={
        "dataset": exp.dataset.model_copy(update={"uri": store.join(run_root, "dataset"), "synth": None}),
        "training": training, "cycles": 1,
    })
    store.write_json(store.join(run_root, "import.json"), result)
    return cycle_exp.to_json()


def promote_step(experiment_json: str, run_root: str, state_root: str) -> str:
    """Register the cycle's model; the champion alias moves only if it beats the current one."""
    from activedet.stages import promote

    exp = experiment_from_json(experiment_json)
    lay = RunLayout(run_root, exp)
    cycle = store.read_json(store.join(run_root, BEGIN_FILE))["cycle"]
    result = promote.run(promote.from_experiment(exp, lay, 0, tracking_uri=_tracking_uri(exp, state_root), state_cycle=cycle))
    return result.model_dump_json()


def finish_step(experiment_json: str, run_root: str, state_root: str, promote_result: str) -> str:
    """Export the selected batch for labeling and commit the new state (optimistic version check)."""
    from activedet import labels

    exp = experiment_from_json(experiment_json)
    lay = RunLayout(run_root, exp)
    b = store.read_json(store.join(run_root, BEGIN_FILE))
    states = StateStore(state_root)
    state = states.read(b["state_version"])
    promo = json.loads(promote_result)
    imported = store.read_json(store.join(run_root, "import.json"))
    export = labels.export_batch(lay.dataset, lay.selection(0), _export_uri(state_root, b["cycle"]))
    champion = Champion(model_name=promo["model_name"], version=promo["champion_version"],
                        checkpoint_uri=promo["champion_checkpoint_uri"], metric=exp.stopping.metric, value=promo["champion_value"])
    entry: dict[str, Any] = {
        "cycle": b["cycle"], "run_root": run_root, "model_uri": lay.model(0), "model_version": promo["version"],
        exp.stopping.metric: promo["value"], "promoted": promo["promoted"], "reason": promo["reason"],
        "init_checkpoint": state.champion.checkpoint_uri if state.champion else None,
        "labels_uri": imported.get("labels_uri"), "export_uri": export.output_uri, "exported": export.images,
    }
    new = state.model_copy(update={
        "cycle": b["cycle"], "dataset_uri": lay.dataset, "ledger_uri": lay.selection(0), "champion": champion,
        "lineage": [*state.lineage, entry], "exports": [*state.exports, export.output_uri],
        "imported": [*state.imported, *imported.get("imported_files", [])],
    })
    committed = states.commit(new, expected_version=b["state_version"])
    return json.dumps({"state_version": committed.version, **entry})


def pipeline_params(exp: ExperimentConfig, *, state_root: str | None = None, source_uri: str | None = None,
                    returns_uri: str | None = None) -> dict[str, str]:
    """Parameters of the continuous pipeline (defaults under the experiment's store root)."""
    root = state_root or default_state_root(exp)
    return {
        "experiment": exp.to_json(),
        "state_root": root,
        "source_uri": source_uri or store.join(root, "incoming"),
        "returns_uri": returns_uri or store.join(root, "returns"),
    }

