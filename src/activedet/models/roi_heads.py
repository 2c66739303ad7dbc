"""Box head pieces torchvision lacks: per-box loss weights, class distributions, MC dropout.

* :class:`WeightedRoIHeads` -- a :class:`torchvision.models.detection.roi_heads.RoIHeads` whose
  training loss honours two optional target fields (the SSL student needs them):

  - ``weights [N]`` float: multiplies the classification and box-regression loss terms of every
    sampled proposal matched to that ground-truth box (per-class ``alpha_m``, ``lambda_u``);
  - ``regress [N]`` bool: ``False`` means classification loss only, never box regression
    (LabelMatch's "uncertain" pseudo-labels);
  - ``bg_weight`` (scalar tensor or float): weight of that image's background proposals
    (default 1).

  Losses keep torchvision's normalisation (divided by the number of sampled proposals, not by the
  sum of weights), so with all weights 1 they equal torchvision's ``fastrcnn_loss`` exactly, and
  weighting one class changes only that class's contribution. The RPN losses are not weighted.

  At inference it keeps what torchvision's postprocess drops: the full softmax distribution over
  ``C + 1`` classes of every detection (``class_probs``), and optionally the pre-NMS candidates
  with the index of the kept detection that absorbed each one (``merged_into``).

* :class:`DropoutTwoMLPHead` -- torchvision's ``TwoMLPHead`` with dropout after each FC layer.
  Dropout is active in training when ``train_dropout`` is set, and in eval only inside
  :func:`mc_dropout` (Monte-Carlo passes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops


class MCDropout(nn.Module):
    """Dropout that can be switched on in eval mode (for MC-dropout passes)."""

    def __init__(self, p: float, *, train_dropout: bool = True):
        super().__init__()
        self.p = float(p)
        self.train_dropout = train_dropout
        self.mc_active = False

    def forward(self, x: Tensor) -> Tensor:
        active = self.mc_active or (self.training and self.train_dropout)
        if not active or self.p <= 0:
            return x
        return F.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, train_dropout={self.train_dropout}"


class DropoutTwoMLPHead(nn.Module):
    """``[K, C, h, w]`` pooled RoI features -> ``[K, representation_size]`` with dropout."""

    def __init__(self, in_channels: int, representation_size: int, *, dropout_p: float = 0.1, train_dropout: bool = True):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.drop6 = MCDropout(dropout_p, train_dropout=train_dropout)
        self.drop7 = MCDropout(dropout_p, train_dropout=train_dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        x = self.drop6(F.relu(self.fc6(x)))
        return self.drop7(F.relu(self.fc7(x)))


@contextmanager
def mc_dropout(module: nn.Module) -> Iterator[None]:
    """Within the block every :class:`MCDropout` in ``module`` is active, even in eval mode."""
    drops = [m for m in module.modules() if isinstance(m, MCDropout)]
    for m in drops:
        m.mc_active = True
    try:
        yield
    finally:
        for m in drops:
            m.mc_active = False


def weighted_fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    weights: Tensor,
    regress: Tensor,
) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` with per-proposal weights and a regression mask.

    Shapes: ``class_logits [K, C+1]``, ``box_regression [K, 4(C+1)]``, ``labels [K]``,
    ``regression_targets [K, 4]``, ``weights [K]`` float, ``regress [K]`` bool. Both losses are
    sums of weighted per-proposal terms divided by ``K``.
    """
    k = labels.numel()
    ce = F.cross_entropy(class_logits, labels, reduction="none")
    cls_loss = (ce * weights).sum() / max(k, 1)
    pos = torch.where((labels > 0) & regress)[0]
    box_regression = box_regression.reshape(k, box_regression.size(-1) // 4, 4)
    reg = F.smooth_l1_loss(
        box_regression[pos, labels[pos]], regression_targets[pos], beta=1 / 9, reduction="none"
    ).sum(dim=1)
    box_loss = (reg * weights[pos]).sum() / max(k, 1)
    return cls_loss, box_loss


def sampling_settings(roi_heads) -> dict:
    """The proposal matching, sampling and post-processing settings of a torchvision ``RoIHeads``, as
    constructor keywords: a replacement head keeps what the original was built with."""
    return {
        "fg_iou_thresh": roi_heads.proposal_matcher.high_threshold,
        "bg_iou_thresh": roi_heads.proposal_matcher.low_threshold,
        "batch_size_per_image": roi_heads.fg_bg_sampler.batch_size_per_image,
        "positive_fraction": roi_heads.fg_bg_sampler.positive_fraction,
        "bbox_reg_weights": roi_heads.box_coder.weights,
        "score_thresh": roi_heads.score_thresh,
        "nms_thresh": roi_heads.nms_thresh,
        "detections_per_img": roi_heads.detections_per_img,
    }


class WeightedRoIHeads(RoIHeads):
    """RoIHeads with per-box loss weights, kept class distributions and optional pre-NMS output.

    Set ``keep_pre_nms = True`` to get ``pre_boxes``, ``pre_labels``, ``pre_scores``,
    ``pre_probs`` and ``merged_into`` in each result dict (in the transformed image frame, like
    ``boxes``). Labels in results are torchvision class indices (1..C), not category ids.
    """

    keep_pre_nms: bool = False

    def _sample_weights(self, targets, matched_idxs, labels) -> tuple[Tensor, Tensor]:
        weights, regress = [], []
        for t, m, lab in zip(targets, matched_idxs, labels, strict=False):
            n_gt = t["boxes"].shape[0]
            fg = lab > 0
            w_gt = t.get("weights")
            r_gt = t.get("regress")
            bg_w = t.get("bg_weight", 1.0)
            bg_w = torch.as_tensor(bg_w, dtype=torch.float32, device=lab.device)
            if n_gt and w_gt is not None:
                w = torch.where(fg, w_gt.to(lab.device, torch.float32)[m], bg_w)
            else:
                w = torch.where(fg, torch.ones((), device=lab.device), bg_w)
            if n_gt and r_gt is not None:
                r = fg & r_gt.to(lab.device, torch.bool)[m]
            else:
                r = fg
            weights.append(w)
            regress.append(r)
        return torch.cat(weights), torch.cat(regress)

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.has_mask() or self.has_keypoint():
            raise NotImplementedError("WeightedRoIHeads supports boxes only")
        if not self.training:
            return self._inference(features, proposals, image_shapes), {}
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        weights, regress = self._sample_weights(targets, matched_idxs, labels)
        _, losses = self.sampled_losses(features, proposals, image_shapes, torch.cat(labels), torch.cat(regression_targets),
                                        weights, regress)
        return [], losses

    def sampled_losses(self, features, proposals: list[Tensor], image_shapes, labels: Tensor, regression_targets: Tensor,
                       weights: Tensor, regress: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(class logits [K, C+1], losses)`` of already sampled proposals (``labels``,
        ``regression_targets``, ``weights``, ``regress``: one row per proposal, images concatenated).

        The box-head half of :meth:`forward`; the mean teacher calls it with its own weights (soft
        proposals at hard weight 0) and adds its soft classification term to ``loss_classifier``.
        """
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        class_logits = class_logits.float()
        loss_classifier, loss_box_reg = weighted_fastrcnn_loss(
            class_logits, box_regression.float(), labels, regression_targets, weights, regress
        )
        return class_logits, {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def class_probs_for(self, features, boxes: list[Tensor], image_shapes) -> Tensor:
        """Softmax distributions ``[sum N_i, C+1]`` of the box head on given boxes (one pass)."""
        box_features = self.box_head(self.box_roi_pool(features, boxes, image_shapes))
        class_logits, _ = self.box_predictor(box_features)
        return F.softmax(class_logits.float(), -1)

    def _inference(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        pred_boxes = self.box_coder.decode(box_regression.float(), proposals)
        probs = F.softmax(class_logits.float(), -1)
        counts = [p.shape[0] for p in proposals]
        out = []
        for boxes, p, shape in zip(pred_boxes.split(counts), probs.split(counts), image_shapes, strict=False):
            out.append(self._postprocess_one(boxes, p, shape))
        return out

    def _postprocess_one(self, boxes: Tensor, probs: Tensor, shape, quality: Tensor | None = None) -> dict[str, Tensor]:
        """:func:`postprocess_detections` with this head's thresholds."""
        return postprocess_detections(
            boxes, probs, shape, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img, keep_pre_nms=self.keep_pre_nms, quality=quality,
            quality_nms=getattr(self, "quality_nms", False),
        )


def postprocess_detections(
    boxes: Tensor, probs: Tensor, shape, *, score_thresh: float, nms_thresh: float, detections_per_img: int,
    keep_pre_nms: bool = False, quality: Tensor | None = None, quality_nms: bool = False,
) -> dict[str, Tensor]:
    """One image's decoded boxes -> detections: score floor, small-box removal, per-class NMS.

    ``boxes [N, C+1, 4]`` per-class boxes in the frame of ``shape`` (h, w), ``probs [N, C+1]``
    softmax with background at index 0 (both backends bring their outputs to this form).
    ``quality [N]`` (localization quality per proposal, certainty head) adds ``loc_quality`` and,
    with ``quality_nms``, NMS ranks by ``score * quality``. ``keep_pre_nms`` adds the candidates
    (``pre_*``) and ``merged_into``."""
    n, c1 = probs.shape
    boxes = box_ops.clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)
    scores = probs[:, 1:].reshape(-1)
    labels = torch.arange(1, c1, device=probs.device).repeat(n)
    rows = torch.arange(n, device=probs.device).repeat_interleave(c1 - 1)
    keep = torch.where(scores > score_thresh)[0]
    boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
    keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
    boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
    q = quality[rows] if quality is not None else None
    rank = scores * q if q is not None and quality_nms else scores
    nms_kept = box_ops.batched_nms(boxes, rank, labels, nms_thresh)
    kept = nms_kept[:detections_per_img]
    res = {
        "boxes": boxes[kept],
        "labels": labels[kept],
        "scores": scores[kept],
        "class_probs": probs[rows[kept]],
    }
    if q is not None:
        res["loc_quality"] = q[kept]
    if keep_pre_nms:
        res.update(
            pre_boxes=boxes,
            pre_labels=labels,
            pre_scores=scores,
            pre_probs=probs[rows],
            merged_into=merged_into(boxes, rank, labels, nms_kept, nms_thresh, cap=kept.numel()),
        )
        if q is not None:
            res["pre_loc_quality"] = q
    return res


def merged_into(
    boxes: Tensor, scores: Tensor, labels: Tensor, kept: Tensor, iou_thresh: float, *, cap: int | None = None
) -> Tensor:
    """For each candidate, the index in ``kept`` of the detection that absorbed it, else -1.

    ``kept`` is NMS's output (descending score); only its first ``cap`` entries are returned as
    detections.

    Greedy NMS suppresses a candidate by the highest-scoring kept box of the same class whose IoU
    with it exceeds ``iou_thresh``; a kept box maps to itself. Candidates whose suppressor was
    later cut by the detections-per-image cap get -1.
    """
    m = boxes.shape[0]
    out = torch.full((m,), -1, dtype=torch.int64, device=boxes.device)
    if m == 0 or kept.numel() == 0:
        return out
    iou = box_ops.box_iou(boxes, boxes[kept])  # [M, K]
    same = labels[:, None] == labels[kept][None, :]
    higher = scores[kept][None, :] >= scores[:, None]
    cand = (iou > iou_thresh) & same & higher
    # kept is sorted by descending score: the first True column is the highest-scoring suppressor
    has = cand.any(dim=1)
    first = torch.argmax(cand.to(torch.int8), dim=1)
    out[has] = first[has]
    out[kept] = torch.arange(kept.numel(), device=boxes.device)
    if cap is not None:
        out[out >= cap] = -1
    return out
