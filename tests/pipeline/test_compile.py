"""The compiled pipeline: tasks, dependencies, unrolled cycles, If guards, cluster settings."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from activedet.cli.main import main
from activedet.images import cpu_image, gpu_image
from activedet.pipeline.components import KINDS

GPU_TASKS = {"train-teacher", "generate-pseudo-labels", "train-student-ssl", "score-unlabeled", "evaluate"}


def _dags(spec: dict) -> dict[str, dict]:
    """Every DAG in the spec (root and sub-DAGs) by component name."""
    out = {"root": spec["root"]["dag"]}
    out.update({name: c["dag"] for name, c in spec["components"].items() if "dag" in c})
    return out


def _all_tasks(spec: dict) -> dict[str, dict]:
    tasks = {}
    for dag in _dags(spec).values():
        tasks.update(dag["tasks"])
    return tasks


def _base(name: str) -> str:
    """'train-teacher-3' -> 'train-teacher'."""
    head, _, tail = name.rpartition("-")
    return head if tail.isdigit() else name


def test_cycles_are_unrolled_with_if_guards(cluster_experiment, tmp_path, compile_docs):
    spec, _, _ = compile_docs(cluster_experiment, tmp_path)
    tasks = _all_tasks(spec)
    count = lambda base: sum(_base(n) == base for n in tasks)  # noqa: E731
    cycles = cluster_experiment.cycles
    for base in ("start-cycle", "train-teacher", "generate-pseudo-labels", "train-student-ssl", "evaluate", "finish-cycle"):
        assert count(base) == cycles, base
    for base in ("cycle-gate", "score-unlabeled", "merge-scores", "select-batch", "oracle"):
        assert count(base) == cycles - 1, base
    assert count("start-run") == count("init") == count("finish-run") == 1
    conditions = {n: t for n, t in tasks.items() if "triggerPolicy" in t and "condition" in t["triggerPolicy"]}
    assert len(conditions) == cycles - 1
    for task in conditions.values():
        gate = [d for d in task["dependentTasks"] if _base(d) == "cycle-gate"]
        assert len(gate) == 1 and f"pipelinechannel--{gate[0]}-Output'] == true" in task["triggerPolicy"]["condition"]


def test_stage_order_within_and_across_cycles(cluster_experiment, tmp_path, compile_docs):
    from activedet.pipeline.plan import load_experiment

    data = cluster_experiment.model_dump(mode="json")  # one pseudo-label task (shards: test_scale_out.py)
    exp = load_experiment({**data, "pseudo_labels": {**data["pseudo_labels"], "shards": 1}})
    spec, _, _ = compile_docs(exp, tmp_path)
    tasks = _all_tasks(spec)
    deps = lambda n: set(tasks[n].get("dependentTasks", []))  # noqa: E731
    assert "start-run" in deps("init")
    assert {"init"} <= deps("start-cycle")
    assert "start-cycle" in deps("train-teacher")
    assert "train-teacher" in deps("generate-pseudo-labels")
    assert "generate-pseudo-labels" in deps("train-student-ssl")
    assert "train-student-ssl" in deps("evaluate")
    assert {"evaluate", "generate-pseudo-labels"} <= deps("finish-cycle")
    dag = next(d for d in _dags(spec).values() if "merge-scores" in d["tasks"])
    loop = next(n for n in dag["tasks"] if n.startswith("for-loop"))
    assert tasks[loop]["parameterIterator"]["items"]["raw"] == "[0, 1, 2, 3]"  # 4 shards
    assert deps("merge-scores") == {loop}
    assert deps("cycle-gate") == {"finish-cycle"}
    assert "merge-scores" in deps("select-batch")
    # Typed values between components: finish-cycle's outputs drive the If and select-batch's budget.
    outs = spec["components"]["comp-finish-cycle"]["outputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in outs.items()} == {"proceed": "BOOLEAN", "budget": "NUMBER_INTEGER", "summary": "STRING"}
    assert spec["components"]["comp-select-batch"]["inputDefinitions"]["parameters"]["budget"]["parameterType"] == "NUMBER_INTEGER"
    assert deps("oracle") == {"select-batch"}
    assert "oracle" in deps("start-cycle-2")  # the next cycle starts on the labeled batch
    # The exit handler closes the MLflow parent run whatever happened.
    root = spec["root"]["dag"]["tasks"]
    assert root["finish-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"


def test_images_and_gpu_settings_in_platform_spec(cluster_experiment, tmp_path, compile_docs):
    spec, platform, _ = compile_docs(cluster_experiment, tmp_path)
    kube = cluster_experiment.kubernetes
    pspec = json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    execs = json_format.MessageToDict(pspec.platforms["kubernetes"].deployment_spec)["executors"]
    containers = spec["deploymentSpec"]["executors"]
    gpu_execs = [e for e in containers if _base(e.removeprefix("exec-")) in GPU_TASKS]
    cpu_execs = [e for e in containers if e not in gpu_execs]
    assert gpu_execs and cpu_execs
    for name in gpu_execs:
        c = containers[name]["container"]
        assert c["image"] == gpu_image(kube.image_registry)
        assert c["resources"]["accelerator"]["resourceType"] == kube.accelerator_type
        assert c["resources"]["accelerator"]["resourceCount"] == str(kube.accelerator_limit)
        assert c["resources"]["resourceMemoryRequest"] == kube.gpu_memory_request
        assert {"name": "AWS_ENDPOINT_URL", "value": kube.s3_endpoint_url} in c["env"]
        e = execs[name]
        assert e["nodeSelector"]["labels"] == kube.node_selector
        assert e["tolerations"][0]["key"] == "nvidia.com/gpu" and e["tolerations"][0]["effect"] == "NoSchedule"
        shm = e["emptyDirMounts"][0]
        assert (shm["mountPath"], shm["medium"], shm["sizeLimit"]) == ("/dev/shm", "Memory", kube.shm_size)
        assert e["secretAsEnv"][0]["secretName"] == kube.s3_secret
    for name in cpu_execs:
        c = containers[name]["container"]
        assert c["image"] == cpu_image(kube.image_registry)
        assert "accelerator" not in c.get("resources", {})
        assert "nodeSelector" not in execs.get(name, {})
        assert execs[name]["secretAsEnv"][0]["secretName"] == kube.s3_secret
    # no secret values anywhere, only the Secret's name
    assert "AWS_SECRET_ACCESS_KEY=" not in (tmp_path / "pipeline.yaml").read_text()


def test_retries_and_no_package_installs(cluster_experiment, tmp_path, compile_docs):
    spec, _, path = compile_docs(cluster_experiment, tmp_path)
    tasks = _all_tasks(spec)
    assert tasks["train-teacher"]["retryPolicy"]["maxRetryCount"] == cluster_experiment.kubernetes.retries
    text = path.read_text()
    assert "pip install" not in text and "pip_install" not in text


def test_ir_parses_into_pipeline_spec(cluster_experiment, tmp_path, compile_docs):
    spec, _, _ = compile_docs(cluster_experiment, tmp_path)
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert parsed.pipeline_info.name == cluster_experiment.name
    assert set(parsed.root.input_definitions.parameters) == {"experiment", "run_root"}


def test_ten_cycles_stay_well_under_a_mebibyte(cluster_experiment, tmp_path, compile_docs):
    exp = cluster_experiment.model_copy(update={"cycles": 10})
    spec, _, path = compile_docs(exp, tmp_path)
    assert sum(_base(n) == "train-teacher" for n in _all_tasks(spec)) == 10
    assert path.stat().st_size < 600 * 1024


def test_local_compile_has_no_platform_settings_and_ssl_off_drops_student(demo_experiment, tmp_path, compile_docs):
    exp = demo_experiment.model_copy(update={"ssl": demo_experiment.ssl.model_copy(update={"enabled": False})})
    spec, platform, _ = compile_docs(exp, tmp_path, platform=False)
    assert platform is None
    names = {_base(n) for n in _all_tasks(spec)}
    assert "train-student-ssl" not in names and "generate-pseudo-labels" not in names
    assert "evaluate" in names


def test_every_component_is_a_thin_installed_package_call():
    for func in KINDS:
        assert "from activedet" in __import__("inspect").getsource(func) or func.__name__ == "cycle_gate"


def test_compile_cli_writes_yaml(cluster_experiment, tmp_path, capsys):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "configs" / "voc_r50_cluster.yaml"
    out = tmp_path / "p.yaml"
    assert main(["compile", str(cfg), "-o", str(out)]) == 0
    assert out.stat().st_size > 0 and "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["init", "train-teacher", "generate-pseudo-labels", "train-student-ssl", "evaluate",
                                   "score-unlabeled", "merge-scores", "select-batch", "oracle", "merge-pseudo-labels"])
def test_plan_builds_a_valid_config_for_each_stage(stage, cluster_experiment, demo_experiment):
    """Each stage's from_experiment builds its Config from each shipped config that runs the stage."""
    from activedet.pipeline import plan
    from activedet.stages import stage_module

    try:
        module = stage_module(stage)
    except ModuleNotFoundError as exc:
        if exc.name == f"activedet.stages.{stage.replace('-', '_')}":
            pytest.skip(f"stage {stage} not in this build yet")
        raise
    built = []
    for exp in (cluster_experiment, demo_experiment):
        if stage != "init" and stage not in {name for name, _ in plan.cycle_stages(exp, 1)}:
            continue  # e.g. the demo runs without the SSL student: nothing to build it from
        config = plan.stage_config(stage, exp, "s3://b/run", 1, tracking_uri="sqlite:///x.db", mlflow_run_id="abc")
        assert isinstance(config, module.Config) and config.mlflow_run_id == "abc"
        built.append(exp.name)
    assert built, f"no shipped config runs {stage}"


def test_submit_errors_are_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "sub.yaml"
    cfg.write_text("name: sub\ndataset: {uri: s3://b/d}\ninitial_size: 1\nbudget: 1\ncycles: 2\n")
    assert main(["submit", str(cfg), "--host", "http://127.0.0.1:9"]) == 2
    assert "store_root is required" in capsys.readouterr().err
    cfg.write_text(cfg.read_text() + "store_root: s3://b/runs\n")
    assert main(["submit", str(cfg), "--host", "http://127.0.0.1:9"]) == 2  # nothing listens on port 9
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("activedet: error: cannot reach Kubeflow Pipelines at http://127.0.0.1:9")


def test_export_labeling_ends_the_run_with_an_export(cluster_experiment, tmp_path, compile_docs):
    exp = cluster_experiment.model_copy(update={"labeling": "export", "cycles": 1})
    spec, _, _ = compile_docs(exp, tmp_path)
    tasks = _all_tasks(spec)
    bases = {_base(n) for n in tasks}
    assert {"score-unlabeled", "merge-scores", "select-batch", "export-batch"} <= bases
    assert "oracle" not in bases and sum(_base(n) == "train-teacher" for n in tasks) == 1
    assert "select-batch" in tasks["export-batch"]["dependentTasks"]


def test_export_labeling_requires_one_cycle_per_run(cluster_experiment):
    from activedet.errors import ConfigError
    from activedet.pipeline.plan import load_experiment

    data = cluster_experiment.model_dump()
    data.update(labeling="export", cycles=3)
    with pytest.raises(ConfigError, match="one cycle per pipeline run"):
        load_experiment(data)
