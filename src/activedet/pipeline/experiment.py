"""The experiment config: one typed, frozen model that drives local runs and cluster runs alike.

A YAML file (see ``configs/demo.yaml`` and ``configs/voc_r50_cluster.yaml``) is loaded with
:func:`activedet.pipeline.plan.load_experiment` (parse, then build and check every stage config); unknown keys are rejected with the valid ones listed, at any depth.
The same object compiles the KFP pipeline (:mod:`activedet.pipeline.build`), runs it locally
through ``kfp.local`` (:mod:`activedet.pipeline.local`) and, serialised to JSON, is the one
pipeline parameter every component receives.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from activedet.config import FrozenModel, load_config
from activedet.data.synth import SynthConfig
from activedet.pipeline import quantity

_K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


class DatasetSpec(FrozenModel):
    """Where the images come from: a committed dataset URI, or SynthDrive settings to generate one."""

    uri: str | None = Field(None, description="committed dataset prefix (local path, file:// or s3://)")
    synth: SynthConfig | None = Field(
        None, description="generate a SynthDrive dataset under the run's store prefix (when uri is unset)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.uri is None) == (self.synth is None):
            raise ValueError("set exactly one of dataset.uri and dataset.synth")
        return self


class TrainingSpec(FrozenModel):
    """Detector training settings shared by teacher and student."""

    preset: str = Field("tiny", description="detector preset: tiny, lite0_fpn, mobilenet_v3_fpn, resnet50_fpn (torchvision); d2_faster_rcnn_R_50_FPN, d2_config (detectron2)")
    preset_options: dict[str, Any] = Field(default_factory=dict, description="preset keyword options, e.g. {min_size: 600}")
    # An unset field (None) means the stage's own default: each default lives once, in the stage Config.
    teacher_iterations: int | None = Field(None, ge=1, description="teacher optimizer steps per cycle (unset: the train-teacher default)")
    student_iterations: int | None = Field(None, ge=1, description="student optimizer steps per cycle (unset: the train-student-ssl default)")
    batch_size: int | None = Field(None, ge=2, description="images per mini-batch (unset: each stage's default)")
    lr: float | None = Field(
        None, gt=0.0, description="teacher SGD learning rate (unset: the preset's, see models.presets.PRESET_LR)"
    )
    student_lr: float | None = Field(None, gt=0.0, description="student SGD learning rate (unset: the train-student-ssl default)")
    init_checkpoint: str | None = Field(
        None, description="initial detector weights: an activedet checkpoint (any classes), a torchvision detection weights "
        "name (fasterrcnn_resnet50_fpn = COCO) or a state-dict file; the predictor is re-initialised when classes differ"
    )
    backbone_weights: str | None = Field(
        None, description="backbone weights: 'imagenet' (the preset's ImageNet weights, cached under TORCH_HOME) or a path / "
        "s3:// URI of a state dict; none = from scratch"
    )
    min_backbone_match: float | None = Field(
        None, ge=0.0, le=1.0,
        description="fail when fewer than this share of backbone tensors loaded from the weights (unset: the train-teacher default)",
    )
    warm_start: bool = Field(
        False, description="start each cycle's teacher from the previous cycle's model (Elezi retrains from scratch)"
    )
    crop_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="teacher and student train on random [height, width] crops at the images' own resolution "
        "(small objects in large frames; needs preset_options.native_scale: true); unset: whole images"
    )
    num_workers: int | None = Field(None, ge=0, description="data-loader worker processes (unset: the stages' default)")
    checkpoint_every: int | None = Field(None, ge=1, description="iterations between resumable checkpoints (unset: the stages' default)")
    devices: int | None = Field(
        None, ge=1, le=64, description="data-parallel processes per training stage (torch.distributed in one pod; batch_size per "
        "process, lr scaled by devices; unset: kubernetes.accelerator_limit when above 1, else 1)"
    )


class PseudoLabelSpec(FrozenModel):
    """Pseudo-label filter (METHODS.md section 2)."""

    filter: str = Field("fixed", description="pseudo-label filter: fixed, per_class_topk, dynamic, act")
    params: dict[str, Any] = Field(default_factory=dict, description="filter parameters, e.g. {tau: 0.99}")
    min_score: float | None = Field(
        None, ge=0.0, le=1.0, description="teacher detections below this score are not candidates (unset: the stage default)"
    )
    max_pool_images: int | None = Field(None, ge=1, description="pseudo-label at most this many pool images")
    shards: int = Field(
        1, ge=1, le=64, description="generate-pseudo-labels shards run in parallel (dsl.ParallelFor), then merge-pseudo-labels "
        "filters all candidates together (1: one task, no merge)"
    )


class SSLSpec(FrozenModel):
    """Semi-supervised student (METHODS.md section 3)."""

    enabled: bool = Field(True, description="train a student on labeled + pseudo-labeled images; off = teacher only")
    lambda_u: float | None = Field(None, ge=0.0, description="weight of the unsupervised loss (unset: the stage default)")
    labeled_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="share of each mini-batch that is labeled (unset: the stage default)"
    )
    mode: str | None = Field(
        None, description="student trainer: offline (fixed pseudo-labels) or mean_teacher (online EMA teacher, LabelMatch); "
        "unset: the stage default (offline)"
    )
    mean_teacher: dict[str, Any] | None = Field(
        None, description="settings of mode mean_teacher (train-student-ssl's MeanTeacherSettings: ema_decay, act_every, "
        "act_images, alpha, rplm, rplm_score, rplm_iou, thresholds (act or dynamic), dynamic (tau, gamma1, gamma2, tau_min, "
        "tau_max, update_every, seed_images); unset: the stage defaults)"
    )

    @property
    def needs_pseudo_labels(self) -> bool:
        """Whether the student trains on generate-pseudo-labels' table: the offline mode does; the
        mean teacher labels every batch itself (so its cycles have no pseudo-label stage)."""
        return self.enabled and self.mode != "mean_teacher"


class AcquisitionSpec(FrozenModel):
    """Acquisition score and batch-selection strategy (METHODS.md sections 5-6)."""

    score: str = Field("entropy", description="acquisition score: entropy, inconsistency, unified, mc_dropout, embedding")
    score_params: dict[str, Any] = Field(default_factory=dict, description="score parameters")
    strategy: str = Field("topk", description="selection strategy: random, uniform, topk, coreset, ...")
    strategy_params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters")
    shards: int = Field(1, ge=1, le=64, description="score-unlabeled shards run in parallel (dsl.ParallelFor)")


class StoppingSpec(FrozenModel):
    """When a run stops before its last cycle."""

    target_ap: float | None = Field(None, gt=0.0, le=1.0, description="stop once the evaluated metric reaches this")
    metric: str = Field("AP", description="metric compared with target_ap (AP, AP50, AP75)")
    budget_cap: int | None = Field(None, ge=1, description="never label more than this many images in total")


class EvaluationSpec(FrozenModel):
    """What each cycle's evaluation reports and the run-level label-efficiency figures (docs/pipeline.md)."""

    rare_k: int | None = Field(
        None, ge=0, description="AP_rare over this many rarest classes of the train split's ground truth (unset: the evaluate default)"
    )
    rare_classes: list[str] | None = Field(None, description="the rare classes by name (fixed for the run; instead of rare_k)")
    budgets_pct: list[float] | None = Field(
        None, description="labeled shares of the pool (%) at which the run reports AUC@B and metric@B (unset: every cycle's)"
    )

    @model_validator(mode="after")
    def _budgets(self) -> EvaluationSpec:
        if self.budgets_pct is not None and any(not 0.0 < b <= 100.0 for b in self.budgets_pct):
            raise ValueError(f"budgets_pct: every budget is a share of the pool in (0, 100], got {self.budgets_pct}")
        return self


class MlflowSpec(FrozenModel):
    """MLflow tracking. Locally an unset URI means sqlite in the run directory."""

    tracking_uri: str | None = Field(None, description="MLflow tracking URI (server URL or sqlite:///...)")
    experiment: str = Field("activedet", description="MLflow experiment name")


class Toleration(FrozenModel):
    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None


class DatasetCacheSpec(FrozenModel):
    """Where the image-reading (GPU) stages keep their image cache (``ACTIVEDET_CACHE_DIR``): a
    PersistentVolumeClaim that pods share (ReadWriteMany, or a node-local PV's claim), or a generic
    ephemeral volume of ``size`` per pod (the scheduler places the pod where the storage fits).
    Unset: the container's writable layer (every pod downloads the dataset again)."""

    pvc: str | None = Field(None, description="existing PersistentVolumeClaim mounted as the cache (shared by the pods)")
    size: str | None = Field(None, description="size of a per-pod generic ephemeral volume as the cache (e.g. 200Gi)")
    storage_class: str | None = Field(None, description="storage class of the ephemeral volume (unset: the cluster default)")
    mount_path: str = Field("/var/cache/activedet", description="mount path in the container (ACTIVEDET_CACHE_DIR)")

    @model_validator(mode="after")
    def _one_kind(self) -> DatasetCacheSpec:
        if bool(self.pvc) == bool(self.size):
            raise ValueError("dataset_cache: give either pvc (a shared claim) or size (a per-pod ephemeral volume)")
        if self.size is not None and not _K8S_QUANTITY.match(self.size):
            raise ValueError(f"dataset_cache.size: {self.size!r} is not a Kubernetes quantity (e.g. 200Gi)")
        if self.storage_class and not self.size:
            raise ValueError("dataset_cache.storage_class applies to the ephemeral volume: give size too")
        if not self.mount_path.startswith("/"):
            raise ValueError(f"dataset_cache.mount_path: {self.mount_path!r} is not an absolute path")
        return self


class KubernetesSpec(FrozenModel):
    """Cluster settings, applied only when compiling for Kubeflow (kfp.local ignores them)."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="GPU node selector labels")
    tolerations: list[Toleration] = Field(default_factory=list, description="GPU node tolerations")
    accelerator_type: str = Field("nvidia.com/gpu", description="accelerator resource type of GPU stages")
    accelerator_limit: int = Field(
        1, ge=0, description="accelerators per training pod (train-teacher, train-student-ssl: one DDP rank each; "
        "0 = run GPU stages on CPU)"
    )
    inference_accelerator_limit: int | None = Field(
        None, ge=0, description="accelerators per pod of the other GPU stages (evaluate, pseudo-label and scoring shards), "
        "which scale out by shards, not ranks (unset: 1, or 0 when accelerator_limit is 0)"
    )
    gpu_cpu_request: str = Field("4", description="CPU request of GPU stages")
    gpu_memory_request: str = Field("16Gi", description="memory request of GPU stages")
    cpu_cpu_request: str = Field("1", description="CPU request of CPU stages")
    cpu_memory_request: str = Field("4Gi", description="memory request of CPU stages")
    gpu_cpu_limit: str | None = Field(None, description="CPU limit of GPU stages (unset: 2x the request)")
    gpu_memory_limit: str | None = Field(
        None, description="memory limit of GPU stages (unset: request + shm_size; the memory-backed /dev/shm counts against it)"
    )
    cpu_cpu_limit: str | None = Field(None, description="CPU limit of CPU stages (unset: 2x the request)")
    cpu_memory_limit: str | None = Field(None, description="memory limit of CPU stages (unset: the request)")
    shm_size: str = Field("8Gi", description="size of the memory-backed /dev/shm for data loaders")
    dataset_cache: DatasetCacheSpec | None = Field(
        None, description="image cache volume of the GPU stages (pvc: shared claim; size: per-pod ephemeral volume); "
        "unset: the container's writable layer"
    )
    retries: int = Field(2, ge=0, description="retries per task (failures; see docs/cluster.md for preemption)")
    gpu_timeout_seconds: int = Field(86400, ge=0, description="time limit of one GPU-stage task (0 = none)")
    cpu_timeout_seconds: int = Field(14400, ge=0, description="time limit of one CPU-stage task (0 = none)")
    parallelism: int = Field(0, ge=0, description="score-unlabeled shards running at once (ParallelFor parallelism; 0 = all)")
    image_pull_secrets: list[str] = Field(default_factory=list, description="docker-registry Secrets for the images")
    service_account: str | None = Field(None, description="service account of the pipeline pods (unset: KFP's default)")
    run_as_user: int = Field(10001, ge=1, description="non-root UID (and GID) of the task containers (the images' user)")
    s3_secret: str | None = Field(None, description="Kubernetes Secret with S3 credentials")
    s3_secret_keys: dict[str, str] = Field(
        default_factory=lambda: {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
        description="secret key -> environment variable",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO etc.), set as AWS_ENDPOINT_URL")
    image_registry: str | None = Field(None, description="registry prefix of the activedet images")

    @model_validator(mode="after")
    def _quantities(self) -> KubernetesSpec:
        for name in ("gpu_cpu_request", "gpu_memory_request", "cpu_cpu_request", "cpu_memory_request", "shm_size",
                     "gpu_cpu_limit", "gpu_memory_limit", "cpu_cpu_limit", "cpu_memory_limit"):
            value = getattr(self, name)
            if value is not None and not _K8S_QUANTITY.match(value):
                raise ValueError(f"{name}: {value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
        for kind in ("gpu", "cpu"):
            (cpu, memory), requests = self.limits(kind == "gpu"), self.requests(kind == "gpu")
            for what, limit, request in (("cpu", cpu, requests[0]), ("memory", memory, requests[1])):
                if quantity.parse(limit) < quantity.parse(request):
                    raise ValueError(f"{kind}_{what}_limit {limit} is below {kind}_{what}_request {request}")
        if quantity.parse(self.limits(True)[1]) < quantity.parse(self.gpu_memory_request) + quantity.parse(self.shm_size):
            raise ValueError(f"gpu_memory_limit {self.gpu_memory_limit} is below gpu_memory_request + shm_size "
                             "(the memory-backed /dev/shm counts against the limit)")
        return self

    def requests(self, gpu: bool) -> tuple[str, str]:
        """(cpu, memory) requests of a GPU or CPU stage."""
        return (self.gpu_cpu_request, self.gpu_memory_request) if gpu else (self.cpu_cpu_request, self.cpu_memory_request)

    def accelerators(self, *, multi_device: bool) -> int:
        """Accelerators requested by a GPU stage's pod: ``accelerator_limit`` for training stages
        (one rank each), ``inference_accelerator_limit`` (default 1) for the others."""
        if multi_device:
            return self.accelerator_limit
        if self.inference_accelerator_limit is not None:
            return self.inference_accelerator_limit
        return min(1, self.accelerator_limit)

    def limits(self, gpu: bool) -> tuple[str, str]:
        """(cpu, memory) limits of a GPU or CPU stage, the unset ones derived from the requests."""
        if gpu:
            return (self.gpu_cpu_limit or quantity.scale_cpu(self.gpu_cpu_request, 2),
                    self.gpu_memory_limit or quantity.add_memory(self.gpu_memory_request, self.shm_size))
        return (self.cpu_cpu_limit or quantity.scale_cpu(self.cpu_cpu_request, 2), self.cpu_memory_limit or self.cpu_memory_request)


class ExperimentConfig(FrozenModel):
    """One active-learning experiment: data, loop sizes, methods, tracking and cluster settings."""

    name: str = Field("activedet", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="run name (DNS-1123 label)")
    dataset: DatasetSpec
    store_root: str | None = Field(None, description="artifact-store prefix for run outputs; locally defaults to <run dir>/store")
    initial_size: int = Field(ge=1, description="I: images labeled at random in cycle 0")
    budget: int = Field(ge=1, description="B: images selected and labeled per cycle")
    cycles: int = Field(ge=1, le=50, description="training cycles (cycle k trains on I + k*B labeled images)")
    seed: int = Field(0, ge=0, description="seed of the initial set, training and selection")
    device: str = Field("cpu", description="torch device for training and scoring stages (cpu, cuda)")
    labeling: Literal["oracle", "export"] = Field(
        "oracle",
        description=(
            "who labels a selected batch: 'oracle' (simulation: ground truth is revealed and the loop "
            "continues) or 'export' (production: the batch is exported as COCO JSON + manifest for a "
            "labeling tool and the run ends; labels come back with `activedet labels import` or continuous mode)"
        ),
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    pseudo_labels: PseudoLabelSpec = Field(default_factory=PseudoLabelSpec)
    ssl: SSLSpec = Field(default_factory=SSLSpec)
    acquisition: AcquisitionSpec = Field(default_factory=AcquisitionSpec)
    stopping: StoppingSpec = Field(default_factory=StoppingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    baselines: list[str] = Field(
        default_factory=list,
        description="selection strategies run as baseline arms beside acquisition.strategy, sharing cycle 0 (same initial set "
        "and cycle-0 model); the run's summary, budget curve and MLflow parent run compare them, e.g. [random]",
    )
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        cap = self.stopping.budget_cap
        if cap is not None and cap < self.initial_size:
            raise ValueError(f"stopping.budget_cap ({cap}) is below initial_size ({self.initial_size})")
        if len(set(self.baselines)) != len(self.baselines) or self.acquisition.strategy in self.baselines:
            raise ValueError(f"baselines: {self.baselines} must be distinct and differ from acquisition.strategy "
                             f"({self.acquisition.strategy!r})")
        if self.baselines and self.labeling == "export":
            raise ValueError("baselines compare strategies in simulation: they need labeling 'oracle'")
        if self.labeling == "export" and self.cycles != 1:
            raise ValueError(
                "labeling 'export' runs one cycle per pipeline run (annotators take days): set cycles: 1 "
                "and schedule runs, or use continuous mode"
            )
        return self

    def labeled_at(self, cycle: int) -> int:
        """Labeled images cycle ``cycle`` trains on, before any early stop."""
        return self.initial_size + cycle * self.budget

    def arm(self, strategy: str) -> ExperimentConfig:
        """The experiment of a baseline arm: the same run with ``strategy`` selecting (its own parameters unset)."""
        acquisition = self.acquisition.model_copy(update={"strategy": strategy, "strategy_params": {}})
        return self.model_copy(update={"acquisition": acquisition, "baselines": []})

    def to_json(self) -> str:
        return self.model_dump_json()


def experiment_from_json(text: str) -> ExperimentConfig:
    """Parse the JSON a component receives (the pipeline parameter ``experiment``)."""
    import json

    return load_config(ExperimentConfig, json.loads(text), where="experiment parameter")
