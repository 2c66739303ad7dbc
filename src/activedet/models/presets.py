"""Detector presets: torchvision Faster R-CNN variants, built without any downloaded weights.

Every preset is a keyword-only factory ``factory(*, num_classes, **options) -> FasterRCNN``
registered in :data:`PRESETS`; ``num_classes`` counts the background (torchvision's convention:
``C + 1``). Weights are random (``weights=None, weights_backbone=None``); the only way to start
from trained weights is a checkpoint the user names (see :mod:`activedet.models.checkpoint`).

All presets use :class:`~activedet.models.roi_heads.WeightedRoIHeads` (per-box loss weights, kept
class distributions) and a box head with dropout (:class:`DropoutTwoMLPHead`, ``dropout_p``).

Tensor shapes (torchvision's detection API): the model takes ``images: list[Tensor[3, H, W]]``
float in [0, 1] (any sizes; the model's transform resizes the short side to ``min_size``, capped
by ``max_size``, and normalises), and in training ``targets: list[dict]`` with ``boxes [N, 4]``
float xyxy in input pixels and ``labels [N]`` int64 in 1..C (plus optional ``weights [N]``,
``regress [N]``, ``bg_weight``). Training returns a loss dict; eval returns one dict per image
with ``boxes [K, 4]``, ``labels [K]``, ``scores [K]`` and ``class_probs [K, C + 1]``.

* ``tiny`` -- from scratch, CPU-friendly: a 5-conv backbone with one stride-8 feature level
  (128 channels), anchors 16-128 px, a 256-wide two-layer box head. Native 128x256 SynthDrive size.
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
from torchvision.ops import MultiScaleRoIAlign

from activedet.errors import ConfigError
from activedet.models.roi_heads import DropoutTwoMLPHead, WeightedRoIHeads
from activedet.registry import Registry

PRESETS: Registry[Callable[..., FasterRCNN]] = Registry("detector preset")


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
    """Replace torchvision's RoIHeads and box head by the weighted / dropout versions."""
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
        fg_iou_thresh=old.proposal_matcher.high_threshold,
        bg_iou_thresh=old.proposal_matcher.low_threshold,
        batch_size_per_image=old.fg_bg_sampler.batch_size_per_image,
        positive_fraction=old.fg_bg_sampler.positive_fraction,
        bbox_reg_weights=old.box_coder.weights,
        score_thresh=old.score_thresh,
        nms_thresh=old.nms_thresh,
        detections_per_img=old.detections_per_img,
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
    *, num_classes: int, min_size: int = 320, max_size: int = 640, dropout_p: float = 0.1, train_dropout: bool = True
) -> FasterRCNN:
    """torchvision's MobileNetV3-Large FPN Faster R-CNN, random init."""
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size
    )
    return _swap_heads(model, dropout_p=dropout_p, train_dropout=train_dropout, representation=1024)


@PRESETS.register("resnet50_fpn")
def resnet50_fpn(
    *, num_classes: int, min_size: int = 800, max_size: int = 1333, dropout_p: float = 0.1, train_dropout: bool = True
) -> FasterRCNN:
    """torchvision's ResNet-50 FPN Faster R-CNN (the papers' detector), random init."""
    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
    )
    return _swap_heads(model, dropout_p=dropout_p, train_dropout=train_dropout, representation=1024)


def build_model(preset: str, *, num_classes: int, **options: Any) -> FasterRCNN:
    """Build preset ``preset`` with ``num_classes`` (C + 1) and preset ``options``."""
    factory = PRESETS.get(preset)
    try:
        return factory(num_classes=num_classes, **options)
    except TypeError as exc:
        raise ConfigError(f"detector preset {preset!r}: bad options {sorted(options)}: {exc}") from None
