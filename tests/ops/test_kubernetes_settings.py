"""The experiment's `kubernetes` settings reach the compiled pipeline (issue 19, fix 6).

Namespaces with a ResourceQuota reject pods without limits; restricted Pod Security rejects root
containers; a hung task must end; private registries need pull Secrets; score shards need a cap.
"""

from __future__ import annotations

import pytest
import yaml

from activedet.errors import ConfigError
from activedet.pipeline.plan import load_experiment

BASE = {"name": "k8s", "dataset": {"uri": "s3://b/ds"}, "store_root": "s3://b/runs", "initial_size": 2, "budget": 2,
        "cycles": 2, "acquisition": {"shards": 3}}


def _compiled(tmp_path, kube: dict, continuous: bool = False) -> dict:
    from kfp import compiler

    exp = load_experiment({**BASE, "kubernetes": kube})
    out = tmp_path / "p.yaml"
    if continuous:
        from activedet.ops.pipeline import build_continuous

        compiler.Compiler().compile(build_continuous(exp), package_path=str(out))
    else:
        from activedet.pipeline.dag import compile_pipeline

        compile_pipeline(exp, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    return {"spec": docs[0], "platform": docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]}


def _containers(spec: dict) -> dict:
    return {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}


def _iterators(node: dict) -> list[dict]:
    found = []
    if isinstance(node, dict):
        if "iteratorPolicy" in node:
            found.append(node["iteratorPolicy"])
        for v in node.values():
            found += _iterators(v)
    elif isinstance(node, list):
        for v in node:
            found += _iterators(v)
    return found


@pytest.mark.parametrize("continuous", [False, True], ids=["active-learning", "continuous"])
def test_limits_timeouts_security_pull_secrets_parallelism(tmp_path, continuous):
    kube = {"image_pull_secrets": ["regcred"], "parallelism": 2, "gpu_timeout_seconds": 7200, "cpu_timeout_seconds": 600,
            "cpu_memory_limit": "6Gi", "s3_endpoint_url": "http://minio.platform.svc.cluster.local:9000"}
    c = _compiled(tmp_path, kube, continuous)
    containers, platform = _containers(c["spec"]), c["platform"]
    assert containers and set(platform) == set(containers)  # every task gets the platform settings
    for name, container in containers.items():
        res = container["resources"]
        gpu = "accelerator" in res
        assert res["resourceCpuLimit"] and res["resourceMemoryLimit"], name
        assert res["resourceMemoryLimit"] == ("24576Mi" if gpu else "6Gi"), name  # GPU: 16Gi request + 8Gi /dev/shm
        p = platform[name]
        assert p["imagePullSecret"][0]["secretName"] == "regcred", name
        assert p["securityContext"]["runAsNonRoot"] is True and int(p["securityContext"]["runAsUser"]) == 10001, name
        assert int(p["activeDeadlineSeconds"]) == (7200 if gpu else 600), name
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"] == kube["s3_endpoint_url"], name
    policies = _iterators(c["spec"])
    assert policies and all(p == {"parallelismLimit": 2} for p in policies)


def test_defaults_set_limits_and_no_parallelism_cap(tmp_path):
    c = _compiled(tmp_path, {})
    for name, container in _containers(c["spec"]).items():
        res = container["resources"]
        assert res["resourceCpuLimit"] == ("8000m" if "accelerator" in res else "2000m"), name
    assert _iterators(c["spec"]) == []


@pytest.mark.parametrize(
    ("kube", "match"),
    [
        ({"gpu_memory_request": "16Gi", "gpu_memory_limit": "8Gi"}, "gpu_memory_limit 8Gi is below gpu_memory_request"),
        ({"gpu_memory_limit": "20Gi"}, "shm_size"),
        ({"cpu_cpu_limit": "500m"}, "cpu_cpu_limit 500m is below cpu_cpu_request 1"),
        ({"cpu_memory_limit": "lots"}, "not a Kubernetes quantity"),
        ({"parallelism": -1}, "parallelism"),
    ],
)
def test_bad_kubernetes_settings_are_config_errors(kube, match):
    with pytest.raises(ConfigError, match=match):
        load_experiment({**BASE, "kubernetes": kube})
