"""Run the pipeline on this machine: the same pipeline function, executed by ``kfp.local``.

Embedded defaults: a run directory (``runs/<name>-<time>/`` unless given) holds the artifact
store (``store/``), KFP's pipeline root (``kfp/``) and MLflow on sqlite (``mlflow.db``) unless
the experiment (or ``MLFLOW_TRACKING_URI``) names a tracking server.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from activedet import store
from activedet.errors import ActivedetError
from activedet.pipeline import report
from activedet.pipeline.experiment import ExperimentConfig
from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class LocalRun:
    """Where a local run put its outputs, and its per-cycle summary rows."""

    run_dir: Path
    run_root: str
    tracking_uri: str | None
    experiment: ExperimentConfig
    rows: list[dict] = field(default_factory=list)
    state: str = "SUCCEEDED"
    budget_curve: Path | None = None

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_root, self.experiment)


def prepare(exp: ExperimentConfig, run_dir: str | Path | None = None) -> tuple[ExperimentConfig, Path, str]:
    """Fill in the local defaults: run directory, store prefix and sqlite MLflow URI."""
    run_dir = Path(run_dir or Path("runs") / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_root = store.join(exp.store_root, run_dir.name) if exp.store_root else str(run_dir / "store")
    tracking = exp.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
    exp = exp.model_copy(update={"mlflow": exp.mlflow.model_copy(update={"tracking_uri": tracking})})
    return exp, run_dir, run_root


def run_local(exp: ExperimentConfig, run_dir: str | Path | None = None) -> LocalRun:
    """Run the whole pipeline through ``kfp.local`` (SubprocessRunner, current Python environment)."""
    from kfp import local

    from activedet.pipeline.dag import build_pipeline

    exp, run_dir, run_root = prepare(exp, run_dir)
    log.info("local run in %s (store %s, MLflow %s)", run_dir, run_root, exp.mlflow.tracking_uri)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"), raise_on_error=True)
    pipeline = build_pipeline(exp, platform=False)
    outcome = LocalRun(run_dir=run_dir, run_root=run_root, tracking_uri=exp.mlflow.tracking_uri, experiment=exp)
    try:
        with warnings.catch_warnings():
            # kfp.local warns on every task whose image name lacks "python"; here the venv runs them.
            warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
            pipeline(experiment=exp.to_json(), run_root=run_root)
    except RuntimeError as exc:  # kfp.local's way of reporting a failed task
        outcome.state = "FAILED"
        raise ActivedetError(f"pipeline run failed: {str(exc).splitlines()[0]} (outputs and logs in {run_dir})") from None
    outcome.rows = report.read_rows(outcome.layout)
    curve = store.join(run_root, "summary", "budget_curve.png")
    if not store.is_s3(curve) and store.exists(curve):
        outcome.budget_curve = store.local_path(curve)
    return outcome
