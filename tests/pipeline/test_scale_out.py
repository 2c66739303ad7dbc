"""Scale-out in the DAG (issue 18): multi-GPU training pods and sharded pseudo-labeling.

Compiled: ``kubernetes.accelerator_limit: 2`` gives the training pods 2 GPUs and their stages 2
ranks; ``pseudo_labels.shards: 2`` gives a ParallelFor of generate-pseudo-labels shards and a
merge-pseudo-labels task after it; the mean teacher's cycles have no pseudo-label stage. Run for
real through kfp.local: 2 gloo ranks per training task, the mean-teacher student included.
"""

from __future__ import annotations

import json

import pytest

from activedet.pipeline import plan
from activedet.pipeline.experiment import experiment_from_json
from activedet.pipeline.plan import load_experiment


def _with(exp, **sections):
    data = exp.model_dump(mode="json")
    for key, value in sections.items():
        data[key] = {**data[key], **value}
    return load_experiment(data)


def _tasks(spec):
    dags = {"root": spec["root"]["dag"], **{n: c["dag"] for n, c in spec["components"].items() if "dag" in c}}
    return {dag_name: dag["tasks"] for dag_name, dag in dags.items()}


def test_accelerator_limit_2_is_one_pod_with_2_gpus_running_2_ranks(cluster_experiment, tmp_path, compile_docs):
    exp = _with(cluster_experiment, kubernetes={"accelerator_limit": 2})
    spec, _, _ = compile_docs(exp, tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    for stage in ("train-teacher", "train-student-ssl"):
        resources = executors[f"exec-{stage}"]["container"]["resources"]
        assert resources["accelerator"]["resourceCount"] == "2"  # one pod, 2 GPUs
    # inference stages scale out by shards, not ranks: one GPU per pod unless set
    inference = ("evaluate", "score-unlabeled", "generate-pseudo-labels")
    for stage in inference:
        assert executors[f"exec-{stage}"]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    (tmp_path / "inf").mkdir()
    spec_inf, _, _ = compile_docs(_with(exp, kubernetes={"inference_accelerator_limit": 2}), tmp_path / "inf")
    for stage in inference:
        assert spec_inf["deploymentSpec"]["executors"][f"exec-{stage}"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    # the pod's stage config, built from the compiled experiment parameter, runs 2 ranks
    compiled = experiment_from_json(spec["root"]["inputDefinitions"]["parameters"]["experiment"]["defaultValue"])
    for stage in ("train-teacher", "train-student-ssl"):
        assert plan.stage_config(stage, compiled, "s3://b/run", 0).devices == 2
    # training.devices wins over the accelerator count; 1 GPU -> 1 process
    assert plan.stage_config("train-teacher", _with(exp, training={"devices": 1}), "s3://b/run", 0).devices == 1
    assert plan.stage_config("train-teacher", cluster_experiment, "s3://b/run", 0).devices == max(1, cluster_experiment.kubernetes.accelerator_limit)
    # the mean-teacher student runs N ranks too (issue 18), like the offline one
    mt = _with(exp, ssl={"mode": "mean_teacher"})
    assert plan.stage_config("train-student-ssl", mt, "s3://b/run", 0).devices == 2
    assert plan.stage_config("train-teacher", mt, "s3://b/run", 0).devices == 2


def test_more_gpu_ranks_than_gpus_per_pod_is_refused_at_compile(cluster_experiment, tmp_path):
    from activedet.errors import ConfigError
    from activedet.pipeline.dag import compile_pipeline

    exp = _with(cluster_experiment, training={"devices": 4}, kubernetes={"accelerator_limit": 2})
    with pytest.raises(ConfigError, match="training.devices: 4 training ranks need 4 GPUs.*accelerator_limit is 2"):
        compile_pipeline(exp, str(tmp_path / "p.yaml"))


def test_pseudo_label_shards_compile_to_a_parallel_for_and_a_merge(cluster_experiment, tmp_path, compile_docs):
    exp = _with(cluster_experiment, pseudo_labels={"shards": 3})
    spec, _, _ = compile_docs(exp, tmp_path)
    tasks = _tasks(spec)
    loops = [name for name, t in tasks.items() if any(n.startswith("generate-pseudo-labels") for n in t)]
    assert loops and all(name.startswith("comp-for-loop") for name in loops)  # inside a ParallelFor, not unrolled
    cycle0 = next(t for t in tasks.values() if "merge-pseudo-labels" in t)
    merge = cycle0["merge-pseudo-labels"]
    assert any(dep.startswith("for-loop") for dep in merge["dependentTasks"])  # waits for the whole loop
    student = next(t for t in tasks.values() if "train-student-ssl" in t)["train-student-ssl"]
    assert "merge-pseudo-labels" in student["dependentTasks"]
    names = {k.removeprefix("exec-") for k in spec["deploymentSpec"]["executors"]}
    assert "merge-pseudo-labels" in names
    stages = [s for s, _ in plan.cycle_stages(exp, 0)]
    assert stages[:5] == ["train-teacher", "generate-pseudo-labels", "generate-pseudo-labels", "generate-pseudo-labels", "merge-pseudo-labels"]


def test_mean_teacher_cycles_have_no_pseudo_label_stage(cluster_experiment, tmp_path, compile_docs):
    from activedet.config import load_config
    from activedet.errors import ConfigError
    from activedet.stages import train_student_ssl

    exp = _with(cluster_experiment, ssl={"mode": "mean_teacher"}, pseudo_labels={"shards": 3})
    assert [stage for stage, _ in plan.cycle_stages(exp, 0)][:3] == ["train-teacher", "train-student-ssl", "evaluate"]
    spec, _, _ = compile_docs(exp, tmp_path)
    tasks = _tasks(spec)
    assert not any(n.startswith(("generate-pseudo-labels", "merge-pseudo-labels")) for t in tasks.values() for n in t)
    student = next(t for t in tasks.values() if "train-student-ssl" in t)["train-student-ssl"]
    assert "train-teacher" in student["dependentTasks"]
    config = plan.stage_config("train-student-ssl", exp, "s3://b/run", 0)
    assert config.pseudo_labels_uri is None
    offline = config.model_dump(mode="json") | {"mode": "offline"}
    with pytest.raises(ConfigError, match="pseudo_labels_uri: mode offline trains on generate-pseudo-labels"):
        load_config(train_student_ssl.Config, offline)


@pytest.mark.slow
def test_local_run_two_mean_teacher_cycles_with_2_ranks(demo_experiment, tmp_path):
    """kfp.local, two cycles: 2 gloo ranks per training task (the mean-teacher student too, issues 15/18),
    no pseudo-label stage (the EMA teacher labels every batch); each cycle publishes and evaluates the
    EMA teacher. Sharded pseudo-labels run through kfp.local in tests/pipeline/test_configs.py
    (configs/voc_r50_cluster.yaml)."""
    from activedet.pipeline.local import run_local

    data = demo_experiment.model_dump(mode="json")
    data.update({
        "dataset": {"synth": {"sequences": 8, "frames": 2, "seed": 0, "height": 64, "width": 128}},
        "initial_size": 4, "budget": 2, "cycles": 2, "store_root": None, "baselines": [],
        "training": {**data["training"], "preset": "tiny", "backbone_weights": None, "teacher_iterations": 2, "student_iterations": 2, "batch_size": 2, "devices": 2},
        "pseudo_labels": {"filter": "act", "params": {"alpha": 50}, "max_pool_images": 6, "shards": 2},
        "ssl": {**data["ssl"], "enabled": True, "mode": "mean_teacher", "mean_teacher": {"act_images": 4}},
        "mlflow": {**data["mlflow"], "tracking_uri": None},
    })
    exp = load_experiment(data)
    outcome = run_local(exp, tmp_path / "run")
    assert outcome.state == "SUCCEEDED"
    lay = outcome.layout
    store_dir = tmp_path / "run" / "store" / "cycle-00"
    assert not (store_dir / "pseudo_candidates").exists() and not (store_dir / "pseudo_labels").exists()
    assert all(r["pseudo_labels"] is None for r in outcome.rows)

    def local(uri):
        return tmp_path / "run" / "store" / uri.split("/store/")[-1]

    assert [r["cycle"] for r in outcome.rows] == [0, 1] and all(0.0 <= r["AP"] <= 1.0 for r in outcome.rows)
    for cycle in range(2):
        teacher = json.loads((local(lay.teacher(cycle)) / "meta.json").read_text())
        student = json.loads((local(lay.student(cycle)) / "meta.json").read_text())
        assert teacher["training"]["distributed"]["world_size"] == 2
        assert student["training"]["distributed"]["world_size"] == 2
        # the cycle's model is the EMA teacher, recorded as such, the same on both ranks, and it is what was evaluated
        assert student["published_model"] == "ema_teacher" and student["ssl_mode"] == "mean_teacher"
        assert len(set(student["training"]["ema_teacher_sha256"])) == 1 and "final_act" in student["training"]
        assert len(set(student["training"]["thresholds_sha256"])) == 1  # ACT estimated on both ranks' shares, gathered
        evaluation = json.loads((local(lay.eval(cycle)) / "metrics.json").read_text())
        assert evaluation["checkpoint_uri"] == lay.model(cycle) == lay.student(cycle)
        assert {"AP", "AP50"} <= set(evaluation["metrics"])


@pytest.mark.parametrize("cache", [{"pvc": "activedet-cache"}, {"size": "200Gi", "storage_class": "local-nvme"}])
def test_dataset_cache_volume_on_every_gpu_stage(cluster_experiment, tmp_path, compile_docs, cache):
    """kubernetes.dataset_cache: the shared claim or a per-pod ephemeral volume (a storage request the
    scheduler honours) at mount_path, and ACTIVEDET_CACHE_DIR pointing there; CPU stages untouched."""
    from activedet.pipeline.components import is_gpu

    exp = _with(cluster_experiment, kubernetes={"dataset_cache": {**cache, "mount_path": "/cache"}})
    spec, platform, _ = compile_docs(exp, tmp_path)
    containers = spec["deploymentSpec"]["executors"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    def component(executor: str) -> str:  # exec-train-teacher-2 -> train-teacher (cycles unrolled)
        name = executor.removeprefix("exec-")
        return name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name

    gpu = [e for e in containers if is_gpu(component(e))]
    assert {"exec-train-teacher", "exec-score-unlabeled", "exec-evaluate"} <= set(gpu)
    for name in containers:
        env = {e["name"]: e.get("value") for e in containers[name]["container"].get("env", [])}
        volumes = executors.get(name, {})
        if name in gpu:
            assert env["ACTIVEDET_CACHE_DIR"] == "/cache"
            if "pvc" in cache:
                assert volumes["pvcMount"][0]["mountPath"] == "/cache"
                assert "activedet-cache" in str(volumes["pvcMount"][0])
            else:
                eph = volumes["genericEphemeralVolume"][0]
                assert eph["mountPath"] == "/cache" and eph["size"] == "200Gi" and eph["storageClassName"] == "local-nvme"
        else:
            assert "ACTIVEDET_CACHE_DIR" not in env and "pvcMount" not in volumes and "genericEphemeralVolume" not in volumes


@pytest.mark.parametrize("cache, message", [
    ({}, "give either pvc"), ({"pvc": "a", "size": "1Gi"}, "give either pvc"), ({"size": "lots"}, "not a Kubernetes quantity"),
    ({"pvc": "a", "storage_class": "x"}, "storage_class applies to the ephemeral volume"),
    ({"pvc": "a", "mount_path": "cache"}, "not an absolute path"),
])
def test_bad_dataset_cache_fails_at_load(cluster_experiment, cache, message):
    from activedet.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _with(cluster_experiment, kubernetes={"dataset_cache": cache})
