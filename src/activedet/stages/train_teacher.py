"""Train the teacher detector supervised on the labeled images of a ledger.

Trains preset ``preset`` (random init, ImageNet / state-dict ``backbone_weights``, and/or a start
from ``init_checkpoint_uri``: see :mod:`activedet.models.init`; ``meta.json``'s ``weights_init``
records each source, its sha256 and the partial-load report) on the train
images whose ledger state is ``labeled`` (all train images when no ledger is given), with their
ground-truth boxes, flip + scale-jitter augmentation, SGD with warmup and step decay at 2/3 and
8/9 of the schedule. Writes ``model.safetensors`` + ``meta.json`` + ``train.json`` under
``output_uri`` (committed atomically); periodic checkpoints under ``output_uri/_resume/`` let a
killed run re-run with the same config continue from its last checkpoint.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, PositiveInt, model_validator

from activedet.config import StageConfig, config_from
from activedet.errors import ActivedetError, ConfigError

if TYPE_CHECKING:
    from activedet.pipeline.experiment import ExperimentConfig
    from activedet.pipeline.layout import RunLayout

log = logging.getLogger(__name__)

NAME = "train-teacher"
IMAGE = "gpu"
#: one DDP rank per accelerator of the pod (kubernetes.accelerator_limit)
MULTI_DEVICE = True


class Config(StageConfig):
    """Config of the train-teacher stage."""

    dataset_uri: str = Field(description="dataset prefix (images, gt boxes, categories)")
    ledger_uri: str | None = Field(
        None, description="committed ledger output (ledger.parquet); train on train images in state 'labeled' "
        "(unset: every train image)"
    )
    output_uri: str = Field(description="output prefix for the checkpoint (model.safetensors, meta.json, train.json)")
    preset: str = Field("tiny", description="detector preset: tiny, lite0_fpn, mobilenet_v3_fpn, resnet50_fpn (torchvision); d2_faster_rcnn_R_50_FPN, d2_config (detectron2)")
    preset_options: dict[str, Any] = Field(
        default_factory=dict, description="preset keyword options, e.g. {min_size: 600, anchor_sizes: [16, 32, 64]}"
    )
    init_checkpoint_uri: str | None = Field(
        None, description="start from: an activedet checkpoint (previous cycle / champion, any classes), a torchvision "
        "detection weights name (fasterrcnn_resnet50_fpn = COCO) or a state-dict file; the predictor is re-initialised "
        "when classes differ"
    )
    backbone_weights: str | None = Field(
        None, description="backbone start: 'imagenet' (the preset's ImageNet weights, cached under TORCH_HOME) or a path / "
        "s3:// URI of a state dict (.safetensors, or .pth read with weights_only); unset: random"
    )
    min_backbone_match: float = Field(
        0.9, ge=0.0, le=1.0, description="fail when fewer than this share of backbone tensors loaded from the weights"
    )
    iterations: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="images per mini-batch")
    lr: float | None = Field(
        None, gt=0.0, description="base SGD learning rate (unset: the preset's, models.presets.PRESET_LR: tiny 0.04, "
        "lite0_fpn 0.02, mobilenet_v3_fpn 0.02, resnet50_fpn 0.01, at batch 8)"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0.0, description="SGD weight decay")
    warmup_iters: int = Field(50, ge=0, description="iterations of linear lr warmup")
    lr_milestones: tuple[float, ...] = Field((2 / 3, 8 / 9), description="fractions of the schedule where lr is divided by 10")
    hflip: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    scale_jitter: tuple[float, float] | None = Field((0.8, 1.25), description="content zoom range (unset: no scale jitter)")
    crop_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="train on random [height, width] crops at the images' own resolution (needs preset_options."
        "native_scale: true); unset: whole images"
    )
    seed: int = Field(0, description="seed for initialisation, sampling and augmentation")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device (auto: cuda when available)")
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    checkpoint_every: int = Field(100, ge=0, description="iterations between resumable checkpoints (0: none)")
    devices: int = Field(
        1, ge=1, description="data-parallel processes in this pod (torch.distributed, one GPU each; gloo on CPU); "
        "batch_size is per process and lr is scaled by devices (linear rule)"
    )
    parent_run_ids: list[str] = Field(default_factory=list, description="MLflow run ids this model derives from (provenance)")

    @model_validator(mode="after")
    def _crop_needs_native_scale(self) -> Config:
        if self.crop_size is not None and not self.preset_options.get("native_scale"):
            from activedet.models.presets import CROP_NEEDS_NATIVE

            raise ValueError(CROP_NEEDS_NATIVE)
        return self

    @model_validator(mode="before")
    @classmethod
    def _preset_lr(cls, data):
        # the preset's own rate when none is given: one rate for every preset (tiny's 0.04) left the
        # pretrained lite0_fpn at AP ~0 (models.presets.PRESET_LR)
        if isinstance(data, dict) and data.get("lr") is None:
            from activedet.models.presets import recommended_lr

            data = {**data, "lr": recommended_lr(data.get("preset") or cls.model_fields["preset"].default)}
        return data


def from_experiment(exp: ExperimentConfig, layout: RunLayout, cycle: int) -> Config:
    """Cycle ``cycle``'s teacher: the experiment's training settings, warm start from the previous model."""
    check_preset(exp.training.preset, exp.training.preset_options)
    warm = exp.training.warm_start and cycle > 0
    return config_from(
        Config, exp, where=f"{NAME} (cycle {cycle})",
        fields={
            "preset": "training.preset", "preset_options": "training.preset_options",
            "iterations": "training.teacher_iterations", "batch_size": "training.batch_size", "lr": "training.lr",
            "checkpoint_every": "training.checkpoint_every", "num_workers": "training.num_workers", "device": "device",
            "min_backbone_match": "training.min_backbone_match", "crop_size": "training.crop_size",  # backbone_weights: a warm start has them already
            **({} if warm else {"init_checkpoint_uri": "training.init_checkpoint", "backbone_weights": "training.backbone_weights"}),
        },
        dataset_uri=layout.dataset, ledger_uri=layout.ledger(cycle), output_uri=layout.teacher(cycle),
        seed=exp.seed + cycle, devices=training_devices(exp), **({"init_checkpoint_uri": layout.model(cycle - 1)} if warm else {}),
    )


def training_devices(exp: ExperimentConfig) -> int:
    """Processes a training stage runs: ``training.devices``, else ``kubernetes.accelerator_limit`` when above 1."""
    if exp.training.devices is not None:
        return exp.training.devices
    return max(1, exp.kubernetes.accelerator_limit)


def check_preset(preset: str, options: dict[str, Any]) -> None:
    """Fail at load on an unknown preset or preset option (the names its factory accepts)."""
    import inspect

    from activedet.models.presets import PRESETS

    if preset not in PRESETS:
        raise ConfigError(f"training.preset: unknown detector preset {preset!r}; valid: {', '.join(PRESETS.names())}")
    params = inspect.signature(PRESETS.get(preset)).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    from activedet.models.certainty_head import HEAD_OPTIONS, check_head_options
    from activedet.models.presets import SCALE_OPTIONS

    # box-head options: every preset; native_scale: every torchvision preset
    generic = set(HEAD_OPTIONS) | (set() if preset.startswith("d2_") else set(SCALE_OPTIONS))
    valid = sorted({n for n in params if n != "num_classes"} | generic)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ConfigError(f"training.preset_options.{bad[0]}: not an option of preset {preset!r} (valid: {', '.join(valid)})")
    try:
        check_head_options({k: v for k, v in options.items() if k in HEAD_OPTIONS})
    except ConfigError as exc:
        raise ConfigError(f"training.preset_options: {exc}") from None


class Result(BaseModel):
    """What train-teacher produced."""

    checkpoint_uri: str
    iterations: int
    resumed_from: int
    final_loss: float
    it_per_s: float
    labeled_images: int


def labeled_ids(dataset, ledger_uri: str | None) -> list[str]:
    """Train images in state ``labeled`` of the ledger (every train image without a ledger)."""
    train = dataset.split_ids("train")
    if ledger_uri is None:
        return train
    from activedet.al.ledger import ids_in_state, read_ledger

    ledger, _ = read_ledger(ledger_uri)
    labeled = set(ids_in_state(ledger, "labeled"))
    ids = [i for i in train if i in labeled]
    if not ids:
        raise ActivedetError(f"train-teacher: no labeled train images in ledger {ledger_uri}")
    return ids


def run(config: Config) -> Result:
    """Train the teacher; returns the checkpoint URI, final loss and speed.

    With ``devices`` > 1 this launches ``devices`` processes (:mod:`activedet.models.distributed`)
    that each run this function as one rank; rank 0's result is returned.
    """
    from activedet.models import distributed

    if config.devices > 1 and not distributed.in_worker():
        return Result.model_validate(distributed.launch(NAME, config, nprocs=config.devices))
    try:
        return _train(config)
    finally:
        distributed.destroy_process_group()


def _train(config: Config) -> Result | None:
    from activedet.data.dataset import load_dataset
    from activedet.models import distributed
    from activedet.models.checkpoint import detector_for_dataset
    from activedet.models.data import DetectionDataset, endless_batches
    from activedet.models.init import load_backbone_weights, load_init_checkpoint, pretrained_options
    from activedet.models.predict import resolve_device
    from activedet.models.train import data_digest, seed_everything, train_and_commit
    from activedet.tracking import NullTracker, tracker_for

    dataset = load_dataset(config.dataset_uri)
    ids = labeled_ids(dataset, config.ledger_uri)
    digest = data_digest(config.dataset_uri, ids)
    device = resolve_device(config.device)
    rank = distributed.init_process_group(device)
    device = distributed.worker_device(device)
    seed_everything(config.seed)
    options = pretrained_options(
        config.preset, config.preset_options, backbone_weights=config.backbone_weights, init_checkpoint=config.init_checkpoint_uri
    )
    detector = detector_for_dataset(config.preset, dataset, **options)
    parents = list(config.parent_run_ids)
    weights_init: dict = {}
    if config.backbone_weights:
        weights_init["backbone_weights"] = load_backbone_weights(
            detector, config.backbone_weights, min_backbone_match=config.min_backbone_match
        )
    if config.init_checkpoint_uri:
        weights_init["init_checkpoint"] = load_init_checkpoint(
            detector, config.init_checkpoint_uri, min_backbone_match=config.min_backbone_match
        )
        parents += [p for p in weights_init["init_checkpoint"].pop("parent_run_ids") if p not in parents]
    detector.model.to(device)
    tracker = tracker_for(config, run_name="train-teacher") if rank.is_main else NullTracker()
    tracker.log_params(
        {k: v for k, v in config.model_dump(mode="json").items() if k not in ("mlflow_tracking_uri", "mlflow_run_id")}
        | {"labeled_images": len(ids), "data_digest": digest}
    )
    train_data = DetectionDataset(
        dataset, ids, category_ids=detector.category_ids, train=True, hflip=config.hflip, scale_jitter=config.scale_jitter,
        crop_size=config.crop_size,
    )
    done = train_and_commit(
        config, detector,
        lambda start: endless_batches(
            train_data, batch_size=config.batch_size, seed=config.seed, start_iter=start, num_workers=config.num_workers,
            rank=rank.rank, world_size=rank.world_size,
        ),
        stage=NAME, digest=digest, device=device, tracker=tracker, log_every=max(1, min(20, config.iterations // 10)),
        training_info={"labeled_images": len(ids)}, init_checkpoint_uri=config.init_checkpoint_uri, weights_init=weights_init,
        parent_run_ids=parents, mlflow_run_id=tracker.run_id,
    )
    if done is None:  # not rank 0
        return None
    return Result(
        checkpoint_uri=done.checkpoint_uri, iterations=config.iterations, resumed_from=done.resumed_from,
        final_loss=done.result.final_loss, it_per_s=done.result.it_per_s, labeled_images=len(ids),
    )
