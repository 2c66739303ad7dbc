"""Train the semi-supervised student: teacher weights, labeled + pseudo-labeled mini-batches.

Initialised from the teacher checkpoint. Every mini-batch holds ``labeled_fraction`` labeled
images (weak augmentation: flip + scale jitter) and the rest pseudo-labeled pool images (weak then
strong augmentation: colour jitter, Gaussian blur, Cutout). Loss ``L = L_s + lambda_u * L_u``;
the unsupervised loss of class-``m`` pseudo boxes is multiplied by ``alpha_m`` from the pseudo
labels' ``thresholds.json`` (the ``dynamic`` filter writes them; other filters write 1), uncertain
pseudo boxes give classification loss only, and pool images without pseudo boxes are trained as
background unless disabled. Checkpoints, resume, progress and MLflow behave as in train-teacher.

That is ``mode: offline`` (the default). ``mode: mean_teacher`` trains online instead
(:mod:`activedet.ssl.mean_teacher`, LabelMatch): an EMA teacher re-labels every batch's pool
images (weak view) with online thresholds -- ACT re-estimated every ``mean_teacher.act_every``
iterations (default) or Li et al.'s dynamic thresholds with ``c_m`` accumulated over the
training (``mean_teacher.thresholds: dynamic``); the student learns the strong view (reliable
boxes hard, uncertain ones by proposal self-assignment, never box-regressed); the EMA teacher is
the published model. It reads no offline pseudo-labels (the whole ledger pool is its unlabeled
set). Both modes run ``devices`` data-parallel ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveInt, model_validator

from activedet.config import FrozenModel, StageConfig, config_from
from activedet.ssl.filters import DYNAMIC_DEFAULTS

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

NAME = "train-student-ssl"
IMAGE = "gpu"
#: one DDP rank per accelerator of the pod (kubernetes.accelerator_limit)
MULTI_DEVICE = True


class StrongAugmentation(FrozenModel):
    """Strong augmentation of pseudo-labeled images (on top of the weak one)."""

    enabled: bool = Field(True, description="apply the strong augmentation at all")
    color_jitter: float = Field(0.4, ge=0.0, description="brightness/contrast/saturation jitter strength")
    hue: float = Field(0.1, ge=0.0, le=0.5, description="hue jitter")
    color_p: float = Field(0.8, ge=0.0, le=1.0, description="probability of colour jitter")
    blur_p: float = Field(0.5, ge=0.0, le=1.0, description="probability of Gaussian blur")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Gaussian blur sigma range")
    cutout_p: float = Field(0.7, ge=0.0, le=1.0, description="probability of each Cutout patch")
    cutout_patches: int = Field(3, ge=0, description="number of Cutout patches tried")
    cutout_scale: tuple[float, float] = Field((0.01, 0.05), description="patch area range, fraction of the image")


class DynamicSettings(FrozenModel):
    """Online dynamic thresholds of ``mode: mean_teacher`` with ``thresholds: dynamic`` (Li et al. eq. 6; docs/ssl.md).

    ``c_m = sum p * v`` and the candidate counts are accumulated over the EMA teacher's detections
    on every batch's pool images (after a seed pass over ``seed_images`` pool images); ``tau_m``
    and ``alpha_m`` follow from them every ``update_every`` iterations.
    """

    tau: float = Field(DYNAMIC_DEFAULTS["tau"], gt=0.0, le=1.0, description="base threshold tau of eq. 6")
    gamma1: float = Field(DYNAMIC_DEFAULTS["gamma1"], ge=0.0, description="threshold exponent (0: tau for every class)")
    gamma2: float = Field(DYNAMIC_DEFAULTS["gamma2"], ge=0.0, description="re-weighting exponent (0: alpha_m = 1)")
    tau_min: float = Field(DYNAMIC_DEFAULTS["tau_min"], gt=0.0, le=1.0, description="lower clip of tau_m")
    tau_max: float = Field(DYNAMIC_DEFAULTS["tau_max"], gt=0.0, le=1.0, description="upper clip of tau_m")
    update_every: int = Field(1, ge=1, description="iterations between new tau_m / alpha_m from the accumulated c_m "
                              "(the statistics accumulate every iteration)")
    seed_images: int = Field(1000, ge=0, description="pool images (seeded random subset) the burn-in teacher predicts to "
                             "seed c_m before the first step (0: start from empty statistics, tau_min for every class)")

    @model_validator(mode="after")
    def _clip_order(self) -> DynamicSettings:
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min {self.tau_min} > tau_max {self.tau_max}")
        return self


class MeanTeacherSettings(FrozenModel):
    """Settings of ``mode: mean_teacher`` (LabelMatch, Chen et al. 2022; docs/ssl.md)."""

    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="EMA decay of the teacher (unset: the paper's 0.9996 at 180k iterations "
        "scaled to the schedule, 0.9996 ** (180000 / iterations), clamped to [0.9, 0.9996])"
    )
    act_every: int = Field(100, ge=0, description="iterations between ACT threshold estimates with the EMA teacher (K; 0: once)")
    act_images: int = Field(1000, ge=1, description="pool images (seeded random subset) each ACT estimate predicts")
    alpha: float = Field(20.0, ge=0.0, le=100.0, description="reliable share in % of the expected class count (t_c^r)")
    rplm: bool = Field(True, description="reliable pseudo-label mining: promote uncertain boxes with a tight pre-NMS cluster")
    rplm_score: float = Field(0.8, ge=0.0, le=1.0, description="RPLM: minimum mean score of the pre-NMS cluster")
    rplm_iou: float = Field(0.8, ge=0.0, le=1.0, description="RPLM: minimum mean IoU of the cluster with the kept box")
    thresholds: Literal["act", "dynamic"] = Field(
        "act", description="online pseudo-label thresholds: act (LabelMatch eq. 4-6, reliable/uncertain boxes) or dynamic "
        "(Li et al. eq. 6: c_m = sum p*v accumulated online, tau_m filters, alpha_m weights; every kept box reliable)"
    )
    dynamic: DynamicSettings = Field(DynamicSettings(), description="settings of thresholds: dynamic")


#: lambda_u when not set: LabelMatch's 2.0 online, Elezi/Li's 1.0 offline (METHODS.md section 3)
MEAN_TEACHER_LAMBDA_U = 2.0


class Config(StageConfig):
    """Config of the train-student-SSL stage."""

    mode: Literal["offline", "mean_teacher"] = Field(
        "offline", description="offline: fixed pseudo-labels from generate-pseudo-labels; mean_teacher: online EMA "
        "teacher (LabelMatch)"
    )
    mean_teacher: MeanTeacherSettings = Field(MeanTeacherSettings(), description="settings of mode mean_teacher")

    teacher_checkpoint_uri: str = Field(description="teacher checkpoint prefix; the student starts from its weights")
    dataset_uri: str = Field(description="dataset prefix (images, gt boxes, categories)")
    ledger_uri: str = Field(
        description="committed ledger output (ledger.parquet); labeled set = train images in state 'labeled'"
    )
    pseudo_labels_uri: str | None = Field(
        None, description="output prefix of generate-pseudo-labels (pseudo_boxes.parquet, thresholds.json); mode offline "
        "only (mean_teacher labels every batch itself)"
    )
    output_uri: str = Field(description="output prefix for the student checkpoint and metrics")
    iterations: int = Field(600, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=2, description="images per mini-batch (labeled + pseudo-labeled)")
    labeled_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of each mini-batch that is labeled")
    lambda_u: float = Field(
        1.0, ge=0.0, description=f"weight of the unsupervised (pseudo-label) loss (mode mean_teacher: {MEAN_TEACHER_LAMBDA_U} when unset)"
    )
    use_class_weights: bool = Field(True, description="multiply class-m pseudo-box losses by alpha_m from thresholds.json "
                                    "(mode mean_teacher with thresholds dynamic: by the online alpha_m)")
    uncertain_boxes: Literal["classification", "ignore"] = Field(
        "classification",
        description="uncertain pseudo boxes: 'classification' (no box regression) or 'ignore' (dropped)",
    )
    empty_as_background: bool = Field(True, description="train pool images without pseudo boxes as pure background")
    strong_augmentation: StrongAugmentation = Field(StrongAugmentation(), description="strong augmentation settings")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability (weak augmentation)")
    scale_jitter: tuple[float, float] | None = Field((0.8, 1.25), description="content zoom range of the weak augmentation (unset: none)")
    crop_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="train on random [height, width] crops at the images' own resolution (the teacher checkpoint "
        "must be native_scale); unset: whole images"
    )
    lr: float = Field(0.02, gt=0.0, description="base SGD learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0.0, description="SGD weight decay")
    warmup_iters: int = Field(50, ge=0, description="iterations of linear lr warmup")
    lr_milestones: tuple[float, ...] = Field((2 / 3, 8 / 9), description="fractions of the schedule where lr is divided by 10")
    seed: int = Field(0, description="seed for sampling and augmentation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device (auto: cuda when available)")
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    checkpoint_every: int = Field(100, ge=0, description="iterations between resumable checkpoints (0: none)")
    devices: int = Field(
        1, ge=1, description="data-parallel processes in this pod (torch.distributed, one GPU each; gloo on CPU); "
        "batch_size is per process (labeled share kept per process) and lr is scaled by devices (linear rule)"
    )
    parent_run_ids: list[str] = Field(default_factory=list, description="MLflow run ids this model derives from (provenance)")

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data):
        if isinstance(data, dict) and data.get("mode") == "mean_teacher" and data.get("lambda_u") is None:
            data = {**data, "lambda_u": MEAN_TEACHER_LAMBDA_U}
        return data

    @model_validator(mode="after")
    def _pseudo_labels_for_offline(self) -> Config:
        if self.mode == "offline" and not self.pseudo_labels_uri:
            raise ValueError("pseudo_labels_uri: mode offline trains on generate-pseudo-labels' output: give its prefix")
        return self



def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int) -> Config:
    """Cycle ``cycle``'s student: the teacher's weights, its pseudo-labels, the experiment's SSL settings."""
    from activedet.stages.train_teacher import training_devices

    return config_from(
        Config, exp, where=f"{NAME} (cycle {cycle})",
        fields={
            "iterations": "training.student_iterations", "batch_size": "training.batch_size", "lr": "training.student_lr",
            "labeled_fraction": "ssl.labeled_fraction", "lambda_u": "ssl.lambda_u",
            "mode": "ssl.mode", "mean_teacher": "ssl.mean_teacher",
            "checkpoint_every": "training.checkpoint_every", "num_workers": "training.num_workers", "device": "device",
            "crop_size": "training.crop_size",
        },
        teacher_checkpoint_uri=layout.teacher(cycle), dataset_uri=layout.dataset, ledger_uri=layout.ledger(cycle),
        pseudo_labels_uri=layout.pseudo_labels(cycle) if exp.ssl.needs_pseudo_labels else None,
        output_uri=layout.student(cycle), seed=exp.seed + cycle,
        devices=training_devices(exp),
    )


def run(config: Config) -> dict:
    """Train the student; returns the checkpoint URI and the final losses.

    With ``devices`` > 1 this launches ``devices`` processes (:mod:`activedet.models.distributed`)
    that each run this function as one rank; rank 0's result is returned.
    """
    from activedet.models import distributed
    from activedet.ssl.mean_teacher import train_mean_teacher
    from activedet.ssl.student import train_student

    if config.devices > 1 and not distributed.in_worker():
        return distributed.launch(NAME, config, nprocs=config.devices)
    try:
        return train_mean_teacher(config) if config.mode == "mean_teacher" else train_student(config)
    finally:
        distributed.destroy_process_group()
