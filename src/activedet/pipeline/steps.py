"""What the pipeline's KFP components do, as plain functions (each component is one call here).

Every function takes the experiment as JSON (the pipeline parameter), the run root URI and small
values (cycle number, MLflow run ids); results are small JSON strings. MLflow layout: one parent
run per pipeline run, one child run per cycle (summary metrics, params, artifacts), and one nested
run per stage under its cycle run (the stage's own params and loss curves, so stages never clash
on MLflow's immutable params). The parent carries the budget curve: AP metrics with
``step = labeled count``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from activedet import store
from activedet.pipeline import plan
from activedet.pipeline.experiment import ExperimentConfig, experiment_from_json
from activedet.pipeline.layout import RunLayout
from activedet.stages.evaluate import METRICS_FILE

log = logging.getLogger("activedet.pipeline")

#: metric names copied from the evaluation into the cycle summary (the "AP family")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "AP_rare")


def setup_logging() -> None:
    """Log lines from inside a component process (nothing else configures logging there)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )


def tracking_uri(exp: ExperimentConfig) -> str | None:
    """The MLflow URI: the experiment's, else ``MLFLOW_TRACKING_URI``; None disables tracking."""
    return exp.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested result as ``a.b.c`` keys (bools and non-finite values dropped)."""
    import math

    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(float(obj)):
        out[prefix[:-1]] = float(obj)
    return out


def _label(exp: ExperimentConfig, cycle: int, arm: str = "") -> str:
    """'cycle 0 (1/3)': the number the summary table, MLflow and the store layout use, then progress."""
    return (f"{arm} baseline " if arm else "") + f"cycle {cycle} ({cycle + 1}/{exp.cycles})"


def _arm_experiment(experiment_json: str, arm: str) -> ExperimentConfig:
    exp = experiment_from_json(experiment_json)
    return exp.arm(arm) if arm else exp


# --------------------------------------------------------------------------- run start / cycle start


def start_run(experiment_json: str, run_root: str) -> str:
    """Prepare the dataset (SynthDrive when configured) and create the MLflow parent run.

    Idempotent: a retried task reuses the parent run recorded in ``run.json`` and a committed dataset.
    Returns the parent run id ('' when tracking is off).
    """
    setup_logging()
    exp = experiment_from_json(experiment_json)
    lay = RunLayout(run_root, exp)
    if exp.dataset.synth is not None and not store.is_committed(lay.dataset):
        from activedet.data.synth import generate_synthdrive

        log.info("▶ generating SynthDrive dataset at %s", lay.dataset)
        generate_synthdrive(lay.dataset, exp.dataset.synth)
    if store.exists(lay.run_json):
        return str(store.read_json(lay.run_json).get("parent_run_id", ""))
    uri = tracking_uri(exp)
    parent = ""
    if uri:
        client = _client(uri)
        from activedet.tracking import ensure_experiment

        exp_id = ensure_experiment(client, exp.mlflow.experiment, uri)
        run = client.create_run(exp_id, run_name=exp.name, tags={"activedet.run_root": run_root, "activedet.kind": "pipeline"})
        parent = run.info.run_id
        params = flatten_params(exp.model_dump(mode="json", exclude={"kubernetes"}))
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(parent, params=items[i : i + 100])
    store.write_json(lay.run_json, {"parent_run_id": parent, "tracking_uri": uri, "experiment": exp.model_dump(mode="json"), "started_at": time.time()})
    log.info("▶ run %s: %d cycles, I=%d, B=%d, outputs under %s", exp.name, exp.cycles, exp.initial_size, exp.budget, run_root)
    return parent


def flatten_params(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a nested mapping as ``a.b`` keys (lists kept whole)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out


def start_cycle(experiment_json: str, run_root: str, cycle: int, parent_run_id: str, arm: str = "") -> str:
    """Create (or, on a retry, find) the cycle's MLflow child run; returns its id ('' untracked).

    ``arm``: a baseline arm's strategy (its cycle runs are tagged ``activedet.arm``).
    """
    setup_logging()
    exp = _arm_experiment(experiment_json, arm)
    log.info("▶ %s: training on %d labeled images (target)", _label(exp, cycle, arm), exp.labeled_at(cycle))
    uri = tracking_uri(exp)
    if not uri or not parent_run_id:
        return ""
    client = _client(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    existing = client.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`activedet.cycle` = '{cycle}' "
        f"and tags.`activedet.arm` = '{arm or 'main'}'"
    )
    if existing:
        return existing[0].info.run_id
    tags = {"mlflow.parentRunId": parent_run_id, "activedet.cycle": str(cycle), "activedet.kind": "cycle", "activedet.arm": arm or "main"}
    run = client.create_run(exp_id, run_name=f"{exp.name}-{arm + '-' if arm else ''}cycle-{cycle:02d}", tags=tags)
    params = {
        "cycle": cycle,
        "seed": exp.seed,
        "strategy": exp.acquisition.strategy,
        "score": exp.acquisition.score,
        "filter": exp.pseudo_labels.filter if exp.ssl.enabled else "none",
        "ssl": exp.ssl.enabled,
        "budget": exp.budget,
        "initial_size": exp.initial_size,
        "preset": exp.training.preset,
    }
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


# --------------------------------------------------------------------------- stages


def run_stage(stage: str, experiment_json: str, run_root: str, cycle: int, cycle_run_id: str = "", arm: str = "", **upstream) -> str:
    """Run one stage of one cycle: its module's ``from_experiment`` builds the ``Config``, then ``run``.

    ``upstream``: the values the stage's ``from_experiment`` takes from the DAG (score-unlabeled's
    ``shard``, select-batch's ``budget``). Returns the stage result as JSON. With tracking on, the stage logs its own numbers
    into a nested run under the cycle run (the same names as when it runs alone); this step adds the stage's wall time there as
    ``seconds`` and to the cycle run as ``<stage>.seconds`` (docs/pipeline.md lists every name).
    """
    from activedet.stages import stage_module

    setup_logging()
    exp = experiment_from_json(experiment_json)
    uri = tracking_uri(exp)
    shard = upstream.get("shard")
    stage_run = _start_stage_run(uri, cycle_run_id, stage, cycle, shard, arm) if uri and cycle_run_id else ""
    module = stage_module(stage)
    config = plan.stage_config(
        stage, exp, run_root, cycle, tracking_uri=uri if stage_run else None, mlflow_run_id=stage_run or None, arm=arm, **upstream
    )
    shards = exp.pseudo_labels.shards if stage == "generate-pseudo-labels" else exp.acquisition.shards
    where = f"{_label(exp, cycle, arm)} {stage}" + (f" shard {shard + 1}/{shards}" if shard is not None else "")
    log.info("▶ %s: started", where)
    t0 = time.monotonic()
    try:
        result = module.run(config)
    except BaseException:
        if stage_run:
            _client(uri).set_terminated(stage_run, "FAILED")
        raise
    payload = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
    seconds = time.monotonic() - t0
    log.info("✔ %s: done in %.1f s", where, seconds)
    if stage_run:
        client = _client(uri)
        _log_metrics(client, stage_run, {"seconds": seconds}, step=cycle)
        if shard is None:  # shards run concurrently: each keeps its time in its own run
            _log_metrics(client, cycle_run_id, {f"{stage}.seconds": seconds}, step=cycle)
        client.set_terminated(stage_run, "FINISHED")
    return json.dumps(payload, default=str)


def _start_stage_run(uri: str, cycle_run_id: str, stage: str, cycle: int, shard: int | None, arm: str = "") -> str:
    client = _client(uri)
    exp_id = client.get_run(cycle_run_id).info.experiment_id
    name = (f"{arm}-" if arm else "") + f"cycle-{cycle:02d}-{stage}" + (f"-{shard:02d}" if shard is not None else "")
    tags = {"mlflow.parentRunId": cycle_run_id, "activedet.kind": "stage", "activedet.stage": stage}
    return client.create_run(exp_id, run_name=name, tags=tags).info.run_id


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k[:250], float(v), now, int(step)) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500])


# --------------------------------------------------------------------------- cycle end / gate


def _eval_metrics(lay: RunLayout, cycle: int, eval_result: dict) -> dict:
    """The evaluate stage's metrics (flat: AP, AP50, ...) plus ``per_class_AP`` {name: AP}."""
    metrics = {k: v for k, v in eval_result.items() if k != "output_uri"}
    uri = store.join(lay.eval(cycle), METRICS_FILE)
    if store.exists(uri):
        data = store.read_json(uri)
        if isinstance(data, dict):
            metrics.update(data.get("metrics") or {})
            rows = data.get("per_class") or []
            metrics["per_class_AP"] = {
                str(r.get("name", r.get("category_id"))): r["ap"] for r in rows if isinstance(r, dict) and r.get("ap") is not None
            }
    return metrics


def _per_class(metrics: dict) -> dict[str, float]:
    value = metrics.get("per_class_AP")
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {}


def _pseudo_count(result: dict) -> int | None:
    for key in ("num_pseudo_boxes", "pseudo_boxes", "num_boxes", "kept", "boxes"):
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


def finish_cycle(
    experiment_json: str, run_root: str, cycle: int, parent_run_id: str, cycle_run_id: str, eval_json: str, pseudo_json: str,
    arm: str = "",
) -> str:
    """Summarise the cycle (store row, MLflow metrics and artifacts) and decide whether to go on.

    ``arm``: a baseline arm's cycle (its row goes to the arm's summary, its curve to the parent run
    as ``baselines.<arm>.metrics.*``).

    Returns JSON ``{"continue": bool, "budget": int, "reason": str, ...row}``; the pipeline reads
    the ``continue`` flag through :func:`gate`.
    """
    from activedet.al.ledger import counts, read_ledger

    setup_logging()
    exp = _arm_experiment(experiment_json, arm)
    lay = RunLayout(run_root, exp, arm)
    ledger, _ = read_ledger(lay.ledger(cycle))
    state_counts = counts(ledger)
    labeled = state_counts["labeled"]
    metrics = _eval_metrics(lay, cycle, json.loads(eval_json or "{}"))
    pseudo = json.loads(pseudo_json or "{}")
    row: dict[str, Any] = {
        "cycle": cycle,
        "labeled": labeled,
        "unlabeled": state_counts["unlabeled"],
        "strategy": exp.acquisition.strategy if cycle > 0 else "random (initial)",
        "filter": exp.pseudo_labels.filter if exp.ssl.enabled else "none",
        "pseudo_labels": _pseudo_count(pseudo) if exp.ssl.enabled else None,
        **{k: float(metrics[k]) for k in AP_KEYS if isinstance(metrics.get(k), (int, float))},
    }
    reason = _stop_reason(exp, cycle, row, metrics)
    budget = plan.next_budget(exp, labeled)
    row.update({"continue": reason is None, "reason": reason or "", "budget": budget})
    store.write_json(lay.summary_row(cycle), row)
    _track_cycle(exp, parent_run_id, cycle_run_id, row, metrics, pseudo, lay.eval(cycle), arm)
    ap = ", ".join(f"{k}={row[k]:.3f}" for k in ("AP", "AP50") if k in row)
    log.info("✔ %s: %d labeled, %s%s", _label(exp, cycle, arm), labeled, ap or "no AP", f"; stopping: {reason}" if reason else "")
    return json.dumps(row)


def _stop_reason(exp: ExperimentConfig, cycle: int, row: dict, metrics: dict) -> str | None:
    if cycle >= exp.cycles - 1 and exp.labeling == "oracle":
        return "last cycle"  # with export, the last cycle still selects and exports its batch
    target = exp.stopping.target_ap
    value = metrics.get(exp.stopping.metric)
    if target is not None and isinstance(value, (int, float)) and value >= target:
        return f"{exp.stopping.metric} {value:.3f} reached target {target}"
    if plan.next_budget(exp, row["labeled"]) <= 0:
        return f"budget cap {exp.stopping.budget_cap} reached"
    if row["unlabeled"] <= 0:
        return "unlabeled pool is empty"
    return None


def _track_cycle(
    exp: ExperimentConfig, parent_run_id: str, cycle_run_id: str, row: dict, metrics: dict, pseudo: dict, eval_uri: str,
    arm: str = "",
) -> None:
    uri = tracking_uri(exp)
    if not uri or not cycle_run_id:
        return
    client = _client(uri)
    # one name per quantity: the evaluation as metrics.*, the row's counts bare (its AP columns are metrics.*)
    summary = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in AP_KEYS}
    summary["labeled_count"] = row["labeled"]
    summary.update({f"metrics.{k}": v for k, v in flatten_numbers(metrics).items() if not k.startswith("per_class_AP.")})
    summary.update({f"metrics.AP_class.{k}": v for k, v in _per_class(metrics).items()})
    summary.update({f"pseudo.{k}": v for k, v in flatten_numbers(pseudo).items()})
    _log_metrics(client, cycle_run_id, summary, step=row["cycle"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cycle_metrics.json"
        path.write_text(json.dumps({"summary": row, "eval": metrics, "pseudo_labels": pseudo}, indent=2, default=str))
        client.log_artifact(cycle_run_id, str(path))
        png_uri = store.join(eval_uri, "per_class_ap.png")  # evaluate already drew it
        if store.exists(png_uri):
            client.log_artifact(cycle_run_id, str(store.download(png_uri, Path(tmp) / "per_class_ap.png")))
    client.set_terminated(cycle_run_id, "FINISHED")
    if parent_run_id:
        curve = {f"metrics.{k}": row[k] for k in ("AP", "AP50", "AP75") if isinstance(row.get(k), (int, float))}
        curve["labeled_count"] = row["labeled"]
        if arm:  # a baseline arm's curve beside the run's own, same steps (labeled count)
            curve = {f"baselines.{arm}.{k}": v for k, v in curve.items()}
        _log_metrics(client, parent_run_id, curve, step=row["labeled"])


def gate(finish_json: str) -> bool:
    """Whether the next cycle runs (reads :func:`finish_cycle`'s result)."""
    return bool(json.loads(finish_json)["continue"])


def finish_run(experiment_json: str, run_root: str, state: str) -> str:
    """Exit handler: budget curve + summary into the store and the parent run, which is closed."""
    from activedet.pipeline import report

    setup_logging()
    exp = experiment_from_json(experiment_json)
    lay = RunLayout(run_root, exp)
    rows = report.read_rows(lay)
    def efficiency_of(curve: list[dict]) -> dict[str, float]:
        return report.label_efficiency(curve, target=exp.stopping.target_ap, target_metric=exp.stopping.metric,
                                       budgets=exp.evaluation.budgets_pct)

    efficiency = efficiency_of(rows)
    arms = {arm: report.read_rows(RunLayout(run_root, exp.arm(arm), arm)) for arm in exp.baselines}
    baselines = {arm: {"cycles": curve, "label_efficiency": efficiency_of(curve), "vs": report.compare_arms(rows, curve)}
                 for arm, curve in arms.items()}
    numbers = dict(efficiency)
    for arm, b in baselines.items():  # the arm's own figures and the run against it, on the parent run
        numbers.update({f"baselines.{arm}.{k}": v for k, v in b["label_efficiency"].items()})
        numbers.update({f"vs_{arm}.{k}": v for k, v in b["vs"].items()})
        log.info("■ %s vs %s baseline: %s", exp.acquisition.strategy, arm,
                 ", ".join(f"{k} {v:+.3f}" for k, v in b["vs"].items() if k.endswith("AP50")) or "no common cycles")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "budget_curve.png"
        summary = Path(tmp) / "summary.json"
        payload = {"state": state, "cycles": rows, "label_efficiency": efficiency, **({"baselines": baselines} if baselines else {})}
        summary.write_text(json.dumps(payload, indent=2, default=str))
        store.upload(summary, store.join(lay.summary_dir, "summary.json"))
        if rows:
            report.plot_budget_curve(rows, png, title=f"{exp.name}: {exp.acquisition.strategy}"
                                     + "".join(f" vs {a}" for a in arms), baselines=arms, strategy=exp.acquisition.strategy)
            store.upload(png, lay.budget_curve)
        info = store.read_json(lay.run_json) if store.exists(lay.run_json) else {}
        parent, uri = info.get("parent_run_id"), info.get("tracking_uri")
        if parent and uri:
            client = _client(uri)
            client.log_artifact(parent, str(summary))
            _log_metrics(client, parent, {k: v for k, v in numbers.items() if v == v}, step=0)  # NaN: never reached
            if rows:
                client.log_artifact(parent, str(png))
            client.set_terminated(parent, "FINISHED" if state.upper() in ("SUCCEEDED", "SUCCESS") else "FAILED")
    log.info("■ run %s %s after %d cycle(s); summary in %s", exp.name, state.lower(), len(rows), lay.summary_dir)
    return json.dumps({"state": state, "cycles": len(rows)})


def export_batch(experiment_json: str, run_root: str, cycle: int) -> str:
    """Production labeling: export the batch selected after ``cycle`` for annotators (COCO + manifest)."""
    from activedet import labels

    setup_logging()
    exp = experiment_from_json(experiment_json)
    lay = RunLayout(run_root, exp)
    result = labels.export_batch(lay.dataset, lay.selection(cycle), lay.export(cycle))
    log.info("✔ %s: exported %d image(s) for labeling to %s", _label(exp, cycle), result.images, result.coco_uri)
    return json.dumps(dataclasses.asdict(result))
