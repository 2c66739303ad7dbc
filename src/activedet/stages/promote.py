"""Register the new model in the MLflow Model Registry; move the ``champion`` alias only on improvement.

The candidate (the cycle's student, or teacher without SSL) becomes a new version of
``model_name`` whose tags record its checkpoint URI and metric. The alias ``alias`` moves to it
only when its metric beats the current champion's by more than ``min_delta`` (or when there is no
champion yet); otherwise the champion stays. The next cycle's teacher warm-starts from the
champion's checkpoint (``Result.champion_checkpoint_uri``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from activedet import store
from activedet.config import StageConfig, config_from
from activedet.errors import ActivedetError, ConfigError
from activedet.stages.evaluate import METRICS_FILE

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "promote"
IMAGE = "cpu"

TAG_CHECKPOINT = "activedet.checkpoint_uri"
TAG_METRIC = "activedet.metric"
TAG_VALUE = "activedet.metric_value"


class Config(StageConfig):
    checkpoint_uri: str = Field(description="candidate model: committed checkpoint output (student or teacher)")
    eval_uri: str = Field(description="evaluate output of the candidate (committed; holds metrics_file)")
    metrics_file: str = Field(METRICS_FILE, description="metrics JSON inside eval_uri")
    metric: str = Field(
        "metrics.AP", description="metric to compare: dotted path into the evaluate stage's metrics JSON"
    )
    higher_is_better: bool = Field(True, description="whether a larger metric is better")
    min_delta: float = Field(0.0, ge=0.0, description="improvement required to move the alias")
    model_name: str = Field("activedet-detector", description="registered model name")
    alias: str = Field("champion", description="alias of the promoted model")
    registry_uri: str | None = Field(None, description="MLflow registry URI (default: mlflow_tracking_uri)")
    cycle: int | None = Field(None, description="continuous-mode cycle (recorded as a version tag)")


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int, *, tracking_uri: str, state_cycle: int) -> Config:
    """Continuous mode: register cycle ``cycle``'s model, compared by ``stopping.metric``."""
    return config_from(
        Config, exp, where=NAME, checkpoint_uri=layout.model(cycle), eval_uri=layout.eval(cycle),
        metric=f"metrics.{exp.stopping.metric}", model_name=f"{exp.name}-detector", mlflow_tracking_uri=tracking_uri,
        cycle=state_cycle,
    )


class Result(BaseModel):
    promoted: bool
    model_name: str
    version: str
    value: float
    previous_version: str | None
    previous_value: float | None
    champion_version: str
    champion_checkpoint_uri: str
    champion_value: float
    reason: str


def _lookup(metrics: dict, path: str, where: str) -> float:
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ActivedetError(f"promote: metric {path!r} not found in {where} (top-level keys: {sorted(metrics)[:20]})")
        node = node[part]
    if not isinstance(node, (int, float)) or isinstance(node, bool):
        raise ActivedetError(f"promote: metric {path!r} in {where} is not a number: {node!r}")
    return float(node)


def _champion(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def run(config: Config) -> Result:
    uri = config.registry_uri or config.mlflow_tracking_uri
    if not uri:
        raise ConfigError("promote: set registry_uri or mlflow_tracking_uri (the MLflow Model Registry to use)")
    store.require_committed(config.checkpoint_uri)
    where = store.join(config.eval_uri, config.metrics_file)
    value = _lookup(store.read_output_json(config.eval_uri, config.metrics_file), config.metric, where)

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.get_registered_model(config.model_name)
    except MlflowException:
        client.create_registered_model(config.model_name, description="activedet detector (continuous mode)")
    current = _champion(client, config.model_name, config.alias)
    tags = {TAG_CHECKPOINT: config.checkpoint_uri, TAG_METRIC: config.metric, TAG_VALUE: repr(value)}
    if config.cycle is not None:
        tags["activedet.cycle"] = str(config.cycle)
    mv = client.create_model_version(config.model_name, source=config.checkpoint_uri, run_id=config.mlflow_run_id, tags=tags)

    prev_value = float(current.tags[TAG_VALUE]) if current is not None and TAG_VALUE in current.tags else None
    if current is None or prev_value is None:
        promoted, reason = True, "no current champion"
    else:
        delta = (value - prev_value) if config.higher_is_better else (prev_value - value)
        promoted = delta > config.min_delta
        verb = "beats" if promoted else "does not beat"
        reason = f"{config.metric} {value:.4f} {verb} champion v{current.version} ({prev_value:.4f}, min_delta {config.min_delta})"
    if promoted:
        client.set_registered_model_alias(config.model_name, config.alias, mv.version)
        champion = (str(mv.version), config.checkpoint_uri, value)
    else:
        champion = (str(current.version), current.tags.get(TAG_CHECKPOINT, current.source), prev_value)
    log.info("promote: %s v%s: %s -> %s", config.model_name, mv.version, reason, "promoted" if promoted else "kept champion")
    return Result(
        promoted=promoted, model_name=config.model_name, version=str(mv.version), value=value,
        previous_version=str(current.version) if current is not None else None, previous_value=prev_value,
        champion_version=champion[0], champion_checkpoint_uri=champion[1], champion_value=float(champion[2]), reason=reason,
    )
