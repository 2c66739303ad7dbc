"""KFP recurring runs for continuous mode: request building and the client calls, testable offline.

Functions take the KFP client explicitly (any object with ``create_experiment``,
``create_recurring_run``, ``list_recurring_runs`` and ``delete_recurring_run`` like
:class:`kfp.Client`), so tests pass a small fake and production passes ``kfp.Client(host=...)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activedet.errors import ActivedetError, ConfigError
from activedet.ops.cron import to_kfp_cron

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ScheduleRequest:
    """Everything ``create_recurring_run`` needs, validated."""

    job_name: str
    experiment_name: str
    cron_expression: str  # KFP's six-field form
    pipeline_package_path: str
    params: dict[str, Any] = field(default_factory=dict)
    max_concurrency: int = 1
    no_catchup: bool = True
    enabled: bool = True
    description: str = ""
    namespace: str | None = None  # multi-user Kubeflow: the profile namespace
    service_account: str | None = None  # of the pipeline pods (KFP's default when None)


def build_request(
    *,
    name: str,
    cron: str,
    package_path: str | Path,
    params: dict[str, Any],
    experiment: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    namespace: str | None = None,
    service_account: str | None = None,
) -> ScheduleRequest:
    """Validate the schedule settings and convert the cron expression to KFP's six fields."""
    if not _NAME.match(name):
        raise ConfigError(f"schedule name {name!r}: use lowercase letters, digits and '-' (a DNS-1123 label)")
    if max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
    if not Path(package_path).is_file():
        raise ActivedetError(f"compiled pipeline not found: {package_path}")
    kfp_cron = to_kfp_cron(cron)
    return ScheduleRequest(
        job_name=name,
        experiment_name=experiment or name,
        cron_expression=kfp_cron,
        pipeline_package_path=str(package_path),
        params=dict(params),
        max_concurrency=max_concurrency,
        no_catchup=not catchup,
        description=f"activedet continuous retraining ({cron.strip()} -> KFP '{kfp_cron}')",
        namespace=namespace or None,
        service_account=service_account or None,
    )


def _experiment_id(exp) -> str:
    return getattr(exp, "experiment_id", None) or getattr(exp, "id", None) or exp["experiment_id"]


def create_schedule(client, request: ScheduleRequest) -> str:
    """Create the KFP experiment (if needed) and the recurring run; returns the recurring run id."""
    exp = client.create_experiment(name=request.experiment_name, namespace=request.namespace)
    run = client.create_recurring_run(
        experiment_id=_experiment_id(exp),
        job_name=request.job_name,
        description=request.description,
        cron_expression=request.cron_expression,
        max_concurrency=request.max_concurrency,
        no_catchup=request.no_catchup,
        params=request.params,
        pipeline_package_path=request.pipeline_package_path,
        enabled=request.enabled,
        service_account=request.service_account,
    )
    run_id = getattr(run, "recurring_run_id", None) or getattr(run, "id", None)
    if not run_id:
        raise ActivedetError(f"KFP created recurring run {request.job_name!r} but answered without its id")
    log.info("created recurring run %s (%s, cron %s)", run_id, request.job_name, request.cron_expression)
    return run_id


def replace_schedule(client, request: ScheduleRequest) -> tuple[str, list[str]]:
    """Create the recurring run, then delete the older ones of the same name in its experiment.

    Idempotent for a chart upgrade or a re-run: afterwards exactly one recurring run has the name.
    The new one is created first, so a failed creation leaves the old schedule in place.
    Returns (new id, replaced ids).
    """
    exp_id = _experiment_id(client.create_experiment(name=request.experiment_name, namespace=request.namespace))
    old = [r["id"] for r in list_schedules(client, experiment_id=exp_id, namespace=request.namespace) if r["name"] == request.job_name]
    run_id = create_schedule(client, request)
    for rid in old:
        delete_schedule(client, rid)
    if old:
        log.info("replaced recurring run(s) %s named %s", ", ".join(old), request.job_name)
    return run_id, old


def delete_by_name(client, name: str, *, namespace: str | None = None) -> list[str]:
    """Delete every recurring run named ``name`` (in ``namespace``); returns their ids."""
    ids = [r["id"] for r in list_schedules(client, namespace=namespace) if r["name"] == name]
    for rid in ids:
        delete_schedule(client, rid)
    return ids


def list_schedules(client, *, experiment_id: str | None = None, namespace: str | None = None,
                   page_size: int = 100) -> list[dict[str, Any]]:
    """All recurring runs (following page tokens) as dicts: id, name, cron, status."""
    out, token = [], ""
    while True:
        resp = client.list_recurring_runs(page_token=token, page_size=page_size, experiment_id=experiment_id, namespace=namespace)
        for r in getattr(resp, "recurring_runs", None) or []:
            trigger = getattr(r, "trigger", None)
            cron = getattr(getattr(trigger, "cron_schedule", None), "cron", None)
            out.append({
                "id": r.recurring_run_id,
                "name": r.display_name,
                "cron": cron,
                "status": str(getattr(r, "status", "")),
                "max_concurrency": getattr(r, "max_concurrency", None),
                "no_catchup": getattr(r, "no_catchup", None),
            })
        token = getattr(resp, "next_page_token", "") or ""
        if not token:
            return out


def delete_schedule(client, recurring_run_id: str) -> None:
    client.delete_recurring_run(recurring_run_id)
    log.info("deleted recurring run %s", recurring_run_id)


def kfp_client(host: str, namespace: str | None = None) -> Any:
    """A probed :class:`kfp.Client` for ``host`` whose failures are one-line errors (see :mod:`kfp_api`)."""
    from activedet.ops import kfp_api

    return kfp_api.connect(host, namespace=namespace)


#: compiles an experiment config file to a pipeline package; returns (package path, pipeline params)
Compiler = Callable[[str, Path], tuple[Path, dict[str, Any]]]
