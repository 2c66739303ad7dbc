"""Stage configs of one cycle, derived from the experiment config and the run layout.

This is the single place that maps experiment settings onto the fields of each stage's
``Config``; the KFP components call :func:`stage_config` and then ``run(Config(...))``.
"""

from __future__ import annotations

from typing import Any

from activedet.errors import ConfigError
from activedet.pipeline.experiment import ExperimentConfig
from activedet.pipeline.layout import RunLayout


def _tracking(uri: str | None, run_id: str | None) -> dict[str, Any]:
    return {"mlflow_tracking_uri": uri or None, "mlflow_run_id": run_id or None}


def init_config(lay: RunLayout) -> dict[str, Any]:
    exp = lay.experiment
    return {"dataset_uri": lay.dataset, "output_uri": lay.ledger(0), "initial_size": exp.initial_size, "seed": exp.seed}


def train_teacher_config(lay: RunLayout, cycle: int) -> dict[str, Any]:
    exp, tr = lay.experiment, lay.experiment.training
    init = tr.init_checkpoint
    if tr.warm_start and cycle > 0:
        init = lay.model(cycle - 1)
    return {
        "dataset_uri": lay.dataset,
        "ledger_uri": lay.ledger(cycle),
        "output_uri": lay.teacher(cycle),
        "preset": tr.preset,
        "preset_options": dict(tr.preset_options),
        "iterations": tr.teacher_iterations,
        "batch_size": tr.batch_size,
        **({"lr": tr.lr} if tr.lr is not None else {}),
        "init_checkpoint_uri": init,
        "checkpoint_every": tr.checkpoint_every,
        "num_workers": tr.num_workers,
        "device": exp.device,
        "seed": exp.seed + cycle,
    }


def pseudo_labels_config(lay: RunLayout, cycle: int) -> dict[str, Any]:
    exp, pl = lay.experiment, lay.experiment.pseudo_labels
    return {
        "teacher_checkpoint_uri": lay.teacher(cycle),
        "dataset_uri": lay.dataset,
        "ledger_uri": lay.ledger(cycle),
        "output_uri": lay.pseudo_labels(cycle),
        "filter": pl.filter,
        "filter_params": dict(pl.params),
        "min_score": pl.min_score,
        "max_pool_images": pl.max_pool_images,
        "device": exp.device,
        "seed": exp.seed + cycle,
    }


def student_config(lay: RunLayout, cycle: int) -> dict[str, Any]:
    exp, tr, ssl = lay.experiment, lay.experiment.training, lay.experiment.ssl
    return {
        "teacher_checkpoint_uri": lay.teacher(cycle),
        "dataset_uri": lay.dataset,
        "ledger_uri": lay.ledger(cycle),
        "pseudo_labels_uri": lay.pseudo_labels(cycle),
        "output_uri": lay.student(cycle),
        "iterations": tr.student_iterations,
        "batch_size": tr.batch_size,
        "labeled_fraction": ssl.labeled_fraction,
        "lambda_u": ssl.lambda_u,
        **({"lr": tr.student_lr} if tr.student_lr is not None else {}),
        "checkpoint_every": tr.checkpoint_every,
        "num_workers": tr.num_workers,
        "device": exp.device,
        "seed": exp.seed + cycle,
    }


def evaluate_config(lay: RunLayout, cycle: int) -> dict[str, Any]:
    return {
        "checkpoint_uri": lay.model(cycle),
        "dataset_uri": lay.dataset,
        "ledger_uri": lay.ledger(cycle),
        "output_uri": lay.eval(cycle),
        "device": lay.experiment.device,
    }


def score_config(lay: RunLayout, cycle: int, shard: int) -> dict[str, Any]:
    exp, acq = lay.experiment, lay.experiment.acquisition
    scores = [acq.score]
    diversity = "coreset" in acq.strategy
    if diversity and "embedding" not in scores:
        scores.append("embedding")  # k-center needs embeddings of the pool and the labeled set
    return {
        "checkpoint_uri": lay.model(cycle),
        "dataset_uri": lay.dataset,
        "ledger_uri": lay.ledger(cycle),
        "output_uri": lay.scores_shard(cycle, shard),
        "scores": scores,
        "include_labeled": diversity,
        "shard": f"{shard}/{acq.shards}",
        "batch_size": exp.training.batch_size,
        "num_workers": exp.training.num_workers,
        "device": exp.device,
        **acq.score_params,
    }


def merge_config(lay: RunLayout, cycle: int) -> dict[str, Any]:
    shards = lay.experiment.acquisition.shards
    return {"shard_uris": [lay.scores_shard(cycle, i) for i in range(shards)], "output_uri": lay.scores(cycle)}


def select_config(lay: RunLayout, cycle: int, budget: int) -> dict[str, Any]:
    exp, acq = lay.experiment, lay.experiment.acquisition
    return {
        "dataset_uri": lay.dataset,
        "ledger_uri": lay.ledger(cycle),
        "scores_uri": lay.scores(cycle),
        "output_uri": lay.selection(cycle),
        "strategy": acq.strategy,
        "score": acq.score,
        "budget": budget,
        "cycle": cycle + 1,
        "seed": exp.seed,
        "device": exp.device,
        **acq.strategy_params,
    }


def oracle_config(lay: RunLayout, cycle: int) -> dict[str, Any]:
    """Simulation: reveal the ground truth of the batch select-batch left pending."""
    sel = lay.selection(cycle)
    return {"ledger_uri": sel, "selection_uri": sel, "output_uri": lay.ledger(cycle + 1)}


def next_budget(exp: ExperimentConfig, labeled: int) -> int:
    """Images to select after a cycle with ``labeled`` labeled images (0 when the cap is reached)."""
    cap = exp.stopping.budget_cap
    if cap is None:
        return exp.budget
    return max(0, min(exp.budget, cap - labeled))


def stage_config(
    stage: str,
    exp: ExperimentConfig,
    run_root: str,
    cycle: int,
    *,
    shard: int = 0,
    budget: int | None = None,
    tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
) -> dict[str, Any]:
    """The config mapping of ``stage`` in ``cycle`` (tracking fields included)."""
    lay = RunLayout(run_root, exp)
    builders = {
        "init": lambda: init_config(lay),
        "train-teacher": lambda: train_teacher_config(lay, cycle),
        "generate-pseudo-labels": lambda: pseudo_labels_config(lay, cycle),
        "train-student-ssl": lambda: student_config(lay, cycle),
        "evaluate": lambda: evaluate_config(lay, cycle),
        "score-unlabeled": lambda: score_config(lay, cycle, shard),
        "merge-scores": lambda: merge_config(lay, cycle),
        "select-batch": lambda: select_config(lay, cycle, exp.budget if budget is None else budget),
        "oracle": lambda: oracle_config(lay, cycle),
    }
    if stage not in builders:
        raise ConfigError(f"no pipeline step for stage {stage!r}; valid: {', '.join(builders)}")
    return {**builders[stage](), **_tracking(tracking_uri, mlflow_run_id)}
