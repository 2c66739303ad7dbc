"""MLflow tracking for stages, without global state.

A stage calls :func:`tracker_for` with its config; when ``mlflow_tracking_uri`` is unset it gets a
:class:`NullTracker` and logging is a no-op. With a URI it logs to ``mlflow_run_id`` (the cycle's
child run the pipeline created) or, when none is given, to a new run in experiment
``activedet-stages``. Uses :class:`mlflow.MlflowClient` so concurrent stages never share an
"active run".
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class NullTracker:
    """Tracking disabled."""

    run_id: str | None = None

    def log_params(self, params: dict) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """Id of MLflow experiment ``name``, created when missing.

    With a sqlite backend the artifacts go beside the database (``<db dir>/mlartifacts``), not
    into ``./mlruns`` of whatever directory the process happens to run in.
    """
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


class MlflowTracker(NullTracker):
    """Logs to one MLflow run through a client bound to one tracking URI."""

    def __init__(self, tracking_uri: str, run_id: str | None = None, *, experiment: str = "activedet-stages", run_name: str | None = None):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        if run_id is None:
            exp_id = ensure_experiment(self.client, experiment, tracking_uri)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id = run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(str(k), float(v), now, int(step or 0))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, str(k), str(v))


def tracker_for(config, *, run_name: str | None = None) -> NullTracker:
    """The tracker a stage config asks for (``mlflow_tracking_uri`` / ``mlflow_run_id``)."""
    uri = getattr(config, "mlflow_tracking_uri", None)
    if not uri:
        return NullTracker()
    return MlflowTracker(uri, getattr(config, "mlflow_run_id", None), run_name=run_name)
