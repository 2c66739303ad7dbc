"""The active-learning DAG: one pipeline function for kfp.local and for Kubeflow Pipelines.

KFP v2 has no recursion, so the cycles are unrolled at compile time::

    start-run -> init -> cycle 0 -> [If continue] -> cycle 1 -> [If continue] -> ...

    cycle k:  start-cycle -> train-teacher -> generate-pseudo-labels -> train-student-ssl
              -> evaluate -> finish-cycle (typed outputs: proceed, budget, summary) -> cycle-gate
              (with pseudo_labels.shards > 1: generate-pseudo-labels shards (dsl.ParallelFor)
              -> merge-pseudo-labels, which filters every candidate together)
    then, inside ``dsl.If(cycle-gate == True)``:
              score-unlabeled (dsl.ParallelFor over shards; not for random / uniform) -> merge-scores
              -> select-batch -> oracle (simulated labeling) -> cycle k + 1
              (or, with ``labeling: export``, -> export-batch and the run ends: annotators take days)

With ``baselines: [random]`` each baseline arm also selects from cycle 0 (same initial set, same
cycle-0 model) inside cycle 0's ``dsl.If`` and runs its own cycles 1.. beside the main chain
(every arm task gets ``arm``; its outputs live under ``<run_root>/baselines/<arm>/``), and
``finish-run`` compares the curves.

The last cycle stops after ``finish-cycle``; an earlier one stops when its gate says so (target
AP reached, budget cap hit, pool empty). An exit handler (``finish-run``) writes the budget curve
and closes the MLflow parent run whatever happened. Cluster settings (GPU node selector,
tolerations, accelerators, requests and limits, memory-backed /dev/shm, retries, timeouts, pull
Secrets, non-root security context, S3 Secret) are applied only
when ``platform=True``: kfp.local does not need them.
"""

# No "from __future__ import annotations": KFP reads the pipeline function's real annotations.
from kfp import dsl
from kfp import kubernetes as k8s

from activedet import store
from activedet.pipeline.components import is_gpu, make_components
from activedet.pipeline.experiment import ExperimentConfig
from activedet.pipeline.plan import scores_needed
from activedet.stages import STAGES, multi_device

SHM_VOLUME = "dshm"
CACHE_VOLUME = "activedet-cache"


def default_run_root(exp: ExperimentConfig) -> str:
    """The run root a compiled pipeline uses when the ``run_root`` parameter is not given."""
    return store.join(exp.store_root or "runs", exp.name)


def _configure(task: dsl.PipelineTask, exp: ExperimentConfig, platform: bool) -> dsl.PipelineTask:
    """Caching off (runs write MLflow runs and store outputs); cluster settings when ``platform``."""
    task.set_caching_options(False)
    if not platform:
        return task
    kube = exp.kubernetes
    name = task.component_spec.name
    if kube.retries and name != "finish-run":
        task.set_retry(kube.retries, backoff_duration="30s", backoff_factor=2.0)
    if kube.s3_secret:
        k8s.use_secret_as_env(task, secret_name=kube.s3_secret, secret_key_to_env=dict(kube.s3_secret_keys))
    if kube.s3_endpoint_url:
        task.set_env_variable("AWS_ENDPOINT_URL", kube.s3_endpoint_url)
        task.set_env_variable("MLFLOW_S3_ENDPOINT_URL", kube.s3_endpoint_url)
    if kube.image_pull_secrets:
        k8s.set_image_pull_secrets(task, list(kube.image_pull_secrets))
    # restricted Pod Security: non-root (the images' user); the compiler adds no-escalation, drop ALL
    k8s.set_security_context(task, run_as_user=kube.run_as_user, run_as_group=kube.run_as_user, run_as_non_root=True)
    gpu = is_gpu(name)
    cpu_limit, memory_limit = kube.limits(gpu)
    task.set_cpu_limit(cpu_limit).set_memory_limit(memory_limit)  # quota'd namespaces require limits
    timeout = kube.gpu_timeout_seconds if gpu else kube.cpu_timeout_seconds
    if timeout:
        k8s.set_timeout(task, timeout)
    if gpu:
        task.set_cpu_request(kube.gpu_cpu_request).set_memory_request(kube.gpu_memory_request)
        accelerators = kube.accelerators(multi_device=name in STAGES and multi_device(name))
        if accelerators > 0:
            task.set_accelerator_type(kube.accelerator_type).set_accelerator_limit(accelerators)
        for key, value in kube.node_selector.items():
            k8s.add_node_selector(task, label_key=key, label_value=value)
        for tol in kube.tolerations:
            k8s.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
        k8s.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory", size_limit=kube.shm_size)
        if kube.dataset_cache is not None:
            mount_dataset_cache(task, kube.dataset_cache)
    else:
        task.set_cpu_request(kube.cpu_cpu_request).set_memory_request(kube.cpu_memory_request)
    return task


def mount_dataset_cache(task: dsl.PipelineTask, cache) -> None:
    """The image cache of a GPU stage on a volume: the shared claim, or a per-pod generic ephemeral
    volume (a storage request the scheduler honours; KFP has no ephemeral-storage resource field)."""
    if cache.pvc:
        k8s.mount_pvc(task, pvc_name=cache.pvc, mount_path=cache.mount_path)
    else:
        k8s.add_ephemeral_volume(task, volume_name=CACHE_VOLUME, mount_path=cache.mount_path, access_modes=["ReadWriteOnce"],
                                 size=cache.size, storage_class_name=cache.storage_class)
    task.set_env_variable("ACTIVEDET_CACHE_DIR", cache.mount_path)


def shard_and_merge(shard_component, merge_component, count: int, conf, *, name: str, platform: bool, parallelism: int = 0,
                    after: dsl.PipelineTask | None = None, **common) -> dsl.PipelineTask:
    """``count`` tasks of ``shard_component(shard=i)``, then ``merge_component`` after all of them; returns the merge task.

    On a cluster the shards are a ``dsl.ParallelFor`` (``parallelism`` caps how many run at once,
    0 = all) that the merge waits for with ``.after()``. For kfp.local they are unrolled into one
    task per shard: kfp.local hands upstream task outputs (the cycle's MLflow run id, the
    continuous cycle's run root) to tasks inside a ParallelFor as 0.0.
    """
    shards = list(range(count))
    if platform:
        with dsl.ParallelFor(shards, name=name, parallelism=parallelism or None) as shard:
            task = conf(shard_component(shard=shard, **common))
            if after is not None:
                task.after(after)
        return conf(merge_component(**common).after(task))
    tasks = [conf(shard_component(shard=s, **common)) for s in shards]
    if after is not None:
        for task in tasks:
            task.after(after)
    return conf(merge_component(**common).after(*tasks))


def score_and_merge(c, exp: ExperimentConfig, conf, *, name: str, platform: bool, after: dsl.PipelineTask | None = None,
                    **common) -> dsl.PipelineTask:
    """score-unlabeled over the ``acquisition.shards`` shards, then merge-scores; returns the merge task."""
    return shard_and_merge(c.score_unlabeled, c.merge_scores, exp.acquisition.shards, conf, name=name, platform=platform,
                           parallelism=exp.kubernetes.parallelism, after=after, **common)


def pseudo_labels(c, exp: ExperimentConfig, conf, *, name: str, platform: bool, after: dsl.PipelineTask, **common) -> dsl.PipelineTask:
    """generate-pseudo-labels after ``after``; with ``pseudo_labels.shards`` > 1 its shards, then
    merge-pseudo-labels (the filter needs every candidate). Returns the task whose output is the result."""
    if exp.pseudo_labels.shards == 1:
        return conf(c.generate_pseudo_labels(**common).after(after))
    return shard_and_merge(c.generate_pseudo_labels, c.merge_pseudo_labels, exp.pseudo_labels.shards, conf, name=name,
                           platform=platform, parallelism=exp.kubernetes.parallelism, after=after, **common)


def build_pipeline(exp: ExperimentConfig, *, platform: bool = True):
    """The pipeline function (a KFP GraphComponent) for ``exp``.

    Parameters of the pipeline: ``experiment`` (the config as JSON; defaults to ``exp``) and
    ``run_root`` (store prefix of this run's outputs; give each run its own).
    """
    c = make_components(exp.kubernetes.image_registry, preset=exp.training.preset)
    ssl = exp.ssl.enabled

    def conf(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return _configure(task, exp, platform)

    @dsl.pipeline(name=exp.name, description=f"activedet active learning: {exp.cycles} cycles, I={exp.initial_size}, B={exp.budget}")
    def active_learning(experiment: str = exp.to_json(), run_root: str = default_run_root(exp)):
        finish = conf(c.finish_run(experiment=experiment, run_root=run_root))
        with dsl.ExitHandler(finish, name="active-learning"):
            start = conf(c.start_run(experiment=experiment, run_root=run_root))
            init = conf(c.init(experiment=experiment, run_root=run_root, cycle=0, cycle_run_id="").after(start))

            def acquire(k: int, run_id, budget, arm: str, common: dict) -> dsl.PipelineTask | None:
                """Score, select and label the batch after cycle ``k`` for ``arm``; the oracle task (None: exported)."""
                select = c.select_batch(cycle_run_id=run_id, budget=budget, **common)
                if scores_needed(exp.arm(arm) if arm else exp):  # random / uniform need no model pass over the pool
                    tag = f"{arm}-" if arm else ""
                    select.after(score_and_merge(c, exp, conf, name=f"{tag}score-shards-cycle-{k}", platform=platform,
                                                 cycle_run_id=run_id, **common))
                conf(select)
                if exp.labeling == "export":  # annotators take days: this run ends with the export
                    conf(c.export_batch(**{key: v for key, v in common.items() if key != "arm"}).after(select))
                    return None
                return conf(c.oracle(cycle_run_id=run_id, **common).after(select))

            def cycle(k: int, previous: dsl.PipelineTask, arm: str = "") -> None:
                common = {"experiment": experiment, "run_root": run_root, "cycle": k, "arm": arm}
                sc = conf(c.start_cycle(parent_run_id=start.output, **common).after(previous))
                run_id = sc.output
                teacher = conf(c.train_teacher(cycle_run_id=run_id, **common))
                last, pseudo_result = teacher, "{}"
                if ssl and exp.ssl.needs_pseudo_labels:
                    pseudo = pseudo_labels(c, exp, conf, name=f"{arm + '-' if arm else ''}pseudo-label-shards-cycle-{k}",
                                           platform=platform, after=teacher, cycle_run_id=run_id, **common)
                    student = conf(c.train_student_ssl(cycle_run_id=run_id, **common).after(pseudo))
                    last, pseudo_result = student, pseudo.output
                elif ssl:  # the mean teacher labels every batch itself: no pseudo-label stage
                    last = conf(c.train_student_ssl(cycle_run_id=run_id, **common).after(teacher))
                ev = conf(c.evaluate(cycle_run_id=run_id, **common).after(last))
                fin = conf(
                    c.finish_cycle(
                        parent_run_id=start.output, cycle_run_id=run_id, eval_result=ev.output, pseudo_result=pseudo_result, **common
                    )
                )
                if k == exp.cycles - 1 and exp.labeling == "oracle":
                    return
                gate = conf(c.cycle_gate(proceed=fin.outputs["proceed"]))
                with dsl.If(gate.output == True, name=f"{arm + '-' if arm else ''}continue-after-cycle-{k}"):  # noqa: E712 (KFP condition)
                    label = acquire(k, run_id, fin.outputs["budget"], arm, common)
                    if label is not None:
                        cycle(k + 1, label, arm)
                    if k == 0 and not arm:  # each baseline arm selects from the shared cycle 0, then runs its own cycles
                        for baseline in exp.baselines:
                            cycle(1, acquire(0, run_id, fin.outputs["budget"], baseline, {**common, "arm": baseline}), baseline)

            cycle(0, init)

    return active_learning


def compile_pipeline(exp: ExperimentConfig, output: str, *, platform: bool = True) -> str:
    """Compile the pipeline for ``exp`` to a YAML file; returns its path.

    For a cluster (``platform``), a store that is not ``s3://`` is refused: see
    :func:`activedet.pipeline.plan.check_cluster_storage`.
    """
    from kfp import compiler

    from activedet.pipeline.plan import check_cluster_devices, check_cluster_storage

    if platform:
        check_cluster_storage(exp)
        check_cluster_devices(exp)
    compiler.Compiler().compile(build_pipeline(exp, platform=platform), package_path=str(output))
    return str(output)
