"""Certainty-aware box head (Li et al. 2021, section 2.2): localization as classification.

Each side ``s`` of a proposal ``(x1, y1, x2, y2)`` is localized on a segment perpendicular to it,
centred on the proposal's side and ``segment_span`` times the proposal's extent long (``w`` for
the left/right sides, ``h`` for top/bottom; span 1 covers the side +- half the box). The segment
is split evenly into ``K = intervals`` intervals and the head predicts, per side:

* ``t_{s,k}`` -- one logit per interval, trained with a sigmoid (binary cross-entropy) per
  interval against the one-hot interval the ground-truth side falls in (Li eq. 3; a ground-truth
  side beyond the segment is assigned to the end interval). Eq. 3 as printed keeps only the
  positive term ``-y log sigmoid(t)``, which every logit going to +inf minimises; we use the full
  binary cross-entropy (negatives included), the usual reading.
* ``o_{s,k}`` -- a refinement offset from the centre of interval ``k`` to the ground-truth side,
  in interval widths, trained with smooth L1 on the ground-truth interval only (Li eq. 5).

Decoding takes ``k* = argmax_k t_{s,k}`` per side and places the side at
``centre(k*) + o_{s,k*} * interval_width``. The localization quality of a box is
``v = mean_s max_k sigmoid(t_{s,k})`` in (0, 1) (Li eq. 4 prints ``max_k t``, the raw logit;
METHODS.md and we use the probability, so ``v`` is bounded and comparable across models).

The localization branch is **class-agnostic**: one set of ``4 x K`` logits and offsets per
proposal, not per class. Li et al. do not say which they use; SABL (their ref. [40], side-aware
bucketing), whose formulation this follows, is class-agnostic; a class-specific version would need
``8 K (C + 1)`` outputs (7440 at K = 30, C = 30) for few training boxes per class in the
semi-supervised regime; and ``v`` then describes the box itself, whichever class wins, which is
what pseudo-label filtering and acquisition need.

Per-box weights (``weights``, ``regress``, ``bg_weight`` targets, see
:mod:`activedet.models.roi_heads`) apply as in :class:`WeightedRoIHeads`: the interval and
refinement losses of a proposal are multiplied by its box's weight, and proposals matched to a
``regress=False`` (uncertain) box get neither. Losses are divided by the number of sampled
proposals (torchvision's normalisation). Loss names: ``loss_classifier``, ``loss_box_interval``,
``loss_box_refine``.

At inference every detection carries ``loc_quality`` (``v``); with ``quality_nms`` (default, as
Li et al. do) NMS ranks candidates by ``score * v`` instead of the class score alone (the
reported ``score`` stays the class probability).

Built through preset options (every preset): ``{box_head: certainty, intervals: 30}``, see
:func:`apply_box_head` and :data:`HEAD_OPTIONS`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from activedet.errors import ConfigError
from activedet.models.roi_heads import WeightedRoIHeads, sampling_settings

BOX_HEADS = ("standard", "certainty")
#: preset options every preset accepts (the box head is independent of the backbone), with defaults
HEAD_OPTIONS: dict[str, Any] = {"box_head": "standard", "intervals": 30, "segment_span": 1.0, "quality_nms": True}


# --------------------------------------------------------------------------- geometry


def side_segments(proposals: Tensor, intervals: int, span: float = 1.0) -> tuple[Tensor, Tensor]:
    """Start ``[N, 4]`` and interval width ``[N, 4]`` of each side's segment (sides x1, y1, x2, y2)."""
    w = (proposals[:, 2] - proposals[:, 0]).clamp(min=1e-3)
    h = (proposals[:, 3] - proposals[:, 1]).clamp(min=1e-3)
    length = torch.stack([w, h, w, h], dim=1) * span
    return proposals - length / 2, length / intervals


def interval_targets(proposals: Tensor, gt_boxes: Tensor, intervals: int, span: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per side: the interval index ``[N, 4]`` (int64, 0..K-1) holding the ground-truth side, and
    the refinement target ``[N, 4]``: its offset from that interval's centre in interval widths."""
    start, step = side_segments(proposals, intervals, span)
    u = (gt_boxes - start) / step  # position in interval units along the segment
    idx = torch.floor(u).clamp(0, intervals - 1).to(torch.int64)
    return idx, u - (idx.to(u.dtype) + 0.5)


def localization_quality(side_logits: Tensor) -> Tensor:
    """``v = mean over sides of max_k sigmoid(t_{s,k})``: ``[N, 4, K]`` logits -> ``[N]`` in (0, 1)."""
    return torch.sigmoid(side_logits).amax(dim=-1).mean(dim=-1)


def decode_sides(proposals: Tensor, side_logits: Tensor, side_offsets: Tensor, span: float = 1.0) -> tuple[Tensor, Tensor]:
    """Boxes ``[N, 4]`` (xyxy) and quality ``v [N]`` from ``[N, 4, K]`` interval logits and offsets."""
    k = side_logits.shape[-1]
    start, step = side_segments(proposals, k, span)
    best = side_logits.argmax(dim=-1, keepdim=True)  # [N, 4, 1]
    offset = side_offsets.gather(-1, best).squeeze(-1)
    boxes = start + (best.squeeze(-1).to(start.dtype) + 0.5 + offset) * step
    return boxes, localization_quality(side_logits)


# --------------------------------------------------------------------------- modules


class CertaintyPredictor(nn.Module):
    """``[N, D]`` box features -> class logits ``[N, C+1]`` and (interval logits, offsets) ``[N, 4, K]``.

    ``cls_score`` is named like torchvision's ``FastRCNNPredictor`` so class-distribution code
    (MC dropout, warm starts of the classifier) treats both heads alike. The interval logits start
    at the prior ``sigmoid(t) = 1/K`` (focal-loss style bias init), so the sum over ``K`` binary
    terms starts near ``-log(1/K) + 1`` per side instead of ``K log 2``.
    """

    def __init__(self, in_channels: int, num_classes: int, intervals: int):
        super().__init__()
        self.intervals = intervals
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.side_logits = nn.Linear(in_channels, 4 * intervals)
        self.side_offsets = nn.Linear(in_channels, 4 * intervals)
        for layer in (self.side_logits, self.side_offsets):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        nn.init.constant_(self.side_logits.bias, -math.log(intervals - 1))

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x = x.flatten(start_dim=1)
        k = self.intervals
        return self.cls_score(x), (self.side_logits(x).view(-1, 4, k), self.side_offsets(x).view(-1, 4, k))


def certainty_losses(
    class_logits: Tensor,
    side_logits: Tensor,
    side_offsets: Tensor,
    labels: Tensor,
    target_idx: Tensor,
    target_offset: Tensor,
    weights: Tensor,
    regress: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(classification, interval, refinement) losses of ``K`` sampled proposals.

    Shapes: ``class_logits [K, C+1]``, ``side_logits``/``side_offsets [K, 4, I]``, ``labels [K]``,
    ``target_idx [K, 4]`` int64, ``target_offset [K, 4]``, ``weights [K]``, ``regress [K]`` bool.
    Each loss is a sum of weighted per-proposal terms divided by ``K``; the localization terms
    only over foreground proposals with ``regress``.
    """
    k = labels.numel()
    cls = (F.cross_entropy(class_logits, labels, reduction="none") * weights).sum() / max(k, 1)
    pos = torch.where((labels > 0) & regress)[0]
    logits, idx = side_logits[pos], target_idx[pos]
    onehot = F.one_hot(idx, logits.shape[-1]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(dim=(1, 2))
    chosen = side_offsets[pos].gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    ref = F.smooth_l1_loss(chosen, target_offset[pos], beta=1 / 9, reduction="none").sum(dim=1)
    w = weights[pos]
    return cls, (bce * w).sum() / max(k, 1), (ref * w).sum() / max(k, 1)


class CertaintyRoIHeads(WeightedRoIHeads):
    """:class:`WeightedRoIHeads` with the certainty-aware localization branch (module docstring)."""

    box_head_type = "certainty"

    def __init__(self, *args, intervals: int, segment_span: float = 1.0, quality_nms: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.intervals, self.segment_span, self.quality_nms = intervals, float(segment_span), quality_nms

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return self._inference(features, proposals, image_shapes), {}
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        weights, regress = self._sample_weights(targets, matched_idxs, labels)
        _, losses = self.sampled_losses(features, proposals, image_shapes, torch.cat(labels), torch.cat(regression_targets),
                                        weights, regress)
        return [], losses

    def sampled_losses(self, features, proposals, image_shapes, labels, regression_targets, weights, regress):
        """``(class logits, losses)`` of sampled proposals: :meth:`WeightedRoIHeads.sampled_losses`
        with the interval and refinement losses in place of the box regression."""
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, (side_logits, side_offsets) = self.box_predictor(box_features)
        class_logits = class_logits.float()
        props = torch.cat(proposals)
        # the matched ground-truth boxes, recovered exactly from torchvision's encoded targets
        gt = self.box_coder.decode_single(regression_targets, props)
        idx, offset = interval_targets(props, gt, self.intervals, self.segment_span)
        cls, interval, refine = certainty_losses(
            class_logits, side_logits.float(), side_offsets.float(), labels, idx, offset, weights, regress
        )
        return class_logits, {"loss_classifier": cls, "loss_box_interval": interval, "loss_box_refine": refine}

    def _inference(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, (side_logits, side_offsets) = self.box_predictor(box_features)
        boxes, quality = decode_sides(torch.cat(proposals), side_logits.float(), side_offsets.float(), self.segment_span)
        probs = F.softmax(class_logits.float(), -1)
        c1 = probs.shape[1]
        counts = [p.shape[0] for p in proposals]
        out = []
        for b, p, q, shape in zip(boxes.split(counts), probs.split(counts), quality.split(counts), image_shapes, strict=False):
            # class-agnostic boxes: the same box for every class
            out.append(self._postprocess_one(b.unsqueeze(1).expand(-1, c1, 4), p, shape, quality=q))
        return out


# --------------------------------------------------------------------------- preset option


def head_spec(model: nn.Module) -> dict[str, Any]:
    """The box head of ``model`` as recorded in ``meta.json``: ``{"type": ..., "intervals": K}``."""
    rh = getattr(model, "roi_heads", None)
    if isinstance(rh, CertaintyRoIHeads):
        return {"type": "certainty", "intervals": rh.intervals, "segment_span": rh.segment_span}
    return {"type": "standard"}


def check_head_options(options: dict[str, Any]) -> dict[str, Any]:
    """Head options filled with defaults; ConfigError on an unknown head or a bad value."""
    opts = {**HEAD_OPTIONS, **options}
    head = opts["box_head"]
    if head not in BOX_HEADS:
        raise ConfigError(f"preset option box_head: unknown box head {head!r}; valid: {', '.join(BOX_HEADS)}")
    if head == "standard":
        extra = sorted(k for k in options if k != "box_head")
        if extra:
            raise ConfigError(f"preset option {extra[0]}: only used by box_head: certainty (box_head is standard)")
    k = opts["intervals"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"preset option intervals: must be an integer >= 2, got {k!r}")
    span = opts["segment_span"]
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not 0 < span <= 10:
        raise ConfigError(f"preset option segment_span: must be a number in (0, 10], got {span!r}")
    return opts


def apply_box_head(model: nn.Module, **options: Any) -> nn.Module:
    """Swap ``model``'s :class:`WeightedRoIHeads` for the head the options name (standard: unchanged)."""
    opts = check_head_options(options)
    if opts["box_head"] == "standard":
        return model
    old = model.roi_heads
    cls = old.box_predictor.cls_score
    model.roi_heads = CertaintyRoIHeads(
        box_roi_pool=old.box_roi_pool,
        box_head=old.box_head,
        box_predictor=CertaintyPredictor(cls.in_features, cls.out_features, opts["intervals"]),
        **sampling_settings(old),
        intervals=opts["intervals"],
        segment_span=opts["segment_span"],
        quality_nms=bool(opts["quality_nms"]),
    )
    return model
