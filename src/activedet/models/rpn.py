"""The RPN with a box-regression mask: uncertain and zero-weighted boxes give no RPN box regression.

:class:`MaskedRPN` is torchvision's :class:`~torchvision.models.detection.rpn.RegionProposalNetwork`
(same parameters, same state dict) whose training loss reads two optional per-box target fields,
the ones :class:`~activedet.models.roi_heads.WeightedRoIHeads` reads:

* ``regress [N]`` bool -- ``False`` (LabelMatch's uncertain pseudo boxes) means no box regression;
* ``weights [N]`` float -- a box of weight 0 gives no box regression either.

Anchors matched to such a box stay objectness positives (objectness is classification) but are
left out of ``loss_rpn_box_reg``. The normalisation is torchvision's (sum over the regressed
positives / number of sampled anchors), so without those fields, or with all boxes regressed,
the losses equal torchvision's exactly. Objectness is not weighted per box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers


def regress_mask(target: dict) -> Tensor | None:
    """``[N]`` bool: which of a target's boxes may be box-regressed (None: all of them)."""
    regress, weights = target.get("regress"), target.get("weights")
    if regress is None and weights is None:
        return None
    n = target["boxes"].shape[0]
    device = target["boxes"].device
    mask = torch.ones(n, dtype=torch.bool, device=device)
    if regress is not None:
        mask &= regress.to(device, torch.bool)
    if weights is not None:
        mask &= weights.to(device) > 0
    return mask


class MaskedRPN(RegionProposalNetwork):
    """RegionProposalNetwork whose box-regression loss honours ``regress`` and ``weights`` (see module doc)."""

    def assign_targets_with_mask(self, anchors: list[Tensor], targets: list[dict]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """torchvision's anchor assignment, plus per anchor whether its matched box may be regressed."""
        labels, matched_gt_boxes, regress = [], [], []
        for anchors_i, target in zip(anchors, targets, strict=True):
            gt_boxes = target["boxes"]
            device = anchors_i.device
            if gt_boxes.numel() == 0:
                matched_gt_boxes.append(torch.zeros(anchors_i.shape, dtype=torch.float32, device=device))
                labels.append(torch.zeros((anchors_i.shape[0],), dtype=torch.float32, device=device))
                regress.append(torch.zeros((anchors_i.shape[0],), dtype=torch.bool, device=device))
                continue
            matched = self.proposal_matcher(self.box_similarity(gt_boxes, anchors_i))
            matched_gt_boxes.append(gt_boxes[matched.clamp(min=0)])
            lab = (matched >= 0).to(torch.float32)
            lab[matched == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
            lab[matched == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            mask = regress_mask(target)
            ok = mask[matched.clamp(min=0)] if mask is not None else torch.ones_like(matched, dtype=torch.bool)
            regress.append(ok & (matched >= 0))
        return labels, matched_gt_boxes, regress

    def masked_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                    regression_targets: list[Tensor], regress: list[Tensor]) -> tuple[Tensor, Tensor]:
        """torchvision's ``compute_loss`` with box regression on the sampled positives in ``regress`` only."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        reg_pos = pos[torch.cat(regress, dim=0)[pos]]
        targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[reg_pos], targets[reg_pos], beta=1 / 9, reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], torch.cat(labels, dim=0)[sampled])
        return objectness_loss, box_loss

    def forward(self, images, features, targets=None):
        features = list(features.values())
        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # as torchvision: proposals do not backprop into the RPN
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None")
            labels, matched_gt_boxes, regress = self.assign_targets_with_mask(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.masked_loss(objectness, pred_bbox_deltas, labels, regression_targets, regress)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses


def use_masked_rpn(model) -> None:
    """Make ``model.rpn`` (a torchvision RPN) a :class:`MaskedRPN` in place (no new state)."""
    if type(model.rpn) is RegionProposalNetwork:
        model.rpn.__class__ = MaskedRPN
