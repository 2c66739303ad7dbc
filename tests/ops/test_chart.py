"""Static checks of the Helm chart (no helm binary here): values vs schema, template references."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "activedet"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
TEMPLATES = sorted((CHART / "templates").glob("*"))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validate(values: dict) -> None:
    jsonschema.validate(values, SCHEMA, cls=jsonschema.Draft7Validator)


def test_chart_files_exist():
    assert (CHART / "Chart.yaml").is_file() and TEMPLATES
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["name"] == "activedet"


def test_default_values_match_schema():
    _validate(VALUES)


@pytest.mark.parametrize("override", sorted((CHART / "ci").glob("*.yaml")), ids=lambda p: p.name)
def test_example_overrides_match_schema(override):
    _validate(_merge(VALUES, yaml.safe_load(override.read_text())))


@pytest.mark.parametrize(
    "override",
    [
        {"s3": {"credentialsSecret": {"name": "x", "accessKeyIdKey": "a", "secretAccessKeyKey": "b", "secretAccessKey": "hunter2"}}},
        {"s3": {"accessKey": "AKIA..."}},
        {"schedule": {"cron": "daily"}},
        {"schedule": {"name": "Bad_Name"}},
        {"mlflow": {"artifactRoot": "/local/path"}},
        {"gpu": {"tolerations": [{"key": "k", "effect": "Sometimes"}]}},
        {"kfp": {"host": "ml-pipeline"}},
        {"unknownTopLevel": 1},
    ],
)
def test_schema_rejects_bad_values(override):
    with pytest.raises(jsonschema.ValidationError):
        _validate(_merge(VALUES, override))


def _schema_has(path: list[str]) -> bool:
    node = SCHEMA
    for part in path:
        while "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif node.get("type") == "object" and node.get("additionalProperties") not in (False, None):
            return True  # free-form mapping (e.g. nodeSelector, resources)
        else:
            return False
    return True


def test_templates_reference_only_declared_values():
    refs = set()
    for t in TEMPLATES:
        refs |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", t.read_text()))
    assert refs, "no .Values references found"
    undeclared = sorted(r for r in refs if not _schema_has(r.strip(".").split(".")))
    assert not undeclared, f"templates use values the schema does not declare: {undeclared}"


def test_no_secret_values_in_chart():
    text = "\n".join(p.read_text() for p in [CHART / "values.yaml", *CHART.glob("ci/*.yaml"), *TEMPLATES])
    assert not re.search(r"(?i)(password|secretaccesskey|aws_secret_access_key)\s*:\s*['\"]?[A-Za-z0-9/+]{6,}", text)
    assert "kind: Secret\n" not in text  # secrets are referenced, never created with values
    assert "secretKeyRef" in text


def test_mlflow_allowed_hosts_names_the_service():
    tpl = (CHART / "templates" / "mlflow.yaml").read_text()
    line = next(line for line in tpl.splitlines() if "--allowed-hosts=" in line)
    assert "{{ $svc }}," in line and "{{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local" in line
    assert "--default-artifact-root={{ .Values.mlflow.artifactRoot }}" in tpl
    assert "MLFLOW_BACKEND_STORE_URI" in tpl and "secretKeyRef" in tpl


def test_experiment_in_values_is_a_valid_activedet_config():
    """What the ConfigMap renders (values.experiment + chart-added fields) loads as an experiment."""
    from activedet.pipeline.experiment import load_experiment

    for override in [{}, *(yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*.yaml")))]:
        v = _merge(VALUES, override)
        exp = dict(v["experiment"], store_root=f"s3://{v['s3']['bucket']}/runs",
                   mlflow={"tracking_uri": "http://activedet-mlflow:5000", "experiment": v["kfp"]["experiment"]},
                   kubernetes={"node_selector": v["gpu"]["nodeSelector"], "tolerations": v["gpu"]["tolerations"],
                               "accelerator_type": v["gpu"]["acceleratorType"], "accelerator_limit": v["gpu"]["acceleratorLimit"],
                               "s3_secret": v["s3"]["credentialsSecret"]["name"], "image_registry": "ghcr.io/activedet"})
        load_experiment(exp)


def test_schedule_job_runs_activedet_schedule():
    tpl = (CHART / "templates" / "schedule-job.yaml").read_text()
    assert "kind: Job" in tpl and "- schedule" in tpl and "--cron={{ .Values.schedule.cron }}" in tpl
    assert "/config/experiment.yaml" in tpl and "--host={{ .Values.kfp.host }}" in tpl
