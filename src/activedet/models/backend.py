"""Detector backends: the one interface the stages use for everything model-shaped.

A backend builds a detector from a preset and the classes, and knows how to run it. Two exist:

* ``torchvision`` -- the presets of :mod:`activedet.models.presets` (``tiny``, ``lite0_fpn``,
  ``mobilenet_v3_fpn``, ``resnet50_fpn``), torchvision's ``FasterRCNN`` with activedet's heads;
* ``detectron2`` -- the ``d2_*`` presets (:mod:`activedet.models.d2`), a detectron2
  ``GeneralizedRCNN`` behind the same calls. detectron2 is imported only when one is used.

The interface is small; what every backend's model does on its own:

* **train step**: ``model(images, targets)`` in train mode returns a loss dict, honouring the
  targets' per-box ``weights``, ``regress`` and ``bg_weight`` (see
  :class:`~activedet.models.roi_heads.WeightedRoIHeads`); images ``list[Tensor[3, H, W]]`` float in
  [0, 1] at any size, boxes xyxy in input pixels, labels 1..C. The trainer and DDP call it.
* **save / load**: ``model.state_dict()`` / ``load_state_dict`` into safetensors
  (:mod:`activedet.models.checkpoint`).

What the :class:`Backend` adds (:func:`backend_for` picks it from the preset name):

* :meth:`Backend.build` -- preset + ``num_classes`` (C + 1) + options -> model;
* :meth:`Backend.predict` -- detections with class distributions (background at index 0), optional
  pre-NMS candidates with ``merged_into``, MC-dropout distributions of the kept boxes, a pooled
  L2-normalised embedding; boxes in the input frame (flip views are two calls: the predictor flips);
* :meth:`Backend.import_state` / :attr:`Backend.backbone_prefix` -- foreign checkpoints mapped onto
  the model's keys and the keys counted as backbone in the partial-load report;
* :attr:`Backend.unsupported` -- features that need head internals this backend does not give
  (``activedet validate`` rejects configs asking for them, naming the feature and the backend).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from activedet.errors import ConfigError

TORCHVISION = "torchvision"
DETECTRON2 = "detectron2"

#: presets of the detectron2 backend (every other preset is torchvision's)
D2_PRESETS = ("d2_faster_rcnn_R_50_FPN", "d2_config")


class Backend(Protocol):
    """What the stages need from a detector implementation (see module docstring)."""

    name: str
    backbone_prefix: str
    unsupported: dict[str, str]

    def build(self, preset: str, *, num_classes: int, **options: Any) -> nn.Module: ...

    def input_size(self, model: nn.Module) -> dict[str, Any]: ...

    def predict(
        self, model: nn.Module, images: list[Tensor], *, score_floor: float, nms_iou: float, max_dets: int,
        pre_nms: bool = False, embeddings: bool = False, mc_samples: int = 0,
    ) -> list[dict[str, Tensor]]: ...

    def import_state(self, model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]: ...


def backend_name(preset: str) -> str:
    """The backend of ``preset``: ``detectron2`` for the ``d2_*`` presets, else ``torchvision``."""
    return DETECTRON2 if preset in D2_PRESETS else TORCHVISION


def backend_for(preset: str) -> Backend:
    """The :class:`Backend` that builds and runs ``preset``."""
    if backend_name(preset) == DETECTRON2:
        from activedet.models.d2 import Detectron2Backend

        return Detectron2Backend()
    return TorchvisionBackend()


def pooled_embedding(features: dict[str, Tensor], skip: tuple[str, ...]) -> Tensor:
    """``[B, D]`` L2-normalised global average of every feature level (levels in ``skip`` left out)."""
    pooled = torch.cat([f.mean(dim=(-2, -1)) for name, f in features.items() if name not in skip], dim=1)
    return F.normalize(pooled.float(), dim=1)


class TorchvisionBackend:
    """torchvision's ``FasterRCNN`` with activedet's heads (the presets of :mod:`activedet.models.presets`)."""

    name = TORCHVISION
    backbone_prefix = "backbone.body."
    unsupported: dict[str, str] = {}

    def build(self, preset: str, *, num_classes: int, **options: Any) -> nn.Module:
        from activedet.models.presets import build_model

        return build_model(preset, num_classes=num_classes, **options)

    def input_size(self, model: nn.Module) -> dict[str, Any]:
        from activedet.models.presets import is_native_scale

        if is_native_scale(model):
            return {"native_scale": True}
        t = model.transform
        return {"min_size": list(t.min_size), "max_size": t.max_size}

    def import_state(self, model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return state

    def predict(self, model, images, *, score_floor, nms_iou, max_dets, pre_nms=False, embeddings=False, mc_samples=0):
        """The model's parts run by hand so features stay available (embeddings, MC passes)."""
        from activedet.models.roi_heads import mc_dropout

        rh = model.roi_heads
        rh.score_thresh, rh.nms_thresh, rh.detections_per_img = score_floor, nms_iou, max_dets
        original = [tuple(im.shape[-2:]) for im in images]
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        rh.keep_pre_nms = pre_nms
        try:
            results, _ = rh(features, proposals, image_list.image_sizes)
        finally:
            rh.keep_pre_nms = False
        passes, counts = None, None  # without MC dropout
        if mc_samples:
            kept = [r["boxes"] for r in results]
            counts = [len(b) for b in kept]
            with mc_dropout(rh.box_head):
                passes = [rh.class_probs_for(features, kept, image_list.image_sizes) for _ in range(mc_samples)]
        sizes = zip(image_list.image_sizes, original, strict=True)
        scales = [(orig[1] / resized[1], orig[0] / resized[0]) for resized, orig in sizes]
        return finish_results(results, scales, mc_passes=passes, counts=counts,
                              embeddings=pooled_embedding(features, ("pool",)) if embeddings else None)


def finish_results(results: list[dict[str, Tensor]], scales: list[tuple[float, float]], *,
                   mc_passes: list[Tensor] | None = None, counts: list[int] | None = None,
                   embeddings: Tensor | None = None) -> list[dict[str, Tensor]]:
    """What every backend's ``predict`` does last: split the MC-dropout passes (``T`` x
    ``[sum N, C+1]``, images' kept boxes in order, ``counts`` per image) into ``mc_probs
    [T, N, C+1]``, attach each image's ``embedding`` row, and scale the boxes by ``scales``
    (x, y per image) back to the input frame."""
    if mc_passes is not None:
        stacked = torch.stack(mc_passes)  # [T, sum N, C+1]
        for r, part in zip(results, stacked.split(counts, dim=1), strict=True):
            r["mc_probs"] = part
    if embeddings is not None:
        for r, e in zip(results, embeddings, strict=True):
            r["embedding"] = e
    for r, scale in zip(results, scales, strict=True):
        rescale_boxes(r, scale)
    return results


def rescale_boxes(result: dict[str, Tensor], scale: tuple[float, float]) -> None:
    """Multiply a result's ``boxes`` (and ``pre_boxes``) by ``(sx, sy)`` in place."""
    sx, sy = scale
    s = torch.tensor([sx, sy, sx, sy], device=result["boxes"].device)
    result["boxes"] = result["boxes"] * s
    if "pre_boxes" in result:
        result["pre_boxes"] = result["pre_boxes"] * s


def check_supported(preset: str, features: dict[str, bool]) -> None:
    """Refuse features (``name -> asked for``) that ``preset``'s backend cannot give, in one line."""
    backend = backend_for(preset)
    for feature, asked in features.items():
        if asked and feature in backend.unsupported:
            raise ConfigError(
                f"{feature}: not available on the {backend.name} backend (preset {preset!r}): {backend.unsupported[feature]}"
            )
